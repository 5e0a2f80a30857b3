"""The HGRU's recurrent core as one op: ``hgrn::hgru`` (and ``hgrn::hgru_backward``).

From ``in_proj``'s core output ``proj = [c (W) | mu (d)]`` (B, N, W + d), in the activation
dtype and any row stride, to the state ``h`` (B, N, W) in the same dtype (docs/spec.md §1, §7):

    lam = gamma + (1 - gamma) sigmoid(mu),   x = (1 - lam) SiLU(c)
    h_t = lam_t e^{i theta} h_{t -/+ 1} + x_t          forward, reverse, or both summed

W = 2d for the complex HGRU (``[Re | Im]``), d for the real one (no phases). The gates and
the state live in fp32 inside the backend; the op saves only its inputs (``proj`` in the
activation dtype, the lower bound, the phases, the initial state): backward recomputes.
``torch.compile`` sees one op with a fake implementation, fvcore one named node.

The op's ``backend`` is a backend's name or ``"auto"``, resolved by the op itself from the
tensors' device at run time (``resolve_backend``: ``HGRN_BACKEND``, else Triton for CUDA
when importable, else torch): TorchScript calls ``torch.ops.hgrn.hgru(..., "auto")``
directly, without the Python entry point. The reference loop has no backward formulas of
its own (its entry point is differentiated by autograd, outside the op): inside the op,
``"reference"`` runs the loop forward and the ``torch`` backend's backward.
"""
from __future__ import annotations

from typing import List, Optional, Tuple, Union

import torch
from torch import Tensor

from .backends import get_backend, op_backend, resolve_choice, run_backend
from .backends.base import DIRECTIONS
from .precision import compute_dtype
from .checks import check_float, describe, values_checked
from .ops import fresh, out_like


# ------------------------------------------------------------------------------------ ops
def _shapes(proj: Tensor, complex_valued: bool) -> Tuple[int, int, int, int]:
    B, N, P = proj.shape
    d = P // (3 if complex_valued else 2)
    return B, N, P - d, d


def _state(proj: Tensor, W: int) -> Tensor:
    return proj.new_empty(proj.shape[0], W, dtype=compute_dtype(proj.dtype))


def _for_backward(backend):
    # the reference loop has no backward formulas (see the module docstring)
    return get_backend("torch") if backend.name == "reference" else backend


@torch.library.custom_op("hgrn::hgru", mutates_args=())
def hgru_op(proj: Tensor, lower_bound: Optional[Tensor], theta_f: Optional[Tensor],
            theta_r: Optional[Tensor], h0: Optional[Tensor], direction: str, backend: str
            ) -> Tuple[Tensor, Tensor]:
    B, N, W, d = _shapes(proj, theta_f is not None or theta_r is not None)
    h, hN = run_backend(backend, proj.device, lambda impl: impl.hgru_forward(
        proj, lower_bound, theta_f, theta_r, h0, direction))
    acc = compute_dtype(proj.dtype)  # hN as out_like(hN, _state(proj, W)), no state allocated
    hN = proj.new_zeros(B, W, dtype=acc) if hN is None else fresh(hN, acc)
    return out_like(h, proj), hN


@hgru_op.register_fake
def _(proj, lower_bound, theta_f, theta_r, h0, direction, backend):
    B, N, W, d = _shapes(proj, theta_f is not None or theta_r is not None)
    return proj.new_empty(B, N, W), _state(proj, W)


@torch.library.custom_op("hgrn::hgru_backward", mutates_args=())
def hgru_backward_op(dh: Tensor, dhN: Optional[Tensor], proj: Tensor,
                     lower_bound: Optional[Tensor], theta_f: Optional[Tensor],
                     theta_r: Optional[Tensor], h0: Optional[Tensor], direction: str,
                     backend: str) -> List[Tensor]:
    grads = run_backend(backend, proj.device, lambda impl: _for_backward(
        impl).hgru_backward(dh, dhN, proj, lower_bound, theta_f, theta_r, h0, direction))
    return _grads_out(grads, proj, (lower_bound, theta_f, theta_r, h0))


