"""hgrn-train: the trainer (timm's parts, timm train.py's YAML). The command line is cli.py; the
console script ``hgrn-train`` and ``python -m hgrn_tools.train`` (``python -m tools.train`` from a
checkout) run its ``main``."""
from .cli import (DEFAULT_DIGITS_CONFIG, DIGITS_DATASET, TIMM_ONLY_IGNORED, AtomicCheckpointSaver,  # noqa: F401
                  DigitsDataset, TrainError, _create_model, _import_modules, _known_keys, _pillow_compat,
                  _setup_device, build_dataset, create_train_loader, install_augment_guards, load_config, main,
                  parse_args, run, validate_config, weights_digest)

__all__ = ['main', 'run', 'parse_args', 'load_config', 'validate_config', 'TrainError', 'DEFAULT_DIGITS_CONFIG',
           'DIGITS_DATASET', 'TIMM_ONLY_IGNORED', 'AtomicCheckpointSaver', 'DigitsDataset', 'build_dataset',
           'create_train_loader', 'install_augment_guards', 'weights_digest']
