"""hgrn-train's configuration: the argument names, the YAML recipes, their checks, the defaults.

The names are timm train.py's (a YAML key is an argument name with underscores), so timm's recipes load here
unchanged; timm options this trainer does not implement are accepted and ignored with a warning
(TIMM_ONLY_IGNORED). With no --config and no data path, the embedded digits job is the default.
"""
import argparse
import difflib
import logging
import os
import sys

import yaml

from timm import utils

_logger = logging.getLogger('hgrn_train')


class TrainError(Exception):
    """A user-facing error: bad config, missing data, unusable checkpoint. Raised before work is lost."""


# hgrn-train's own dataset name: scikit-learn's 8x8 digits, built in (data.DigitsDataset)
DIGITS_DATASET = 'sklearn/digits'

# The embedded default job (identical to configs/hgrn_deit_micro_digits.yaml; a test checks it).
# Used when hgrn-train runs with no --config and no data path: it needs nothing but scikit-learn.
DEFAULT_DIGITS_CONFIG = {
    'dataset': DIGITS_DATASET,
    'model': 'hgrn_deit_tiny',
    'model_kwargs': {'img_size': 16, 'patch_size': 4, 'embed_dim': 64, 'depth': 4, 'glu_hidden_dim': 128},
    'device_modules': ['hgrn_vision'],
    'num_classes': 10,
    'img_size': 16,
    'mean': [0.305, 0.305, 0.305],
    'std': [0.319, 0.319, 0.319],
    'crop_pct': 1.0,
    'interpolation': 'bilinear',
    'train_interpolation': 'bilinear',
    'batch_size': 64,
    'epochs': 10,
    'opt': 'adamw',
    'lr': 2.0e-3,
    'weight_decay': 0.05,
    'sched': 'cosine',
    'sched_on_updates': True,
    'warmup_epochs': 1,
    'warmup_lr': 1.0e-5,
    'min_lr': 1.0e-5,
    'clip_grad': 5.0,
    'drop_path': 0.05,
    'smoothing': 0.1,
    'no_aug': True,
    'hflip': 0.0,
    'workers': 0,
    'no_prefetcher': True,
    'log_interval': 10,
    'checkpoint_hist': 2,
    'seed': 42,
}


# reads only --config first, so the YAML becomes the defaults that the rest of the command line overrides
config_parser = argparse.ArgumentParser(description='Training config', add_help=False)
config_parser.add_argument('-c', '--config', default='', type=str, metavar='FILE',
                           help='YAML config file (keys: timm train.py argument names)')


