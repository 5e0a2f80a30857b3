#!/usr/bin/env python3
"""hgrn-train: train and evaluate HGRN-DeiT (or any timm model) with timm's parts.

Reads the same YAML files as timm's ``train.py --config`` (keys are its argument names, with
underscores). Built from timm's library: dataset / loader / transforms, Mixup / CutMix,
``create_optimizer_v2`` (``no_weight_decay`` and layer decay), ``create_scheduler_v2``,
``ModelEmaV3``, ``NativeScaler`` AMP, ``dispatch_clip_grad``, ``CheckpointSaver``.

    hgrn-train                                   # embedded default: micro HGRN-DeiT on sklearn digits
    hgrn-train --config configs/hgrn_deit_small_in1k.yaml --data-dir /imagenet
    torchrun --nproc_per_node 8 -m hgrn_tools.train --config ... --data-dir /imagenet
    hgrn-train --config ... --data-dir /imagenet --resume output/train/<run>/last.pth.tar
    hgrn-train --config ... --data-dir /imagenet --validate-only --initial-checkpoint <ckpt>

Runs as ``python tools/train.py`` from a checkout as well (of the tools modules it imports only pillow_compat,
from its own folder).
"""
import argparse
import difflib
import hashlib
import json
import logging
import os
import sys
import time
from contextlib import nullcontext
from datetime import datetime

if __package__ in (None, ''):
    # `python tools/train.py` from a checkout: make the repository's packages importable
    _root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if os.path.isdir(os.path.join(_root, 'hgrn_vision')) and _root not in sys.path:
        sys.path.insert(0, _root)

import importlib

import torch
import torch.nn as nn
import yaml

from timm import utils
from timm.data import create_dataset, create_loader, resolve_data_config, Mixup, FastCollateMixup
from timm.loss import BinaryCrossEntropy, LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.models import create_model, model_parameters, safe_model_name
from timm.optim import create_optimizer_v2, optimizer_kwargs
from timm.scheduler import create_scheduler_v2, scheduler_kwargs

_logger = logging.getLogger('hgrn_train')

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


class TrainError(Exception):
    """A user-facing error: bad config, missing data, unusable checkpoint. Raised before work is lost."""


# --------------------------------------------------------------------------------------------
# Arguments: the names are timm train.py's (so its YAML recipes load here unchanged)
# --------------------------------------------------------------------------------------------

config_parser = argparse.ArgumentParser(description='Training config', add_help=False)
config_parser.add_argument('-c', '--config', default='', type=str, metavar='FILE',
                           help='YAML config file (keys: timm train.py argument names)')


def _build_parser():
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


parser = _build_parser()

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


def _known_keys():
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
    known = _known_keys()
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
    argv = list(sys.argv[1:] if argv is None else argv)
    args_config, remaining = config_parser.parse_known_args(argv)
    defaults = {}
    if args_config.config:
        defaults = load_config(args_config.config)
    p = _build_parser()
    p.set_defaults(**defaults)
    args = p.parse_args(remaining)
    args.config = args_config.config
    if not args.config and not (args.data or args.data_dir or args.dataset):
        # the embedded default job: sklearn digits, a micro HGRN-DeiT; command-line flags still override
        p = _build_parser()
        p.set_defaults(**DEFAULT_DIGITS_CONFIG)
        args = p.parse_args(remaining)
        args.config = '<embedded default: hgrn_deit_micro_digits>'
    return args


# --------------------------------------------------------------------------------------------
# The embedded dataset: scikit-learn's 8x8 handwritten digits (ships inside the sklearn wheel)
# --------------------------------------------------------------------------------------------

