"""hgrn-train's checkpoints and output folder: read and checked before anything is built, a run restored,
every epoch saved atomically.

Reading a file, choosing its weights (EMA / plain), cleaning DDP / torch.compile prefixes and restoring a
run are timm's public functions (load_state_dict, load_checkpoint, resume_checkpoint,
load_checkpoint_metadata, clean_state_dict, CheckpointSaver). This file adds what turns a missing,
corrupt or mismatched file into a clear error that names it, before any training step.
"""
import hashlib
import logging
import os
import zipfile
from datetime import datetime

import torch
import yaml

from timm import utils
from timm.models import clean_state_dict, load_checkpoint, load_state_dict, resume_checkpoint, safe_model_name
from timm.utils import load_checkpoint_metadata

from .config import DIGITS_DATASET, TrainError, args_for_yaml

_logger = logging.getLogger('hgrn_train')


# --------------------------------------------------------------------------------------------
# Reading and checking (before anything is trained)
# --------------------------------------------------------------------------------------------

def _require_file(path, what):
    if not path or not os.path.isfile(path):
        raise TrainError(f'{what} not found: {path}')


def _corrupt(path, what, reason):
    return TrainError(
        f'cannot read {what} {path}: the file is corrupt, truncated or not a torch checkpoint ({reason}). '
        f'Nothing was trained; pick an intact checkpoint (e.g. an epoch file checkpoint-N.pth.tar next to it).')


def _read(path, what, load):
    """load(path), with an error naming the file when it is corrupt, truncated or not a checkpoint."""
    try:
        return load(path)
    except Exception as e:
        if path.endswith('.safetensors'):
            raise TrainError(f'cannot read {what} {path}: corrupt or not safetensors ({e})') from None
        raise _corrupt(path, what, f'{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}') from None


def _entries(path, what):
    """A torch checkpoint's entries (epoch, arch, ...) without reading its tensors: timm's
    load_checkpoint_metadata memory-maps them, which needs the zip archive that torch.save writes."""
    if not zipfile.is_zipfile(path):
        raise _corrupt(path, what, 'not the zip archive that torch.save writes')
    ckpt = _read(path, what, load_checkpoint_metadata)
    if not isinstance(ckpt, dict):
        raise TrainError(f'{what} {path} holds a {type(ckpt).__name__}, not a checkpoint dict')
    return ckpt


def read_resume_checkpoint(path, model_name, opt=None):
    """The resume checkpoint's entries, checked: a training checkpoint (weights and epoch) of this model,
    and, with ``opt`` (the run's optimizer name when its state is to be restored), written by the same
    optimizer: another one's state would load and then fail at the first step. The run itself is restored
    later from the file by restore_training_state."""
    what = 'resume checkpoint'
    _require_file(path, what)
    ckpt = {} if path.endswith('.safetensors') else _entries(path, what)  # safetensors: weights only
    if 'state_dict' not in ckpt or 'epoch' not in ckpt:
        raise TrainError(f'resume checkpoint {path} is a weights file, not a training checkpoint '
                         f'(no epoch/optimizer state); use --initial-checkpoint to start from its weights')
    if ckpt.get('arch') and ckpt['arch'] != model_name:
        raise TrainError(f'resume checkpoint {path} was written for model "{ckpt["arch"]}", not "{model_name}"')
    saved_opt = getattr(ckpt.get('args'), 'opt', None)
    if opt is not None and saved_opt is not None and saved_opt.lower() != opt.lower():
        raise TrainError(f'resume checkpoint {path} holds the state of optimizer "{saved_opt}", but this run '
                         f'uses "{opt}"; resume with --opt {saved_opt}, or pass --no-resume-opt to start a '
                         f'fresh optimizer from its weights')
    return ckpt


def read_weights(path, use_ema=False):
    """The model weights in a checkpoint or weights file, by timm's load_state_dict: state_dict_ema (use_ema),
    else state_dict, model or the whole file; DDP / torch.compile prefixes cleaned; .safetensors too."""
    what = 'checkpoint'
    _require_file(path, what)
    entries = {}
    if not path.endswith('.safetensors') and zipfile.is_zipfile(path):
        entries = _entries(path, what)  # (torch's pre-1.6 files are no zip archives: timm reads those directly)
    if use_ema and 'state_dict_ema' not in entries:
        # timm would quietly fall back to the plain weights: asked for the EMA, say that there is none
        raise TrainError(f'checkpoint {path} has no EMA weights (state_dict_ema)')
    return _read(path, what, lambda p: load_state_dict(p, use_ema=use_ema))