def build_parser():
    """hgrn-train's argument parser; each dest is a timm train.py argument name (= a YAML key)."""
    p = argparse.ArgumentParser(
        prog='hgrn-train', description='Train / evaluate HGRN-DeiT with timm parts (timm train.py YAML compatible)')
    p.add_argument('-c', '--config', default='', type=str, metavar='FILE',
                   help='YAML config file (keys: timm train.py argument names)')
    g = p.add_argument_group('Dataset')
    p.add_argument('data', nargs='?', metavar='DIR', const=None, help='path to dataset (or use --data-dir)')
    g.add_argument('--data-dir', metavar='DIR', default=None, help='path to dataset root')
    g.add_argument('--dataset', metavar='NAME', default='',
                   help=f'timm dataset type/name ("" = image folder); "{DIGITS_DATASET}" = embedded digits')
    g.add_argument('--train-split', metavar='NAME', default='train')
    g.add_argument('--val-split', metavar='NAME', default='validation')
    g.add_argument('--dataset-download', action='store_true', default=False)
    g.add_argument('--class-map', default='', type=str, metavar='FILENAME')
    g.add_argument('--input-img-mode', default=None, type=str)
    g.add_argument('--train-num-samples', default=None, type=int)
    g.add_argument('--val-num-samples', default=None, type=int)

    g = p.add_argument_group('Model')
    g.add_argument('--model', default='hgrn_deit_tiny', type=str, metavar='MODEL')
    g.add_argument('--pretrained', action='store_true', default=False)
    g.add_argument('--initial-checkpoint', default='', type=str, metavar='PATH',
                   help='load these weights into the model after creation (also: checkpoint for --validate-only)')
    g.add_argument('--resume', default='', type=str, metavar='PATH',
                   help='resume model, optimizer, scaler, EMA and epoch from a training checkpoint')
    g.add_argument('--no-resume-opt', action='store_true', default=False)
    g.add_argument('--num-classes', type=int, default=None, metavar='N')
    g.add_argument('--gp', default=None, type=str, metavar='POOL')
    g.add_argument('--img-size', type=int, default=None, metavar='N')
    g.add_argument('--in-chans', type=int, default=None, metavar='N')
    g.add_argument('--input-size', default=None, nargs=3, type=int, metavar='N')
    g.add_argument('--crop-pct', default=None, type=float, metavar='N')
    g.add_argument('--mean', type=float, nargs='+', default=None, metavar='MEAN')
    g.add_argument('--std', type=float, nargs='+', default=None, metavar='STD')
    g.add_argument('--interpolation', default='', type=str, metavar='NAME')
    g.add_argument('-b', '--batch-size', type=int, default=128, metavar='N', help='per-process batch size')
    g.add_argument('-vb', '--validation-batch-size', type=int, default=None, metavar='N')
    g.add_argument('--channels-last', action='store_true', default=False)
    g.add_argument('--grad-accum-steps', type=int, default=1, metavar='N')
    g.add_argument('--grad-checkpointing', action='store_true', default=False)
    g.add_argument('--model-kwargs', nargs='*', default={}, action=utils.ParseKwargs)
    g.add_argument('--head-init-scale', default=None, type=float)
    g.add_argument('--head-init-bias', default=None, type=float)
    g.add_argument('--torchcompile', nargs='?', type=str, default=None, const='inductor')

    g = p.add_argument_group('Device')
    g.add_argument('--device', default=None, type=str, help='cuda / cpu / ... (default: cuda if available)')
    g.add_argument('--amp', action='store_true', default=False,
                   help='mixed precision (float16 + loss scaling on CUDA; bfloat16 autocast on CPU)')
    g.add_argument('--amp-dtype', default='float16', type=str)
    g.add_argument('--no-ddp-bb', action='store_true', default=False)
    g.add_argument('--local_rank', default=0, type=int)
    g.add_argument('--device-modules', default=None, type=str, nargs='+',
                   help='modules to import first (hgrn_vision is always imported)')

    g = p.add_argument_group('Optimizer')
    g.add_argument('--opt', default='sgd', type=str, metavar='OPTIMIZER')
    g.add_argument('--opt-eps', default=None, type=float)
    g.add_argument('--opt-betas', default=None, type=float, nargs='+')
    g.add_argument('--momentum', type=float, default=0.9)
    g.add_argument('--weight-decay', type=float, default=2e-5)
    g.add_argument('--clip-grad', type=float, default=None, metavar='NORM')
    g.add_argument('--clip-mode', type=str, default='norm')
    g.add_argument('--layer-decay', type=float, default=None)
    g.add_argument('--layer-decay-min-scale', type=float, default=0)
    g.add_argument('--layer-decay-no-opt-scale', type=float, default=None)
    g.add_argument('--opt-kwargs', nargs='*', default={}, action=utils.ParseKwargs)

    g = p.add_argument_group('Learning rate schedule')
    g.add_argument('--sched', type=str, default='cosine')
    g.add_argument('--sched-on-updates', action='store_true', default=False)
    g.add_argument('--lr', type=float, default=None, help='overrides lr_base if set')
    g.add_argument('--lr-base', type=float, default=0.1, help='lr = lr_base * global_batch / lr_base_size')
    g.add_argument('--lr-base-size', type=int, default=256)
    g.add_argument('--lr-base-scale', type=str, default='', help='"linear" or "sqrt" ("" = by optimizer)')
    g.add_argument('--lr-noise', type=float, nargs='+', default=None)
    g.add_argument('--lr-noise-pct', type=float, default=0.67)
    g.add_argument('--lr-noise-std', type=float, default=1.0)
    g.add_argument('--lr-cycle-mul', type=float, default=1.0)
    g.add_argument('--lr-cycle-decay', type=float, default=0.5)
    g.add_argument('--lr-cycle-limit', type=int, default=1)
    g.add_argument('--lr-k-decay', type=float, default=1.0)
    g.add_argument('--warmup-lr', type=float, default=1e-5)
    g.add_argument('--min-lr', type=float, default=0)
    g.add_argument('--epochs', type=int, default=300)
    g.add_argument('--epoch-repeats', type=float, default=0.)
    g.add_argument('--start-epoch', default=None, type=int)
    g.add_argument('--decay-milestones', default=[90, 180, 270], type=int, nargs='+')
    g.add_argument('--decay-epochs', type=float, default=90)
    g.add_argument('--warmup-epochs', type=int, default=5)
    g.add_argument('--warmup-prefix', action='store_true', default=False)
    g.add_argument('--cooldown-epochs', type=int, default=0)
    g.add_argument('--patience-epochs', type=int, default=10)
    g.add_argument('--decay-rate', '--dr', type=float, default=0.1)

    g = p.add_argument_group('Augmentation and regularization')
    g.add_argument('--no-aug', action='store_true', default=False)
    g.add_argument('--train-crop-mode', type=str, default=None)
    g.add_argument('--scale', type=float, nargs='+', default=[0.08, 1.0])
    g.add_argument('--ratio', type=float, nargs='+', default=[3. / 4., 4. / 3.])
    g.add_argument('--hflip', type=float, default=0.5)
    g.add_argument('--vflip', type=float, default=0.)
    g.add_argument('--color-jitter', type=float, default=0.4)
    g.add_argument('--color-jitter-prob', type=float, default=None)
    g.add_argument('--grayscale-prob', type=float, default=None)
    g.add_argument('--gaussian-blur-prob', type=float, default=None)
    g.add_argument('--aa', type=str, default=None, help='e.g. rand-m9-mstd0.5-inc1')
    g.add_argument('--aug-repeats', type=float, default=0)
    g.add_argument('--bce-loss', action='store_true', default=False)
    g.add_argument('--bce-sum', action='store_true', default=False)
    g.add_argument('--bce-target-thresh', type=float, default=None)
    g.add_argument('--bce-pos-weight', type=float, default=None)
    g.add_argument('--reprob', type=float, default=0.)
    g.add_argument('--remode', type=str, default='pixel')
    g.add_argument('--recount', type=int, default=1)
    g.add_argument('--resplit', action='store_true', default=False)
    g.add_argument('--mixup', type=float, default=0.0)
    g.add_argument('--cutmix', type=float, default=0.0)
    g.add_argument('--cutmix-minmax', type=float, nargs='+', default=None)
    g.add_argument('--mixup-prob', type=float, default=1.0)
    g.add_argument('--mixup-switch-prob', type=float, default=0.5)
    g.add_argument('--mixup-mode', type=str, default='batch')
    g.add_argument('--mixup-off-epoch', default=0, type=int)
    g.add_argument('--smoothing', type=float, default=0.1)
    g.add_argument('--train-interpolation', type=str, default='random')
    g.add_argument('--drop', type=float, default=0.0)
    g.add_argument('--drop-connect', type=float, default=None)
    g.add_argument('--drop-path', type=float, default=None)
    g.add_argument('--drop-block', type=float, default=None)
    g.add_argument('--dist-bn', type=str, default='reduce')

    g = p.add_argument_group('Model EMA')
    g.add_argument('--model-ema', action='store_true', default=False)
    g.add_argument('--model-ema-force-cpu', action='store_true', default=False)
    g.add_argument('--model-ema-decay', type=float, default=0.9998)
    g.add_argument('--model-ema-warmup', action='store_true', default=False)

    g = p.add_argument_group('Misc')
    g.add_argument('--seed', type=int, default=42)
    g.add_argument('--worker-seeding', type=str, default='all')
    g.add_argument('--log-interval', type=int, default=50, help='log a line every N steps')
    g.add_argument('--val-interval', type=int, default=1)
    g.add_argument('--checkpoint-hist', type=int, default=10)
    g.add_argument('-j', '--workers', type=int, default=4)
    g.add_argument('--pin-mem', action='store_true', default=False)
    g.add_argument('--no-prefetcher', action='store_true', default=False)
    g.add_argument('--output', default='', type=str, metavar='PATH', help='output root (default: ./output)')
    g.add_argument('--experiment', default='', type=str, metavar='NAME')
    g.add_argument('--eval-metric', default='top1', type=str)
    g.add_argument('--use-multi-epochs-loader', action='store_true', default=False)

    g = p.add_argument_group('hgrn-train only')
    g.add_argument('--validate-only', action='store_true', default=False,
                   help='evaluate --initial-checkpoint (or --resume) on the val split and exit (replaces validate.py)')
    g.add_argument('--use-ema', action='store_true', default=False,
                   help='with --validate-only: evaluate the checkpoint\'s EMA weights')
    return p