class DigitsDataset(torch.utils.data.Dataset):
    """sklearn's 1,797 8x8 digits as RGB PIL images upsampled (bilinear) to `size` px, fixed split.

    The split is a seeded permutation (independent of the training seed): 1,497 train / 300 val.
    Pixel values 0..16 map to 0..255. Works with timm's transforms / loaders like any ImageDataset.
    """
    NUM_VAL = 300
    SPLIT_SEED = 0

    def __init__(self, split='train', size=16, transform=None, num_samples=None):
        try:
            from sklearn.datasets import load_digits
        except ImportError as e:  # pragma: no cover
            raise TrainError('the embedded digits dataset needs scikit-learn: pip install "hgrn[digits]"') from e
        import numpy as np
        from PIL import Image
        if split in ('validation', 'val', 'valid', 'eval', 'test'):
            split = 'validation'
        elif split != 'train':
            raise TrainError(f'digits dataset has splits "train" and "validation", not "{split}"')
        d = load_digits()
        perm = np.random.RandomState(self.SPLIT_SEED).permutation(len(d.target))
        idx = perm[self.NUM_VAL:] if split == 'train' else perm[:self.NUM_VAL]
        if num_samples:
            idx = idx[:num_samples]
        self.targets = [int(t) for t in d.target[idx]]
        imgs = (d.images[idx] * (255.0 / 16.0)).round().clip(0, 255).astype(np.uint8)
        self.images = [Image.fromarray(im, mode='L').resize((size, size), Image.BILINEAR).convert('RGB')
                       for im in imgs]
        self.transform = transform
        self.split = split

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        img = self.images[i]
        if self.transform is not None:
            img = self.transform(img)
        return img, self.targets[i]


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------

class AtomicCheckpointSaver(utils.CheckpointSaver):
    """timm's CheckpointSaver writes `tmp.pth.tar` and os.replace()s it onto `last.pth.tar`; we also
    fsync the temp file before the rename, so neither a crash nor a power cut leaves a broken `last`."""

    def _save(self, save_path, epoch, metric=None):
        super()._save(save_path, epoch, metric)
        with open(save_path, 'rb') as f:
            os.fsync(f.fileno())


def read_checkpoint(path, what='checkpoint'):
    """torch.load with a clear error naming the file when it is missing, truncated or not a checkpoint."""
    if not path or not os.path.isfile(path):
        raise TrainError(f'{what} not found: {path}')
    if path.endswith('.safetensors'):
        try:
            from safetensors.torch import load_file
            return load_file(path, device='cpu')
        except Exception as e:
            raise TrainError(f'cannot read {what} {path}: corrupt or not safetensors ({e})') from None
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            ckpt = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:
        raise TrainError(
            f'cannot read {what} {path}: the file is corrupt, truncated or not a torch checkpoint '
            f'({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}). Nothing was trained; '
            f'pick an intact checkpoint (e.g. an epoch file checkpoint-N.pth.tar next to it).') from None
    if not isinstance(ckpt, dict):
        raise TrainError(f'{what} {path} holds a {type(ckpt).__name__}, not a checkpoint dict')
    return ckpt


def _strip_module(sd):
    return {(k[7:] if k.startswith('module.') else k): v for k, v in sd.items()}


def load_weights_checked(model, state_dict, path):
    """load_state_dict(strict) with a clear, short error on key / shape mismatch."""
    state_dict = _strip_module(state_dict)
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f'{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}'
              for k, v in own.items() if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            parts.append('shape mismatch: ' + '; '.join(shapes[:3]) + (' ...' if len(shapes) > 3 else ''))
        if missing:
            parts.append(f'{len(missing)} missing keys, e.g. ' + ', '.join(missing[:3]))
        if unexpected:
            parts.append(f'{len(unexpected)} unexpected keys, e.g. ' + ', '.join(unexpected[:3]))
        raise TrainError(f'checkpoint {path} does not match the model: ' + ' | '.join(parts) +
                         '. Check --model / model_kwargs / num_classes against the run that wrote it.')
    model.load_state_dict(state_dict, strict=True)


def weights_digest(model):
    """sha256 over the model's state dict (names, dtypes, raw bytes): equal digests = identical weights."""
    h = hashlib.sha256()
    for k, v in utils.unwrap_model(model).state_dict().items():
        t = v.detach().cpu().contiguous()
        h.update(k.encode())
        h.update(str(t.dtype).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b'')
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------

def _data_root(args):
    return args.data_dir or args.data


def build_dataset(args, split, is_training):
    if args.dataset == DIGITS_DATASET:
        size = args.img_size or (args.input_size[-1] if args.input_size else 16)
        n = args.train_num_samples if is_training else args.val_num_samples
        return DigitsDataset(split, size=size, num_samples=n)
    root = _data_root(args)
    if not root:
        raise TrainError(
            f'no data path: pass --data-dir DIR (dataset "{args.dataset or "image folder"}"), '
            f'or run hgrn-train without --config for the embedded digits job')
    folder = args.dataset in ('', 'folder', 'imagefolder', 'image_folder') or args.dataset.startswith('folder/')
    if (folder or not args.dataset_download) and not os.path.exists(root):
        raise TrainError(f'data path does not exist: {root}')
    try:
        ds = create_dataset(
            args.dataset, root=root, split=split, is_training=is_training,
            class_map=args.class_map, download=args.dataset_download, batch_size=args.batch_size,
            seed=args.seed, repeats=args.epoch_repeats if is_training else 0,
            input_img_mode=args.input_img_mode,
            num_samples=args.train_num_samples if is_training else args.val_num_samples)
    except Exception as e:
        raise TrainError(f'cannot open the {split} split of dataset "{args.dataset}" under {root}: '
                         f'{type(e).__name__}: {e}') from None
    try:
        n = len(ds)
    except TypeError:
        n = None
    if n == 0:
        raise TrainError(f'the {split} split under {root} has no images')
    return ds


