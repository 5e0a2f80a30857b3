#!/usr/bin/env python3
"""hgrn-train: train and evaluate HGRN-DeiT (or any timm model) with timm's parts.

Reads the same YAML files as timm's ``train.py --config`` (keys are its argument names, with
underscores). Built from timm's library: dataset / loader / transforms, Mixup / CutMix,
``create_optimizer_v2`` (``no_weight_decay`` and layer decay), ``create_scheduler_v2``,
``ModelEmaV3``, ``NativeScaler`` AMP, ``dispatch_clip_grad``, ``CheckpointSaver``,
``resume_checkpoint`` / ``load_state_dict``, ``update_summary``, ``init_distributed_device``.

    hgrn-train                                   # embedded default: micro HGRN-DeiT on sklearn digits
    hgrn-train --config configs/hgrn_deit_small_in1k.yaml --data-dir /imagenet
    torchrun --nproc_per_node 8 -m hgrn_tools.train --config ... --data-dir /imagenet
    hgrn-train --config ... --data-dir /imagenet --resume output/train/<run>/last.pth.tar
    hgrn-train --config ... --data-dir /imagenet --validate-only --initial-checkpoint <ckpt>

Runs as ``python -m tools.train`` from a checkout as well. This file is the command line; the trainer is in
the files next to it:

    config.py      the arguments / YAML keys, their checks, the embedded digits job
    data.py        the digits data set, timm datasets and loaders, mixup, the Pillow guard
    checkpoint.py  checkpoints read and checked, a run resumed, atomic saves, the output folder
    loop.py        run(): set-up, model / optimizer / loss / schedule, the epochs, the report
    epoch.py       one training epoch, one evaluation pass
"""
import sys

import torch

from timm import utils

from .config import (DEFAULT_DIGITS_CONFIG, DIGITS_DATASET, TIMM_ONLY_IGNORED, TrainError, known_keys,
                     load_config, parse_args, validate_config)
from .checkpoint import AtomicCheckpointSaver, weights_digest
from .data import DigitsDataset, build_dataset, create_train_loader, install_augment_guards, pillow_compat_module
from .loop import create_model_from_args, import_device_modules, run, set_up_device

# the names the tests and earlier callers use from hgrn_tools.train (kept as they were)
_known_keys = known_keys
_create_model = create_model_from_args
_import_modules = import_device_modules
_setup_device = set_up_device
_pillow_compat = pillow_compat_module

__all__ = ['main', 'run', 'parse_args', 'load_config', 'validate_config', 'TrainError', 'DEFAULT_DIGITS_CONFIG',
           'DIGITS_DATASET', 'TIMM_ONLY_IGNORED', 'AtomicCheckpointSaver', 'DigitsDataset', 'build_dataset',
           'create_train_loader', 'install_augment_guards', 'weights_digest']


def main(argv=None):
    """The console script: a TrainError is printed as one line `hgrn-train: error: ...`, exit status 2."""
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