def check_weights_fit(model, state_dict, path):
    """Stop with a clear, short error (file, first keys / shapes) when the weights do not fit the model;
    torch's own strict load would list every key of the model."""
    state_dict = clean_state_dict(state_dict)
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


def load_weights(model, state_dict, path):
    """Checked first (check_weights_fit), then loaded strictly."""
    state_dict = clean_state_dict(state_dict)
    check_weights_fit(model, state_dict, path)
    model.load_state_dict(state_dict, strict=True)


# --------------------------------------------------------------------------------------------
# Restoring a run (--resume)
# --------------------------------------------------------------------------------------------

def restore_training_state(args, model, optimizer, loss_scaler):
    """Continue the run in args.resume with timm's resume_checkpoint: the weights, the optimizer and AMP
    scaler (unless --no-resume-opt); returns the epoch to start at. The file and its weights were checked
    already, so what can still fail here is an optimizer state that does not fit this run."""
    resume_opt = not args.no_resume_opt
    try:
        return resume_checkpoint(
            model, args.resume, optimizer=optimizer if resume_opt else None,
            loss_scaler=loss_scaler if resume_opt else None, log_info=utils.is_primary(args))
    except (ValueError, KeyError, RuntimeError) as e:
        raise TrainError(f'optimizer state in {args.resume} does not fit this run ({e}); '
                         f'check opt / layer_decay, or pass --no-resume-opt') from None


def restore_ema(args, model_ema, has_ema):
    """The EMA weights of args.resume (timm's load_checkpoint); without them the EMA keeps the model's."""
    if has_ema:
        load_checkpoint(model_ema.module, args.resume, use_ema=True)
    else:
        _logger.warning(f'{args.resume} has no EMA weights; EMA restarts from the model weights')


# --------------------------------------------------------------------------------------------
# Writing: the output folder and atomic checkpoints
# --------------------------------------------------------------------------------------------

class AtomicCheckpointSaver(utils.CheckpointSaver):
    """timm's CheckpointSaver writes `tmp.pth.tar` and os.replace()s it onto `last.pth.tar`; we also
    fsync the temp file before the rename, so neither a crash nor a power cut leaves a broken `last`.
    (_save is the saver's write step, between which and the rename there is no public hook.)"""

    def _save(self, save_path, epoch, metric=None):
        super()._save(save_path, epoch, metric)
        with open(save_path, 'rb') as f:
            os.fsync(f.fileno())


def output_dir_for(args):
    """output/train/<name>: the resumed run's own folder, else the experiment / config name (a new run into
    an existing name gets -1, -2, ...)."""
    if args.resume and not args.experiment:
        return os.path.dirname(os.path.abspath(args.resume))  # continue the run where it was
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


def open_outputs(args, model, optimizer, model_ema, loss_scaler, decreasing, start_epoch):
    """Rank 0's output folder: the checkpoint saver (its ranking carried on when a run resumes in place),
    summary.csv cut back to the epochs before start_epoch, and args.yaml. Returns (folder, saver, summary)."""
    output_dir = os.path.abspath(output_dir_for(args))
    saver = AtomicCheckpointSaver(
        model=model, optimizer=optimizer, args=args, model_ema=model_ema, amp_scaler=loss_scaler,
        checkpoint_dir=output_dir, recovery_dir=output_dir, decreasing=decreasing,
        max_history=args.checkpoint_hist)
    if args.resume and os.path.dirname(os.path.abspath(args.resume)) == output_dir:
        saver.load_state_dict_from_checkpoint(args.resume)  # keep ranking / pruning checkpoint-N files
    summary_csv = os.path.join(output_dir, 'summary.csv')
    utils.trim_summary(summary_csv, start_epoch)
    with open(os.path.join(output_dir, 'args.yaml'), 'w') as f:
        yaml.safe_dump(args_for_yaml(args), f, default_flow_style=False)
    return output_dir, saver, summary_csv


def weights_digest(model):
    """sha256 over the model's state dict (names, dtypes, raw bytes): equal digests = identical weights."""
    h = hashlib.sha256()
    for k, v in utils.unwrap_model(model).state_dict().items():
        t = v.detach().cpu().contiguous()
        h.update(k.encode())
        h.update(str(t.dtype).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b'')
    return h.hexdigest()