def create_train_loader(args, dataset, data_config, device, collate_fn=None):
    """timm's create_loader with the training transform the config asks for (crop, flips, RandAugment /
    AutoAugment, random erasing, ...); sets dataset.transform. The tests build the recipes' loaders here."""
    train_interpolation = args.train_interpolation
    if args.no_aug or not train_interpolation:
        train_interpolation = data_config['interpolation']
    aug_repeats = args.aug_repeats if args.distributed else 0  # timm's RepeatAugSampler needs torch.distributed
    if args.aug_repeats and not args.distributed and utils.is_primary(args):
        _logger.warning(f'aug_repeats {args.aug_repeats:g} ignored: repeated augmentation splits the repeats '
                        f'across processes and needs torchrun (timm\'s RepeatAugSampler)')
    elif aug_repeats and utils.is_primary(args):
        _logger.info(f'repeated augmentation: {aug_repeats:g} repeats (timm RepeatAugSampler)')
    return create_loader(
        dataset, input_size=data_config['input_size'], batch_size=args.batch_size, is_training=True,
        no_aug=args.no_aug, re_prob=args.reprob, re_mode=args.remode, re_count=args.recount,
        re_split=args.resplit, train_crop_mode=args.train_crop_mode, scale=args.scale, ratio=args.ratio,
        hflip=args.hflip, vflip=args.vflip, color_jitter=args.color_jitter,
        color_jitter_prob=args.color_jitter_prob, grayscale_prob=args.grayscale_prob or 0.,
        gaussian_blur_prob=args.gaussian_blur_prob or 0., auto_augment=args.aa,
        num_aug_repeats=aug_repeats,
        interpolation=train_interpolation, mean=data_config['mean'], std=data_config['std'],
        num_workers=args.workers, distributed=args.distributed, collate_fn=collate_fn,
        pin_memory=args.pin_mem, device=device, use_prefetcher=args.prefetcher,
        use_multi_epochs_loader=args.use_multi_epochs_loader, worker_seeding=args.worker_seeding)


# --------------------------------------------------------------------------------------------
# Train / eval loops
# --------------------------------------------------------------------------------------------

def _all_reduce_sum(values, args, device):
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if args.distributed:
        torch.distributed.all_reduce(t)
    return t.tolist()


