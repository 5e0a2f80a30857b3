"""hgrn-train's run, step by step: set up the device, check the inputs, build the model, data, optimizer,
loss and schedule from the config (timm's factories), fit epoch by epoch (evaluate, summary row,
checkpoint), report. run(args) reads as the list of these steps.
"""
import difflib
import importlib
import json
import logging
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
import torch.nn as nn

from timm import utils
from timm.data import resolve_data_config
from timm.loss import BinaryCrossEntropy, LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.models import create_model, list_models
from timm.optim import create_optimizer_v2, optimizer_kwargs
from timm.scheduler import create_scheduler_v2, scheduler_kwargs

from .checkpoint import (check_weights_fit, load_weights, open_outputs, read_resume_checkpoint, read_weights,
                         restore_ema, restore_training_state, weights_digest)
from .config import TrainError
from .data import (build_dataset, build_mixup, create_eval_loader, create_train_loader,
                   install_augment_guards, mixup_active)
from .epoch import train_one_epoch, validate

_logger = logging.getLogger('hgrn_train')


def run(args):
    """Train (or, with --validate-only, evaluate). Returns a dict of results (rank 0 has the paths)."""
    t_start = time.time()
    device = set_up(args)

    # --- everything that can fail on bad input is checked before any training step ---
    resume = (read_resume_checkpoint(args.resume, args.model, None if args.no_resume_opt else args.opt)
              if args.resume else None)
    init_path = args.initial_checkpoint or (args.resume if args.validate_only else '')
    init_weights = read_weights(init_path, use_ema=args.validate_only and args.use_ema) if init_path else None
    model = build_model(args, device, init_weights, init_path, resume)
    resume_has_ema = resume is not None and 'state_dict_ema' in resume
    del resume, init_weights  # checked and loaded (the resume file's tensors are only memory-mapped)

    data_config = resolve_data_config(vars(args), model=model, verbose=utils.is_primary(args))
    dataset_eval = build_dataset(args, args.val_split, is_training=False)
    dataset_train = None if args.validate_only else build_dataset(args, args.train_split, is_training=True)
    amp_autocast, loss_scaler = set_up_amp(args, device)
    loader_eval = create_eval_loader(args, dataset_eval, data_config, device)
    eval_loss_fn = nn.CrossEntropyLoss().to(device)
    if args.validate_only:
        return evaluate_only(args, model, loader_eval, eval_loss_fn, device, amp_autocast, init_path)

    # --- optimizer, EMA and the resumed state, then DDP / torch.compile ---
    optimizer = build_optimizer(args, model)
    start_epoch = restore_training_state(args, model, optimizer, loss_scaler) if args.resume else 0
    model_ema = None
    if args.model_ema:  # after the resume: without EMA weights in the checkpoint it starts from the model's
        model_ema = utils.ModelEmaV3(model, decay=args.model_ema_decay, use_warmup=args.model_ema_warmup,
                                     device='cpu' if args.model_ema_force_cpu else None)
        if args.resume:
            restore_ema(args, model_ema, resume_has_ema)
    if args.start_epoch is not None:
        start_epoch = args.start_epoch
    model = wrap_model(args, model, device)

    # --- training data, loss, schedule ---
    collate_fn, mixup_fn = build_mixup(args)
    loader_train = create_train_loader(args, dataset_train, data_config, device, collate_fn)
    if len(loader_train) == 0:
        raise TrainError(f'batch size {args.batch_size} is larger than the training set '
                         f'({len(dataset_train)} images per process)')
    train_loss_fn = build_train_loss(args).to(device)
    updates_per_epoch = (len(loader_train) + args.grad_accum_steps - 1) // args.grad_accum_steps
    lr_scheduler, num_epochs = build_scheduler(args, optimizer, updates_per_epoch, start_epoch)

    # --- outputs (rank 0 writes), the epochs, the report ---
    output_dir, saver, summary_csv = None, None, None
    if utils.is_primary(args):
        output_dir, saver, summary_csv = open_outputs(
            args, model, optimizer, model_ema, loss_scaler, 'loss' in args.eval_metric, start_epoch)
        _logger.info(f'Output: {output_dir}  |  {args.model}, {sum(p.numel() for p in model.parameters()):,} '
                     f'params  |  {len(dataset_train)} train / {len(dataset_eval)} val images  |  '
                     f'epochs {start_epoch}..{num_epochs - 1}, {updates_per_epoch} steps/epoch')
    parts = Parts(device, model, optimizer, loss_scaler, amp_autocast, model_ema, loader_train, loader_eval,
                  train_loss_fn, eval_loss_fn, mixup_fn, lr_scheduler, updates_per_epoch)
    train_metrics, eval_metrics, best = fit(args, parts, start_epoch, num_epochs, saver, summary_csv)
    result = {'eval': eval_metrics, 'train': train_metrics, 'output_dir': output_dir,
              'wall_s': time.time() - t_start}
    report(args, model, result, num_epochs - start_epoch, best, summary_csv)
    finish(args)
    return result