def _grads_out(grads, proj: Tensor, others) -> List[Tensor]:
    """A backward op's outputs: each gradient made fresh in its input's dtype; zeros where a
    backend gave None; an empty placeholder for an absent input (as ``_fake_grads``
    describes them, without allocating the described tensors: host time per call)."""
    out = [torch.zeros(proj.shape, dtype=proj.dtype, device=proj.device)
           if grads[0] is None else fresh(grads[0], proj.dtype)]
    for g, t in zip(grads[1:], others):
        if g is not None:
            out.append(fresh(g, (t if t is not None else proj).dtype))
        else:
            out.append(proj.new_zeros(0) if t is None else torch.zeros_like(t))
    return out


def _fake_grads(proj, lower_bound, theta_f, theta_r, h0) -> List[Tensor]:
    """Gradients in the inputs' dtypes; an absent input gets an empty placeholder."""
    none = proj.new_empty(0)
    return [torch.empty(proj.shape, dtype=proj.dtype, device=proj.device)] + [
        torch.empty_like(t) if t is not None else none
        for t in (lower_bound, theta_f, theta_r, h0)]


@hgru_backward_op.register_fake
def _(dh, dhN, proj, lower_bound, theta_f, theta_r, h0, direction, backend):
    return _fake_grads(proj, lower_bound, theta_f, theta_r, h0)


def _setup(ctx, inputs, output):
    proj, lower_bound, theta_f, theta_r, h0, ctx.direction, backend = inputs
    ctx.backend = op_backend(backend, proj.device)  # backward runs what forward resolved
    ctx.save_for_backward(proj, lower_bound, theta_f, theta_r, h0)


def _backward(ctx, dh, dhN):
    proj, lower_bound, theta_f, theta_r, h0 = ctx.saved_tensors
    if dh is None:
        dh = proj.new_zeros(proj.shape[0], proj.shape[1], _shapes(
            proj, theta_f is not None or theta_r is not None)[2])
    if ctx.direction == "both":
        dhN = None  # the op's hN is a placeholder there
    grads = hgru_backward_op(dh, dhN, proj, lower_bound, theta_f, theta_r, h0,
                             ctx.direction, ctx.backend)
    present = (proj, lower_bound, theta_f, theta_r, h0)
    return (*[g if t is not None else None for g, t in zip(grads, present)], None, None)


hgru_op.register_autograd(_backward, setup_context=_setup)


# ------------------------------------------------------------------------------ public API
State = Union[Tensor, Tuple[Tensor, Tensor]]