def train_one_epoch(epoch, model, loader, optimizer, loss_fn, args, device, lr_scheduler, amp_autocast,
                    loss_scaler, model_ema, mixup_fn, num_updates):
    second_order = hasattr(optimizer, 'is_second_order') and optimizer.is_second_order
    accum = args.grad_accum_steps
    model.train()
    loss_sum, n_sum = 0.0, 0
    losses_m = utils.AverageMeter()
    last_idx = len(loader) - 1
    updates_per_epoch = (len(loader) + accum - 1) // accum
    t_log = time.time()
    imgs_since_log = 0
    optimizer.zero_grad()
    for batch_idx, (input, target) in enumerate(loader):
        last_batch = batch_idx == last_idx
        need_update = last_batch or (batch_idx + 1) % accum == 0
        if not args.prefetcher:
            input, target = input.to(device), target.to(device)
            if mixup_fn is not None:
                input, target = mixup_fn(input, target)
        if args.channels_last:
            input = input.contiguous(memory_format=torch.channels_last)

        sync_ctx = model.no_sync if (args.distributed and not need_update) else nullcontext
        with sync_ctx():
            with amp_autocast():
                output = model(input)
                loss = loss_fn(output, target)
            if not torch.isfinite(loss):
                raise TrainError(f'loss is {loss.item()} at epoch {epoch} step {batch_idx}; '
                                 f'lower the lr or enable clip_grad')
            scaled = loss / accum if accum > 1 else loss
            if loss_scaler is not None:
                loss_scaler(scaled, optimizer, clip_grad=args.clip_grad, clip_mode=args.clip_mode,
                            parameters=model_parameters(model, exclude_head='agc' in args.clip_mode),
                            create_graph=second_order, need_update=need_update)
            else:
                scaled.backward(create_graph=second_order)
                if need_update:
                    if args.clip_grad is not None:
                        utils.dispatch_clip_grad(
                            model_parameters(model, exclude_head='agc' in args.clip_mode),
                            value=args.clip_grad, mode=args.clip_mode)
                    optimizer.step()

        bs = input.size(0)
        loss_sum += loss.item() * bs
        n_sum += bs
        losses_m.update(loss.item(), bs)
        imgs_since_log += bs
        if need_update:
            optimizer.zero_grad()
            num_updates += 1
            if model_ema is not None:
                model_ema.update(model, step=num_updates)
            if lr_scheduler is not None:
                lr_scheduler.step_update(num_updates=num_updates, metric=losses_m.avg)
            update_idx = batch_idx // accum
            if args.log_interval and (update_idx % args.log_interval == 0 or last_batch):
                dt = max(time.time() - t_log, 1e-9)
                lr = sum(g['lr'] for g in optimizer.param_groups) / len(optimizer.param_groups)
                if utils.is_primary(args):
                    _logger.info(
                        f'Train: {epoch} [{update_idx:>4d}/{updates_per_epoch} '
                        f'({100. * (update_idx + 1) / updates_per_epoch:>3.0f}%)]  '
                        f'loss {losses_m.val:#.3g} ({losses_m.avg:#.3g})  lr {lr:.3e}  '
                        f'{imgs_since_log * args.world_size / dt:>7.1f} img/s')
                t_log, imgs_since_log = time.time(), 0

    total, count = _all_reduce_sum([loss_sum, n_sum], args, device)
    return {'loss': total / max(count, 1)}, num_updates


@torch.no_grad()
def validate(model, loader, loss_fn, args, device, amp_autocast, log_suffix=''):
    model.eval()
    loss_sum = c1 = c5 = n = 0.0
    maxk = min(5, args.num_classes or 5)
    for input, target in loader:
        if not args.prefetcher:
            input, target = input.to(device), target.to(device)
        if args.channels_last:
            input = input.contiguous(memory_format=torch.channels_last)
        with amp_autocast():
            output = model(input)
            if isinstance(output, (tuple, list)):
                output = output[0]
            loss = loss_fn(output, target)
        acc1, acc5 = utils.accuracy(output.float(), target, topk=(1, maxk))
        bs = input.size(0)
        loss_sum += loss.item() * bs
        c1 += acc1.item() * bs / 100.
        c5 += acc5.item() * bs / 100.
        n += bs
    loss_sum, c1, c5, n = _all_reduce_sum([loss_sum, c1, c5, n], args, device)
    metrics = {'loss': loss_sum / max(n, 1), 'top1': 100. * c1 / max(n, 1), 'top5': 100. * c5 / max(n, 1)}
    if utils.is_primary(args):
        _logger.info(f'Eval{log_suffix}: loss {metrics["loss"]:.4f}  top-1 {metrics["top1"]:.2f}%  '
                     f'top-5 {metrics["top5"]:.2f}%  ({int(n)} images)')
    return metrics


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------

def _pillow_compat():
    """tools/pillow_compat.py, however this file was started (hgrn_tools.train, tools.train, or as a script)."""
    if __package__:
        return importlib.import_module('.pillow_compat', __package__)
    return importlib.import_module('pillow_compat')  # `python tools/train.py`: tools/ is on sys.path


def install_augment_guards(args):
    """Guards for timm augmentations that the installed Pillow breaks (tools/pillow_compat.py); run before
    any transform is built. Today: timm's posterize with 0 bits (RandAugment at magnitude 10), which
    Pillow >= 13 rejects: it gives the black image again, as with Pillow < 13."""
    compat = _pillow_compat()
    if compat.install() and utils.is_primary(args):
        import PIL
        _logger.info(f'Pillow {PIL.__version__} rejects posterize with 0 bits: timm\'s posterize is guarded '
                     f'(0 bits -> black image, as with Pillow < 13; {compat.DEVICE_MODULE})')


