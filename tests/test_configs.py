"""Every YAML in configs/ uses timm train.py's argument names, parses in hgrn-train, and the recipes say
what the paper says (docs/spec.md §3.4)."""
import glob
import os

import pytest
import yaml

from tools import train as T

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, 'configs', '*.yaml')))

# Argument dest names of timm's train.py (huggingface/pytorch-image-models, train.py, the 1.0.x script that
# goes with the timm 1.0.31 wheel this project pins: it is not in the wheel, users run it from the repository).
# A YAML key outside this list is silently ignored by timm's train.py (it calls parser.set_defaults(**cfg)),
# so a typo there would quietly change a recipe: this list is the guard.
TIMM_TRAIN_ARG_NAMES = [
    # dataset
    'data', 'data_dir', 'dataset', 'train_split', 'val_split', 'train_num_samples', 'val_num_samples',
    'dataset_download', 'class_map', 'input_img_mode', 'input_key', 'target_key', 'dataset_trust_remote_code',
    # model
    'model', 'pretrained', 'pretrained_path', 'initial_checkpoint', 'resume', 'no_resume_opt', 'num_classes',
    'gp', 'img_size', 'in_chans', 'input_size', 'crop_pct', 'mean', 'std', 'interpolation', 'batch_size',
    'validation_batch_size', 'channels_last', 'fuser', 'grad_accum_steps', 'grad_checkpointing', 'fast_norm',
    'model_kwargs', 'head_init_scale', 'head_init_bias', 'torchcompile_mode', 'torchscript', 'torchcompile',
    # device
    'device', 'amp', 'amp_dtype', 'model_dtype', 'no_ddp_bb', 'synchronize_step', 'local_rank',
    'device_modules',
    # optimizer
    'opt', 'opt_eps', 'opt_betas', 'momentum', 'weight_decay', 'clip_grad', 'clip_mode', 'layer_decay',
    'layer_decay_min_scale', 'layer_decay_no_opt_scale', 'opt_kwargs',
    # lr schedule
    'sched', 'sched_on_updates', 'lr', 'lr_base', 'lr_base_size', 'lr_base_scale', 'lr_noise', 'lr_noise_pct',
    'lr_noise_std', 'lr_cycle_mul', 'lr_cycle_decay', 'lr_cycle_limit', 'lr_k_decay', 'warmup_lr', 'min_lr',
    'epochs', 'epoch_repeats', 'start_epoch', 'decay_milestones', 'decay_epochs', 'warmup_epochs',
    'warmup_prefix', 'cooldown_epochs', 'patience_epochs', 'decay_rate',
    # augmentation and regularization
    'no_aug', 'train_crop_mode', 'scale', 'ratio', 'hflip', 'vflip', 'color_jitter', 'color_jitter_prob',
    'grayscale_prob', 'gaussian_blur_prob', 'aa', 'aug_repeats', 'aug_splits', 'jsd_loss', 'bce_loss',
    'bce_sum', 'bce_target_thresh', 'bce_pos_weight', 'reprob', 'remode', 'recount', 'resplit', 'mixup',
    'cutmix', 'cutmix_minmax', 'mixup_prob', 'mixup_switch_prob', 'mixup_mode', 'mixup_off_epoch',
    'smoothing', 'train_interpolation', 'drop', 'drop_connect', 'drop_path', 'drop_block',
    # batch norm
    'bn_momentum', 'bn_eps', 'sync_bn', 'dist_bn', 'split_bn',
    # model EMA
    'model_ema', 'model_ema_force_cpu', 'model_ema_decay', 'model_ema_warmup',
    # misc
    'seed', 'worker_seeding', 'log_interval', 'val_interval', 'recovery_interval', 'checkpoint_hist',
    'workers', 'save_images', 'pin_mem', 'no_prefetcher', 'output', 'experiment', 'eval_metric', 'tta',
    'use_multi_epochs_loader', 'log_wandb', 'wandb_project', 'wandb_tags', 'wandb_resume_id',
    'naflex_loader',
]


def _load(path):
    with open(path) as f:
        return yaml.safe_load(f)


def test_configs_exist():
    names = {os.path.basename(p) for p in CONFIGS}
    assert {'hgrn_deit_tiny_in1k.yaml', 'hgrn_deit_small_in1k.yaml', 'hgrn_deit_micro_digits.yaml'} <= names