def _check_inputs(proj, lower_bound, theta_forward, theta_reverse, direction) -> int:
    """Clear errors for bad input; returns the width d."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    check_float("proj", proj)
    if proj.dim() != 3:
        raise ValueError(f"proj must be a 3-D tensor (B, N, W + d), batch first; got "
                         f"{describe(proj)}")
    if proj.shape[1] == 0:
        raise ValueError(f"proj has an empty sequence (N = 0): {describe(proj)}")
    if proj.stride(-1) != 1 and proj.shape[-1] > 1:
        raise ValueError(f"proj must have unit stride over channels (rows may be strided); "
                         f"got strides {proj.stride()}")
    complex_ = theta_forward is not None or theta_reverse is not None
    per_token = 3 if complex_ else 2
    if proj.shape[-1] % per_token:
        layout = "[Re c | Im c | mu] (3d)" if complex_ else "[c | mu] (2d)"
        raise ValueError(f"proj must hold {layout} channels per token; got width "
                         f"{proj.shape[-1]}, not a multiple of {per_token}")
    d = proj.shape[-1] // per_token
    needed = {"forward": ("theta_forward",), "reverse": ("theta_reverse",),
              "both": ("theta_forward", "theta_reverse")}[direction]
    for name, t in (("theta_forward", theta_forward), ("theta_reverse", theta_reverse),
                    ("lower_bound", lower_bound)):
        if t is None:
            if complex_ and name in needed:
                raise ValueError(f"{name} is needed for direction={direction!r} of a complex HGRU")
            continue
        check_float(name, t)
        if tuple(t.shape) != (d,):
            raise ValueError(f"{name} must have shape ({d},) (one value per channel), got "
                             f"{tuple(t.shape)}")
        if t.device != proj.device:
            raise ValueError(f"{name} is on {t.device} but proj is on {proj.device}")
    if lower_bound is not None and values_checked(lower_bound):
        lo, hi = torch.aminmax(lower_bound.detach())
        if not (lo >= 0 and hi < 1):
            raise ValueError(f"lower_bound must lie in [0, 1); got values in "
                             f"[{lo.item():.4g}, {hi.item():.4g}]")
    return d


def _initial_state(state: Optional[State], proj: Tensor, W: int, direction: str):
    if state is None:
        return None
    if direction == "both":
        raise ValueError("initial_state needs one direction ('forward' or 'reverse'); a "
                         "bidirectional scan has no running state")
    if isinstance(state, (tuple, list)):
        if len(state) != 2 or W % 2:
            raise ValueError("initial_state must be a (B, W) tensor, or a pair (real, imag) of "
                             "(B, d) tensors for a complex HGRU")
        state = torch.cat(list(state), -1)
    if not isinstance(state, Tensor) or tuple(state.shape) != (proj.shape[0], W):
        shape = tuple(state.shape) if isinstance(state, Tensor) else type(state).__name__
        raise ValueError(f"initial_state must have shape ({proj.shape[0]}, {W}) (batch, state "
                         f"width), got {shape}")
    if state.device != proj.device:
        raise ValueError(f"initial_state is on {state.device} but proj is on {proj.device}")
    return state


def hgru(proj: Tensor, lower_bound: Optional[Tensor] = None,
         theta_forward: Optional[Tensor] = None, theta_reverse: Optional[Tensor] = None, *,
         direction: str = "both", initial_state: Optional[State] = None,
         return_final_state: bool = False, backend: Optional[str] = "auto"
         ) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """The HGRU recurrent core, from the projection to the state (one ``hgrn::hgru`` op).

    ``proj``: (B, N, W + d) = ``[c (W) | mu (d)]``, W = 2d with phases (complex HGRU) or d
    without (real HGRU); any row stride, unit channel stride; bf16/fp16/fp32/fp64.
    ``lower_bound``: (d,) or None; ``theta_forward`` / ``theta_reverse``: (d,) phases.
    ``direction``: 'both' (the bidirectional vision mixer: both scans summed), 'forward'
    (causal) or 'reverse'. ``initial_state``: (B, W) or (real, imag) for one direction.
    Returns ``h`` (B, N, W) in ``proj``'s dtype, and with ``return_final_state`` the state
    after the last step (B, W) in fp32 (fp64 for fp64).
    """
    d = _check_inputs(proj, lower_bound, theta_forward, theta_reverse, direction)
    h0 = _initial_state(initial_state, proj, proj.shape[-1] - d, direction)
    impl, automatic = resolve_choice(backend, proj.device)
    tf = theta_forward if direction != "reverse" else None
    tr = theta_reverse if direction != "forward" else None
    if impl.autograd_loop:  # the reference loop, differentiated by autograd (no op)
        h, hN = impl.hgru_forward(proj, lower_bound, tf, tr, h0, direction)
        h = h.to(proj.dtype)
        hN = _state(proj, h.shape[-1]).zero_() if hN is None else hN.to(
            compute_dtype(proj.dtype))
    else:  # the op; under an automatic choice it resolves "auto" itself, with its fallback
        name = "auto" if automatic else impl.name
        h, hN = hgru_op(proj, lower_bound, tf, tr, h0, direction, name)
    return (h, hN) if return_final_state else h