def _import_modules(args):
    mods = list(args.device_modules or [])
    if 'hgrn_vision' not in mods:
        mods.insert(0, 'hgrn_vision')
    for m in mods:
        if m == 'hgrn_tools.pillow_compat':
            continue  # for timm's train.py; hgrn-train installs it itself (also from a checkout without hgrn_tools)
        try:
            importlib.import_module(m)
        except ImportError as e:
            raise TrainError(f'cannot import module "{m}" (from device_modules): {e}') from None


def _setup_device(args):
    if args.device is None:
        args.device = 'cuda' if torch.cuda.is_available() else 'cpu'
    if args.device.startswith('cuda') and not torch.cuda.is_available():
        raise TrainError(f'device {args.device} requested but CUDA is not available (use --device cpu)')
    # torchrun: NCCL on CUDA, gloo on CPU (timm picks the backend from the device type)
    return utils.init_distributed_device(args)


def _create_model(args):
    in_chans = args.in_chans or (args.input_size[0] if args.input_size else 3)
    try:
        model = create_model(
            args.model, pretrained=args.pretrained, in_chans=in_chans, num_classes=args.num_classes,
            drop_rate=args.drop, drop_path_rate=args.drop_path, drop_block_rate=args.drop_block,
            global_pool=args.gp, **(args.model_kwargs or {}))
    except RuntimeError as e:
        if 'Unknown model' in str(e):
            close = difflib.get_close_matches(args.model, _list_models(), n=3)
            raise TrainError(f'unknown model "{args.model}"' + (f' (did you mean {", ".join(close)}?)' if close else ''))
        raise
    except TypeError as e:
        raise TrainError(f'model "{args.model}" rejected its arguments (model_kwargs?): {e}') from None
    if args.head_init_scale is not None:
        with torch.no_grad():
            model.get_classifier().weight.mul_(args.head_init_scale)
            model.get_classifier().bias.mul_(args.head_init_scale)
    if args.head_init_bias is not None:
        nn.init.constant_(model.get_classifier().bias, args.head_init_bias)
    if args.num_classes is None:
        args.num_classes = model.num_classes
    return model


def _list_models():
    import timm
    return timm.list_models()


def _output_dir(args, resume_path):
    if resume_path and not args.experiment:
        return os.path.dirname(os.path.abspath(resume_path))  # continue the run where it was
    base = args.output or './output'
    if args.experiment:
        name = args.experiment
    elif args.config and not args.config.startswith('<'):
        name = os.path.splitext(os.path.basename(args.config))[0]
    elif args.dataset == DIGITS_DATASET:
        name = 'hgrn_deit_micro_digits'
    else:
        name = '-'.join([datetime.now().strftime('%Y%m%d-%H%M%S'), safe_model_name(args.model)])
    return utils.get_outdir(base, 'train', name, inc=not args.experiment)