# --------------------------------------------------------------------------------------------
# Set-up: modules, device (and torchrun), augmentation guards
# --------------------------------------------------------------------------------------------

def set_up(args):
    """Import the model modules, pick the device (DDP under torchrun), guard timm's augmentations."""
    import_device_modules(args)
    device = set_up_device(args)
    install_augment_guards(args)
    args.prefetcher = not args.no_prefetcher
    args.grad_accum_steps = max(1, args.grad_accum_steps)
    if args.distributed and utils.is_primary(args):
        _logger.info(f'Distributed: {args.world_size} processes, backend '
                     f'{torch.distributed.get_backend()}, device {args.device}')
    return device


def import_device_modules(args):
    """hgrn_vision (registers the hgrn_* models) and the config's device_modules."""
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


def set_up_device(args):
    """timm's init_distributed_device: one process, or one per device under torchrun (sets args.rank, ...)."""
    if args.device is None:
        args.device = 'cuda' if torch.cuda.is_available() else 'cpu'
    if args.device.startswith('cuda') and not torch.cuda.is_available():
        raise TrainError(f'device {args.device} requested but CUDA is not available (use --device cpu)')
    # torchrun: NCCL on CUDA, gloo on CPU (timm picks the backend from the device type)
    return utils.init_distributed_device(args)


def set_up_amp(args, device):
    """(autocast context, loss scaler): bfloat16 autocast on the CPU or with --amp-dtype bfloat16, else float16
    with timm's NativeScaler; no autocast without --amp."""
    if not args.amp:
        return nullcontext, None
    dtype = torch.bfloat16 if (args.amp_dtype == 'bfloat16' or device.type == 'cpu') else torch.float16
    loss_scaler = utils.NativeScaler(device=device.type) if dtype == torch.float16 else None
    if utils.is_primary(args):
        _logger.info(f'AMP: autocast {dtype}' + (' with loss scaling' if loss_scaler else ''))
    return (lambda: torch.autocast(device_type=device.type, dtype=dtype)), loss_scaler


# --------------------------------------------------------------------------------------------
# The model, optimizer, loss and schedule (timm's factories)
# --------------------------------------------------------------------------------------------

def create_model_from_args(args):
    """timm's create_model with the config's model arguments; an unknown model or argument is a clear error."""
    in_chans = args.in_chans or (args.input_size[0] if args.input_size else 3)
    try:
        model = create_model(
            args.model, pretrained=args.pretrained, in_chans=in_chans, num_classes=args.num_classes,
            drop_rate=args.drop, drop_path_rate=args.drop_path, drop_block_rate=args.drop_block,
            global_pool=args.gp, **(args.model_kwargs or {}))
    except RuntimeError as e:
        if 'Unknown model' in str(e):
            close = difflib.get_close_matches(args.model, list_models(), n=3)
            hint = f' (did you mean {", ".join(close)}?)' if close else ''
            raise TrainError(f'unknown model "{args.model}"{hint}')
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


