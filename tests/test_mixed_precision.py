"""Mixed precision held by tests: a tiny HGRN-DeiT trains on CPU under float16 autocast with a
GradScaler, and under bfloat16 autocast, every loss finite and the loss falling.

CPU autocast supports float16 (torch >= 2.4) and ``torch.amp.GradScaler("cpu")`` scales the
loss there, so both recipes of a GPU run are exercised end to end on the CPU: the Linear
layers run in the low precision, the hgrn ops (``hgrn::hgru``, ``hgrn::norm_gate``) take
low-precision activations (computing in fp32 inside, returning the input dtype), and the
parameters and optimizer state stay fp32.

The data set is fixed and tiny (16 images, 4 classes) so the model overfits it within a
few dozen steps: the mean of the last 5 losses must be well below the mean of the first 5.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import hgrn_vision  # noqa: F401  registers the hgrn models in timm

STEPS = 30
CLASSES = 4
# 28 px, patch 7: 16 tokens; width 32, 2 blocks (a few hundredths of a second a step)
MODEL = dict(img_size=28, patch_size=7, embed_dim=32, depth=2, glu_hidden_dim=64,
             num_classes=CLASSES)


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: at these sizes the threads' synchronisation costs more than it
    saves, and several times more on a loaded machine (0.03 s vs 0.2 s a step measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _data():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(16, 3, 28, 28, generator=gen)
    y = torch.arange(16) % CLASSES
    return x, y


def _train(dtype: torch.dtype, scale: bool):
    """STEPS steps of AdamW under CPU autocast at ``dtype``; returns the losses, the number
    of steps the scaler skipped, the dtypes the first mixer's ops saw, and the model."""
    import timm
    torch.manual_seed(0)
    model = timm.create_model("hgrn_deit_tiny", **MODEL).train()
    x, y = _data()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    scaler = torch.amp.GradScaler("cpu", enabled=scale)
    seen = {}
    mixer = model.blocks[0].mixer

    def record(key, pick=lambda o: o):
        def hook(module, inputs, output):  # returns None: the output is left as it is
            seen.setdefault(key, pick(output).dtype)
        return hook

    # in_proj (a SplitLinear) returns (proj, gate): proj is the hgru op's input
    hooks = [mixer.in_proj.register_forward_hook(record("proj", lambda o: o[0])),
             mixer.norm.register_forward_hook(record("norm_gate")),
             mixer.register_forward_hook(record("mixer"))]
    losses, skipped = [], 0
    for _ in range(STEPS):
        with torch.autocast("cpu", dtype=dtype):
            logits = model(x)
            loss = F.cross_entropy(logits, y)
        seen.setdefault("logits", logits.dtype)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        before = scaler.get_scale() if scale else None
        scaler.step(opt)
        scaler.update()
        skipped += bool(scale and scaler.get_scale() < before)  # inf / nan grads: step skipped
        losses.append(loss.item())
    for h in hooks:
        h.remove()
    return losses, skipped, seen, model


def _check_learning(losses, dtype):
    assert all(math.isfinite(v) for v in losses), (dtype, losses)
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.7 * first, (dtype, losses)
    assert first > 0.5 * math.log(CLASSES)  # it started from (near) chance


def _check_precision(seen, model, dtype):
    # the low-precision path was taken: the projection into the hgru op, the op's norm-gate
    # output, the mixer's output and the logits are in ``dtype`` ...
    assert seen == {"proj": dtype, "norm_gate": dtype, "mixer": dtype, "logits": dtype}, seen
    # ... while the parameters (the hgrn ones included) stay fp32, and finite
    for name, p in model.named_parameters():
        assert p.dtype == torch.float32, name
        assert torch.isfinite(p).all(), name


def test_float16_autocast_with_grad_scaler_trains():
    losses, skipped, seen, model = _train(torch.float16, scale=True)
    _check_learning(losses, torch.float16)
    _check_precision(seen, model, torch.float16)
    assert skipped <= 2, f"the GradScaler skipped {skipped} of {STEPS} steps (inf / nan grads)"


def test_bfloat16_autocast_trains():
    losses, _, seen, model = _train(torch.bfloat16, scale=False)
    _check_learning(losses, torch.bfloat16)
    _check_precision(seen, model, torch.bfloat16)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_hgrn_parameters_get_finite_gradients_under_autocast(dtype):
    """One backward under autocast: every parameter (the lower bound and the phases of the
    hgru included) gets a finite, not all-zero gradient in fp32."""
    import timm
    torch.manual_seed(0)
    model = timm.create_model("hgrn_deit_tiny", **MODEL).train()
    x, y = _data()
    scaler = torch.amp.GradScaler("cpu", enabled=dtype is torch.float16)
    with torch.autocast("cpu", dtype=dtype):
        loss = F.cross_entropy(model(x), y)
    scaler.scale(loss).backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, name
            assert p.grad.dtype == torch.float32, name
            assert torch.isfinite(p.grad).all(), name
    hgrn = {n: p for n, p in model.named_parameters() if "theta" in n or "lower_bound" in n}
    assert hgrn and all(p.grad.abs().sum() > 0 for p in hgrn.values()), list(hgrn)