def run(args):
    """Train (or, with --validate-only, evaluate). Returns a dict of results (rank 0 has the paths)."""
    t_start = time.time()
    _import_modules(args)
    device = _setup_device(args)
    install_augment_guards(args)
    args.prefetcher = not args.no_prefetcher
    args.grad_accum_steps = max(1, args.grad_accum_steps)
    primary = utils.is_primary(args)
    if args.distributed and primary:
        _logger.info(f'Distributed: {args.world_size} processes, backend '
                     f'{torch.distributed.get_backend()}, device {args.device}')

    # --- everything that can fail on bad input is checked before any training step ---
    resume_ckpt = None
    if args.resume:
        resume_ckpt = read_checkpoint(args.resume, 'resume checkpoint')
        if 'state_dict' not in resume_ckpt or 'epoch' not in resume_ckpt:
            raise TrainError(f'resume checkpoint {args.resume} is a weights file, not a training checkpoint '
                             f'(no epoch/optimizer state); use --initial-checkpoint to start from its weights')
        if resume_ckpt.get('arch') and resume_ckpt['arch'] != args.model:
            raise TrainError(f'resume checkpoint {args.resume} was written for model "{resume_ckpt["arch"]}", '
                             f'not "{args.model}"')
    init_ckpt_path = args.initial_checkpoint or (args.resume if args.validate_only else '')
    init_ckpt = None
    if init_ckpt_path:
        init_ckpt = resume_ckpt if init_ckpt_path == args.resume else read_checkpoint(init_ckpt_path, 'checkpoint')

    utils.random_seed(args.seed, args.rank)
    model = _create_model(args)
    if init_ckpt is not None:
        key = 'state_dict_ema' if (args.validate_only and args.use_ema) else 'state_dict'
        if key == 'state_dict_ema' and key not in init_ckpt:
            raise TrainError(f'checkpoint {init_ckpt_path} has no EMA weights (state_dict_ema)')
        sd = init_ckpt.get(key, init_ckpt if key == 'state_dict' else None)
        sd = init_ckpt.get('model', sd) if 'state_dict' not in init_ckpt else sd
        load_weights_checked(model, sd, init_ckpt_path)
    if resume_ckpt is not None and not args.validate_only:
        load_weights_checked(model, resume_ckpt['state_dict'], args.resume)

    data_config = resolve_data_config(vars(args), model=model, verbose=primary)
    dataset_eval = build_dataset(args, args.val_split, is_training=False)
    dataset_train = None if args.validate_only else build_dataset(args, args.train_split, is_training=True)

    model.to(device=device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    if args.grad_checkpointing:
        model.set_grad_checkpointing(enable=True)

    amp_autocast, loss_scaler = nullcontext, None
    if args.amp:
        dtype = torch.bfloat16 if (args.amp_dtype == 'bfloat16' or device.type == 'cpu') else torch.float16
        amp_autocast = lambda: torch.autocast(device_type=device.type, dtype=dtype)  # noqa: E731
        if dtype == torch.float16:
            loss_scaler = utils.NativeScaler(device=device.type)
        if primary:
            _logger.info(f'AMP: autocast {dtype}' + (' with loss scaling' if loss_scaler else ''))

    eval_workers = args.workers
    loader_eval = create_loader(
        dataset_eval, input_size=data_config['input_size'],
        batch_size=args.validation_batch_size or args.batch_size, is_training=False,
        interpolation=data_config['interpolation'], mean=data_config['mean'], std=data_config['std'],
        num_workers=eval_workers, distributed=args.distributed, crop_pct=data_config['crop_pct'],
        pin_memory=args.pin_mem, device=device, use_prefetcher=args.prefetcher)
    validate_loss_fn = nn.CrossEntropyLoss().to(device)

    if args.validate_only:
        ckpt_desc = init_ckpt_path or '(random init)'
        metrics = validate(model, loader_eval, validate_loss_fn, args, device, amp_autocast,
                           log_suffix=' (EMA)' if args.use_ema else '')
        if primary:
            print(json.dumps({'checkpoint': ckpt_desc, 'model': args.model, **{
                k: round(v, 4) for k, v in metrics.items()}}), flush=True)
        _finish(args)
        return {'eval': metrics}

    # --- optimizer, lr scaling as timm train.py ---
    if args.lr is None:
        global_batch = args.batch_size * args.world_size * args.grad_accum_steps
        ratio = global_batch / args.lr_base_size
        scale = args.lr_base_scale or ('sqrt' if any(o in args.opt.lower() for o in ('ada', 'lamb')) else 'linear')
        args.lr = args.lr_base * (ratio ** 0.5 if scale == 'sqrt' else ratio)
        if primary:
            _logger.info(f'lr {args.lr:.3g} = lr_base {args.lr_base} x ({global_batch}/{args.lr_base_size})'
                         f'{"^0.5" if scale == "sqrt" else ""} ({scale} scaling, global batch {global_batch})')
    optimizer = create_optimizer_v2(model, **optimizer_kwargs(cfg=args), **(args.opt_kwargs or {}))

    model_ema = None
    if args.model_ema:
        model_ema = utils.ModelEmaV3(model, decay=args.model_ema_decay, use_warmup=args.model_ema_warmup,
                                     device='cpu' if args.model_ema_force_cpu else None)

    start_epoch = 0
    if resume_ckpt is not None:
        if not args.no_resume_opt:
            try:
                if 'optimizer' in resume_ckpt:
                    optimizer.load_state_dict(resume_ckpt['optimizer'])
                if loss_scaler is not None and loss_scaler.state_dict_key in resume_ckpt:
                    loss_scaler.load_state_dict(resume_ckpt[loss_scaler.state_dict_key])
            except (ValueError, KeyError, RuntimeError) as e:
                raise TrainError(f'optimizer state in {args.resume} does not fit this run ({e}); '
                                 f'check opt / layer_decay, or pass --no-resume-opt') from None
        if model_ema is not None:
            if 'state_dict_ema' in resume_ckpt:
                load_weights_checked(model_ema.module, resume_ckpt['state_dict_ema'], args.resume)
            else:
                _logger.warning(f'{args.resume} has no EMA weights; EMA restarts from the model weights')
        start_epoch = resume_ckpt['epoch'] + 1 if resume_ckpt.get('version', 2) >= 2 else resume_ckpt['epoch']
    if args.start_epoch is not None:
        start_epoch = args.start_epoch

    if args.distributed:
        ddp_kw = dict(device_ids=[device]) if device.type == 'cuda' else {}
        model = nn.parallel.DistributedDataParallel(model, broadcast_buffers=not args.no_ddp_bb, **ddp_kw)
    if args.torchcompile:
        model = torch.compile(model, backend=args.torchcompile)

    # --- data ---
    collate_fn, mixup_fn = None, None
    mixup_active = args.mixup > 0 or args.cutmix > 0. or args.cutmix_minmax is not None
    if mixup_active:
        mixup_args = dict(
            mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, cutmix_minmax=args.cutmix_minmax,
            prob=args.mixup_prob, switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
            label_smoothing=args.smoothing, num_classes=args.num_classes)
        if args.prefetcher:
            collate_fn = FastCollateMixup(**mixup_args)
        else:
            mixup_fn = Mixup(**mixup_args)
    loader_train = create_train_loader(args, dataset_train, data_config, device, collate_fn)
    if len(loader_train) == 0:
        raise TrainError(f'batch size {args.batch_size} is larger than the training set '
                         f'({len(dataset_train)} images per process)')

    # --- losses ---
    if mixup_active:
        train_loss_fn = BinaryCrossEntropy(target_threshold=args.bce_target_thresh, sum_classes=args.bce_sum,
                                           pos_weight=args.bce_pos_weight) if args.bce_loss \
            else SoftTargetCrossEntropy()
    elif args.smoothing:
        train_loss_fn = BinaryCrossEntropy(smoothing=args.smoothing, target_threshold=args.bce_target_thresh,
                                           sum_classes=args.bce_sum, pos_weight=args.bce_pos_weight) \
            if args.bce_loss else LabelSmoothingCrossEntropy(smoothing=args.smoothing)
    else:
        train_loss_fn = nn.CrossEntropyLoss()
    train_loss_fn = train_loss_fn.to(device)

    # --- schedule ---
    updates_per_epoch = (len(loader_train) + args.grad_accum_steps - 1) // args.grad_accum_steps
    decreasing = 'loss' in args.eval_metric
    lr_scheduler, num_epochs = create_scheduler_v2(
        optimizer, **scheduler_kwargs(args, decreasing_metric=decreasing), updates_per_epoch=updates_per_epoch)
    if lr_scheduler is not None and start_epoch > 0:
        if args.sched_on_updates:
            lr_scheduler.step_update(start_epoch * updates_per_epoch)
        else:
            lr_scheduler.step(start_epoch)
    if start_epoch >= num_epochs:
        raise TrainError(f'checkpoint {args.resume} already finished epoch {start_epoch - 1} of {num_epochs}; '
                         f'raise --epochs to train further')

    # --- outputs (rank 0 writes) ---
    output_dir, saver, summary_csv = None, None, None
    if primary:
        output_dir = os.path.abspath(_output_dir(args, args.resume))
        saver = AtomicCheckpointSaver(
            model=model, optimizer=optimizer, args=args, model_ema=model_ema, amp_scaler=loss_scaler,
            checkpoint_dir=output_dir, recovery_dir=output_dir, decreasing=decreasing,
            max_history=args.checkpoint_hist)
        summary_csv = os.path.join(output_dir, 'summary.csv')
        if args.resume and os.path.dirname(os.path.abspath(args.resume)) == os.path.abspath(output_dir):
            if resume_ckpt.get('saver'):
                saver.load_state_dict(resume_ckpt['saver'])  # keep ranking / pruning checkpoint-N files
        utils.trim_summary(summary_csv, start_epoch)
        with open(os.path.join(output_dir, 'args.yaml'), 'w') as f:
            yaml.safe_dump({k: v for k, v in vars(args).items() if _yaml_ok(v)}, f, default_flow_style=False)
        _logger.info(f'Output: {output_dir}  |  {args.model}, {sum(p.numel() for p in model.parameters()):,} '
                     f'params  |  {len(dataset_train)} train / {len(dataset_eval)} val images  |  '
                     f'epochs {start_epoch}..{num_epochs - 1}, {updates_per_epoch} steps/epoch')

    # --- loop ---
    num_updates = start_epoch * updates_per_epoch
    eval_metrics, best = None, (None, None)
    for epoch in range(start_epoch, num_epochs):
        # Re-seed at every epoch start: an epoch's randomness (data order, augmentation, mixup, drop path)
        # depends only on (seed, epoch, rank), so a run resumed at an epoch boundary continues exactly.
        utils.random_seed(args.seed + 7919 * epoch, args.rank)
        if hasattr(loader_train.sampler, 'set_epoch'):
            loader_train.sampler.set_epoch(epoch)
        elif args.distributed and hasattr(getattr(loader_train, 'loader', None), 'sampler'):
            loader_train.loader.sampler.set_epoch(epoch)
        if mixup_active and args.mixup_off_epoch and epoch >= args.mixup_off_epoch:
            if args.prefetcher and loader_train.mixup_enabled:
                loader_train.mixup_enabled = False
            elif mixup_fn is not None:
                mixup_fn.mixup_enabled = False

        train_metrics, num_updates = train_one_epoch(
            epoch, model, loader_train, optimizer, train_loss_fn, args, device, lr_scheduler, amp_autocast,
            loss_scaler, model_ema, mixup_fn, num_updates)

        if args.distributed and args.dist_bn in ('broadcast', 'reduce'):
            utils.distribute_bn(model, args.world_size, args.dist_bn == 'reduce')

        last_epoch = epoch == num_epochs - 1
        if (epoch + 1) % max(args.val_interval, 1) == 0 or last_epoch:
            eval_metrics = validate(model, loader_eval, validate_loss_fn, args, device, amp_autocast)
            if model_ema is not None and not args.model_ema_force_cpu:
                ema_metrics = validate(model_ema, loader_eval, validate_loss_fn, args, device, amp_autocast,
                                       log_suffix=' (EMA)')
                eval_metrics.update({f'ema_{k}': v for k, v in ema_metrics.items()})
            metric = eval_metrics[args.eval_metric] if args.eval_metric in eval_metrics else None
        else:
            eval_metrics, metric = None, None

        if primary:
            lrs = [g['lr'] for g in optimizer.param_groups]
            utils.update_summary(epoch, train_metrics, eval_metrics or {}, filename=summary_csv,
                                 lr=sum(lrs) / len(lrs))
            best = saver.save_checkpoint(epoch, metric=metric)
        if lr_scheduler is not None and not args.sched_on_updates:
            lr_scheduler.step(epoch + 1, metric)

    result = {'eval': eval_metrics, 'train': train_metrics, 'output_dir': output_dir,
              'wall_s': time.time() - t_start}
    digest = weights_digest(model)
    if args.distributed:
        digests = [None] * args.world_size
        torch.distributed.all_gather_object(digests, digest)
    else:
        digests = [digest]
    result['weights_sha256'] = digests
    if primary:
        in_sync = len(set(digests)) == 1
        with open(os.path.join(output_dir, 'weights_sha256.json'), 'w') as f:
            json.dump({'ranks': digests, 'in_sync': in_sync}, f, indent=1)
        if not in_sync:
            _logger.error(f'ranks ended with different weights: {digests}')
        last = os.path.join(output_dir, 'last.pth.tar')
        best_path = os.path.join(output_dir, 'model_best.pth.tar')
        result.update(checkpoint=last, summary=summary_csv)
        top1 = eval_metrics['top1'] if eval_metrics else float('nan')
        lines = [f'Done: {num_epochs - start_epoch} epochs in {result["wall_s"]:.1f} s; final val top-1 '
                 f'{top1:.2f}%' + (f' (best {best[0]:.2f}% at epoch {best[1]})' if best and best[0] is not None
                                   else ''),
                 f'  checkpoint: {last}']
        if os.path.exists(best_path):
            lines.append(f'  best:       {best_path}')
        lines.append(f'  summary:    {summary_csv}')
        print('\n'.join(lines), flush=True)
    _finish(args)
    return result


def _yaml_ok(v):
    return v is None or isinstance(v, (bool, int, float, str)) or (
        isinstance(v, (list, tuple)) and all(_yaml_ok(x) for x in v)) or (
        isinstance(v, dict) and all(isinstance(k, str) and _yaml_ok(x) for k, x in v.items()))


def _finish(args):
    if getattr(args, 'distributed', False) and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def main(argv=None):
    utils.setup_default_logging()
    try:
        args = parse_args(argv)
        run(args)
        return 0
    except TrainError as e:
        print(f'hgrn-train: error: {e}', file=sys.stderr, flush=True)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        raise SystemExit(2)


if __name__ == '__main__':
    main()
