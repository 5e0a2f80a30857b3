"""hgrn-train's two passes over the data: one training epoch and one evaluation.

As timm's train.py: gradient accumulation (no DDP sync between updates), AMP with timm's NativeScaler,
timm's dispatch_clip_grad, EMA and per-update lr steps; the loss and top-1 / top-5 are summed over ranks.
"""
import logging
import time
from contextlib import nullcontext

import torch

from timm import utils
from timm.models import model_parameters

from .config import TrainError

_logger = logging.getLogger('hgrn_train')


def _all_reduce_sum(values, args, device):
    # sums, not means: the ranks' last batches may differ in size
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if args.distributed:
        torch.distributed.all_reduce(t)
    return t.tolist()


def train_one_epoch(epoch, model, loader, optimizer, loss_fn, args, device, lr_scheduler, amp_autocast,
                    loss_scaler, model_ema, mixup_fn, num_updates):
    """One pass over the training loader. Returns ({'loss': mean over all ranks' images}, num_updates)."""
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
    """One pass over the eval loader: {'loss', 'top1', 'top5'} over all ranks' images."""
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