@pytest.mark.parametrize('path', CONFIGS, ids=os.path.basename)
def test_config_keys_are_timm_train_names(path):
    cfg = _load(path)
    assert isinstance(cfg, dict) and cfg
    unknown = sorted(set(cfg) - set(TIMM_TRAIN_ARG_NAMES))
    assert not unknown, f'{path}: not timm train.py argument names: {unknown}'


@pytest.mark.parametrize('path', CONFIGS, ids=os.path.basename)
def test_config_parses_in_our_trainer(path):
    cfg = T.load_config(path)
    assert cfg == _load(path)  # nothing dropped: every key is implemented by hgrn-train
    args = T.parse_args(['--config', path, '--data-dir', '/nonexistent'])
    for k, v in cfg.items():
        assert getattr(args, k) == v, k


def test_trainer_accepts_every_timm_name():
    """A recipe written for timm's train.py loads in hgrn-train: each name is implemented or knowingly ignored."""
    ours = T._known_keys() | set(T.TIMM_ONLY_IGNORED)
    assert not sorted(set(TIMM_TRAIN_ARG_NAMES) - ours)


def test_embedded_default_matches_yaml():
    assert T.DEFAULT_DIGITS_CONFIG == _load(os.path.join(ROOT, 'configs', 'hgrn_deit_micro_digits.yaml'))
    args = T.parse_args([])
    assert args.dataset == T.DIGITS_DATASET and args.model == 'hgrn_deit_tiny'


@pytest.mark.parametrize('variant', ['tiny', 'small'])
def test_in1k_recipe_is_the_paper_recipe(variant):
    cfg = _load(os.path.join(ROOT, 'configs', f'hgrn_deit_{variant}_in1k.yaml'))
    assert cfg['model'] == f'hgrn_deit_{variant}'
    assert 'hgrn_vision' in cfg['device_modules']
    expect = dict(opt='adamw', lr_base=5e-4, lr_base_size=512, lr_base_scale='linear', weight_decay=0.05,
                  sched='cosine', epochs=300, warmup_epochs=10, clip_grad=5.0, clip_mode='norm', drop_path=0.1,
                  smoothing=0.1, mixup=0.8, cutmix=1.0, aa='rand-m9-mstd0.5-inc1', reprob=0.25,
                  train_interpolation='bicubic', img_size=224, num_classes=1000)
    for k, v in expect.items():
        assert cfg[k] == v, k
    assert 'lr' not in cfg  # lr follows the global batch: lr_base * batch / 512
    # global batch 2048 on 8 processes -> lr 2e-3, as in the paper (linear, not timm's sqrt default for adam)
    assert cfg['batch_size'] * 8 == 2048


def test_in1k_recipe_really_turns_drop_path_on():
    import hgrn_vision  # noqa: F401
    from timm.layers import DropPath
    path = os.path.join(ROOT, 'configs', 'hgrn_deit_tiny_in1k.yaml')
    args = T.parse_args(['--config', path, '--data-dir', '/nonexistent'])
    model = T._create_model(args)
    rates = [m.drop_prob for m in model.modules() if isinstance(m, DropPath)]
    assert rates and max(rates) == pytest.approx(0.1)


def test_unknown_key_is_a_clear_error(tmp_path):
    p = tmp_path / 'bad.yaml'
    p.write_text('model: hgrn_deit_tiny\ndrop_pth: 0.1\n')
    with pytest.raises(T.TrainError, match=r'unknown config key "drop_pth".*drop_path'):
        T.load_config(str(p))
    p.write_text('drop-path: 0.1\n')
    with pytest.raises(T.TrainError, match=r'"drop-path".*did you mean: drop_path'):
        T.load_config(str(p))


def test_bad_values_are_clear_errors(tmp_path, capsys):
    p = tmp_path / 'bad.yaml'
    p.write_text('epochs: ten\n')
    with pytest.raises(T.TrainError, match='"epochs" has a value of the wrong type'):
        T.load_config(str(p))
    p.write_text('- just\n- a list\n')
    with pytest.raises(T.TrainError, match='mapping'):
        T.load_config(str(p))
    with pytest.raises(SystemExit) as e:
        T.main(['--config', str(tmp_path / 'missing.yaml')])
    assert e.value.code == 2
    assert 'config file not found' in capsys.readouterr().err


def test_timm_only_key_is_accepted_with_warning(tmp_path, caplog):
    p = tmp_path / 'timm.yaml'
    p.write_text('model: hgrn_deit_tiny\nlog_wandb: true\nsync_bn: false\n')
    cfg = T.load_config(str(p))
    assert cfg == {'model': 'hgrn_deit_tiny'}
    assert 'log_wandb' in caplog.text