def build_model(args, device, init_weights, init_path, resume):
    """The model, seeded, with the initial weights loaded and the resume weights checked (a mismatch stops
    here; resume_checkpoint loads them later), on the device."""
    utils.random_seed(args.seed, args.rank)
    model = create_model_from_args(args)
    if init_weights is not None:
        load_weights(model, init_weights, init_path)
    if resume is not None and not args.validate_only:
        check_weights_fit(model, resume['state_dict'], args.resume)
    model.to(device=device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    if args.grad_checkpointing:
        model.set_grad_checkpointing(enable=True)
    return model


def build_optimizer(args, model):
    """timm's create_optimizer_v2 (no_weight_decay, layer decay); without --lr, the lr follows the global
    batch as in timm's train.py: lr_base x (batch / lr_base_size), linear or (adaptive optimizers) sqrt."""
    if args.lr is None:
        global_batch = args.batch_size * args.world_size * args.grad_accum_steps
        ratio = global_batch / args.lr_base_size
        scale = args.lr_base_scale or ('sqrt' if any(o in args.opt.lower() for o in ('ada', 'lamb')) else 'linear')
        args.lr = args.lr_base * (ratio ** 0.5 if scale == 'sqrt' else ratio)
        if utils.is_primary(args):
            _logger.info(f'lr {args.lr:.3g} = lr_base {args.lr_base} x ({global_batch}/{args.lr_base_size})'
                         f'{"^0.5" if scale == "sqrt" else ""} ({scale} scaling, global batch {global_batch})')
    return create_optimizer_v2(model, **optimizer_kwargs(cfg=args), **(args.opt_kwargs or {}))


def wrap_model(args, model, device):
    """DistributedDataParallel under torchrun, then torch.compile if asked for."""
    if args.distributed:
        ddp_kw = dict(device_ids=[device]) if device.type == 'cuda' else {}
        model = nn.parallel.DistributedDataParallel(model, broadcast_buffers=not args.no_ddp_bb, **ddp_kw)
    if args.torchcompile:
        model = torch.compile(model, backend=args.torchcompile)
    return model


def build_train_loss(args):
    """As timm's train.py: soft-target CE (or BCE) with mixup / cutmix, else label smoothing CE (or BCE),
    else plain CE."""
    bce = dict(target_threshold=args.bce_target_thresh, sum_classes=args.bce_sum, pos_weight=args.bce_pos_weight)
    if mixup_active(args):
        return BinaryCrossEntropy(**bce) if args.bce_loss else SoftTargetCrossEntropy()
    if args.smoothing:
        return BinaryCrossEntropy(smoothing=args.smoothing, **bce) if args.bce_loss \
            else LabelSmoothingCrossEntropy(smoothing=args.smoothing)
    return nn.CrossEntropyLoss()


def build_scheduler(args, optimizer, updates_per_epoch, start_epoch):
    """timm's create_scheduler_v2, moved on to start_epoch for a resumed run. Returns (scheduler, epochs)."""
    lr_scheduler, num_epochs = create_scheduler_v2(
        optimizer, **scheduler_kwargs(args, decreasing_metric='loss' in args.eval_metric),
        updates_per_epoch=updates_per_epoch)
    if lr_scheduler is not None and start_epoch > 0:
        if args.sched_on_updates:
            lr_scheduler.step_update(start_epoch * updates_per_epoch)
        else:
            lr_scheduler.step(start_epoch)
    if start_epoch >= num_epochs:
        raise TrainError(f'checkpoint {args.resume} already finished epoch {start_epoch - 1} of {num_epochs}; '
                         f'raise --epochs to train further')
    return lr_scheduler, num_epochs


# --------------------------------------------------------------------------------------------
# Fitting, evaluating, reporting
# --------------------------------------------------------------------------------------------

@dataclass
class Parts:
    """What the epochs work with, built once by run()."""
    device: torch.device
    model: nn.Module
    optimizer: torch.optim.Optimizer
    loss_scaler: Optional[Any]
    amp_autocast: Callable
    model_ema: Optional[Any]
    loader_train: Any
    loader_eval: Any
    train_loss_fn: nn.Module
    eval_loss_fn: nn.Module
    mixup_fn: Optional[Callable]
    lr_scheduler: Optional[Any]
    updates_per_epoch: int


def fit(args, p, start_epoch, num_epochs, saver, summary_csv):
    """The epochs: train; evaluate every val_interval epochs and at the end (the EMA too); rank 0 appends the
    summary row and saves the checkpoint; the lr steps per epoch unless it steps per update.
    Returns (last train metrics, last eval metrics, (best metric, its epoch))."""
    num_updates = start_epoch * p.updates_per_epoch
    train_metrics, eval_metrics, best = None, None, (None, None)
    for epoch in range(start_epoch, num_epochs):
        start_epoch_state(args, p, epoch)
        train_metrics, num_updates = train_one_epoch(
            epoch, p.model, p.loader_train, p.optimizer, p.train_loss_fn, args, p.device, p.lr_scheduler,
            p.amp_autocast, p.loss_scaler, p.model_ema, p.mixup_fn, num_updates)
        if args.distributed and args.dist_bn in ('broadcast', 'reduce'):
            utils.distribute_bn(p.model, args.world_size, args.dist_bn == 'reduce')

        eval_metrics, metric = None, None
        if (epoch + 1) % max(args.val_interval, 1) == 0 or epoch == num_epochs - 1:
            eval_metrics = validate(p.model, p.loader_eval, p.eval_loss_fn, args, p.device, p.amp_autocast)
            if p.model_ema is not None and not args.model_ema_force_cpu:
                ema_metrics = validate(p.model_ema, p.loader_eval, p.eval_loss_fn, args, p.device, p.amp_autocast,
                                       log_suffix=' (EMA)')
                eval_metrics.update({f'ema_{k}': v for k, v in ema_metrics.items()})
            metric = eval_metrics.get(args.eval_metric)

        if utils.is_primary(args):
            lrs = [g['lr'] for g in p.optimizer.param_groups]
            utils.update_summary(epoch, train_metrics, eval_metrics or {}, filename=summary_csv,
                                 lr=sum(lrs) / len(lrs))
            best = saver.save_checkpoint(epoch, metric=metric)
        if p.lr_scheduler is not None and not args.sched_on_updates:
            p.lr_scheduler.step(epoch + 1, metric)
    return train_metrics, eval_metrics, best


def start_epoch_state(args, p, epoch):
    """Re-seed at every epoch start: an epoch's randomness (data order, augmentation, mixup, drop path)
    depends only on (seed, epoch, rank), so a run resumed at an epoch boundary continues exactly. Also the
    sampler's epoch, and mixup switched off from mixup_off_epoch on."""
    utils.random_seed(args.seed + 7919 * epoch, args.rank)
    loader = p.loader_train
    if hasattr(loader.sampler, 'set_epoch'):
        loader.sampler.set_epoch(epoch)
    elif args.distributed and hasattr(getattr(loader, 'loader', None), 'sampler'):
        loader.loader.sampler.set_epoch(epoch)  # timm's PrefetchLoader wraps the DataLoader
    if mixup_active(args) and args.mixup_off_epoch and epoch >= args.mixup_off_epoch:
        if args.prefetcher and loader.mixup_enabled:
            loader.mixup_enabled = False
        elif p.mixup_fn is not None:
            p.mixup_fn.mixup_enabled = False


def evaluate_only(args, model, loader_eval, loss_fn, device, amp_autocast, init_path):
    """--validate-only: evaluate, print one JSON line (rank 0), stop."""
    metrics = validate(model, loader_eval, loss_fn, args, device, amp_autocast,
                       log_suffix=' (EMA)' if args.use_ema else '')
    if utils.is_primary(args):
        print(json.dumps({'checkpoint': init_path or '(random init)', 'model': args.model, **{
            k: round(v, 4) for k, v in metrics.items()}}), flush=True)
    finish(args)
    return {'eval': metrics}


def report(args, model, result, epochs_run, best, summary_csv):
    """Every rank's weights digest (equal = ranks in sync) into result and weights_sha256.json; rank 0 prints
    the final top-1 and the paths of the checkpoints and the summary."""
    digest = weights_digest(model)
    if args.distributed:
        digests = [None] * args.world_size
        torch.distributed.all_gather_object(digests, digest)
    else:
        digests = [digest]
    result['weights_sha256'] = digests
    if not utils.is_primary(args):
        return
    output_dir = result['output_dir']
    in_sync = len(set(digests)) == 1
    with open(os.path.join(output_dir, 'weights_sha256.json'), 'w') as f:
        json.dump({'ranks': digests, 'in_sync': in_sync}, f, indent=1)
    if not in_sync:
        _logger.error(f'ranks ended with different weights: {digests}')
    last = os.path.join(output_dir, 'last.pth.tar')
    best_path = os.path.join(output_dir, 'model_best.pth.tar')
    result.update(checkpoint=last, summary=summary_csv)
    eval_metrics = result['eval']
    top1 = eval_metrics['top1'] if eval_metrics else float('nan')
    lines = [f'Done: {epochs_run} epochs in {result["wall_s"]:.1f} s; final val top-1 '
             f'{top1:.2f}%' + (f' (best {best[0]:.2f}% at epoch {best[1]})' if best and best[0] is not None
                               else ''),
             f'  checkpoint: {last}']
    if os.path.exists(best_path):
        lines.append(f'  best:       {best_path}')
    lines.append(f'  summary:    {summary_csv}')
    print('\n'.join(lines), flush=True)


def finish(args):
    """Under torchrun: wait for every rank, then close the process group."""
    if getattr(args, 'distributed', False) and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