# the parser the YAML keys are checked against
parser = build_parser()

# timm train.py options that this trainer accepts in a YAML file but does not implement: a recipe written
# for timm's train.py still loads, with a warning if the value differs from timm's default.
TIMM_ONLY_IGNORED = {
    'fuser': '', 'fast_norm': False, 'torchscript': False, 'torchcompile_mode': None, 'amp_impl': 'native',
    'model_dtype': None, 'synchronize_step': False, 'pretrained_path': None, 'aug_splits': 0,
    'jsd_loss': False, 'bn_momentum': None, 'bn_eps': None, 'sync_bn': False, 'split_bn': False,
    'recovery_interval': 0, 'save_images': False, 'tta': 0, 'log_wandb': False, 'wandb_project': None,
    'wandb_tags': [], 'wandb_resume_id': '', 'dataset_trust_remote_code': False, 'input_key': None,
    'target_key': None, 'test_split': None, 'naflex_loader': False,
}


def known_keys():
    """Every argument name (= YAML key) that hgrn-train implements."""
    return {a.dest for a in parser._actions if a.dest != 'help'}


def _check_value(action, key, value, source):
    """Light type check of a YAML value against the argparse action (argparse skips non-string defaults)."""
    if value is None:
        return
    bad = False
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        bad = not isinstance(value, bool)
    elif action.nargs in ('+', '*') or isinstance(action.nargs, int):
        if key in ('model_kwargs', 'opt_kwargs'):
            bad = not isinstance(value, dict)
        else:
            bad = not isinstance(value, (list, tuple))
    elif action.type is int:
        bad = not isinstance(value, int) or isinstance(value, bool)
    elif action.type is float:
        bad = not isinstance(value, (int, float)) or isinstance(value, bool)
    elif action.type is str:
        bad = not isinstance(value, str)
    if bad:
        raise TrainError(f'{source}: key "{key}" has a value of the wrong type: {value!r}')


def load_config(path):
    """Read a YAML config and check every key against the argument names; returns a dict of defaults."""
    if not os.path.isfile(path):
        raise TrainError(f'config file not found: {path}')
    try:
        with open(path, 'r') as f:
            cfg = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise TrainError(f'config file {path} is not valid YAML: {e}') from None
    if cfg is None:
        cfg = {}
    if not isinstance(cfg, dict):
        raise TrainError(f'config file {path} must be a mapping of argument names to values')
    return validate_config(cfg, source=path)


def validate_config(cfg, source='config'):
    """Keep the implemented keys (type-checked), warn about timm-only ones, stop at any other key."""
    known = known_keys()
    actions = {a.dest: a for a in parser._actions}
    out = {}
    for key, value in cfg.items():
        if not isinstance(key, str):
            raise TrainError(f'{source}: config keys must be strings, got {key!r}')
        if key in known:
            _check_value(actions[key], key, value, source)
            out[key] = value
        elif key in TIMM_ONLY_IGNORED:
            if value != TIMM_ONLY_IGNORED[key]:
                _logger.warning(f'{source}: "{key}: {value!r}" is a timm train.py option that hgrn-train ignores')
        else:
            norm = key.replace('-', '_')
            hint = [norm] if norm in known else difflib.get_close_matches(
                norm, sorted(known | set(TIMM_ONLY_IGNORED)), n=3, cutoff=0.6)
            msg = f'{source}: unknown config key "{key}"'
            if hint:
                msg += f' (did you mean: {", ".join(hint)}?)'
            msg += '. Keys are timm train.py argument names with underscores, e.g. drop_path, lr_base.'
            raise TrainError(msg)
    return out


def parse_args(argv=None):
    """The command line over the YAML given with --config (or over the embedded digits job)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args_config, remaining = config_parser.parse_known_args(argv)
    defaults = {}
    if args_config.config:
        defaults = load_config(args_config.config)
    p = build_parser()
    p.set_defaults(**defaults)
    args = p.parse_args(remaining)
    args.config = args_config.config
    if not args.config and not (args.data or args.data_dir or args.dataset):
        # the embedded default job: sklearn digits, a micro HGRN-DeiT; command-line flags still override
        p = build_parser()
        p.set_defaults(**DEFAULT_DIGITS_CONFIG)
        args = p.parse_args(remaining)
        args.config = '<embedded default: hgrn_deit_micro_digits>'
    return args


def args_for_yaml(args):
    """The run's arguments that YAML can hold (what args.yaml in the output folder records)."""
    return {k: v for k, v in vars(args).items() if _yaml_ok(v)}


def _yaml_ok(v):
    return v is None or isinstance(v, (bool, int, float, str)) or (
        isinstance(v, (list, tuple)) and all(_yaml_ok(x) for x in v)) or (
        isinstance(v, dict) and all(isinstance(k, str) and _yaml_ok(x) for k, x in v.items()))
