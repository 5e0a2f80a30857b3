"""The HGRU's output path as one op: ``y = LayerNorm_W(h; weight, bias, eps) * SiLU(gate)``.

    hgrn::norm_gate           (h, gate, weight?, bias?, eps, backend) -> (y, mean, rstd)
    hgrn::norm_gate_backward  (dy, h, gate, weight?, bias?, mean, rstd, eps, backend)
                              -> [dh, dgate, dweight, dbias]

``h`` and ``gate`` are ``(B, N, W)`` in the activation dtype (``gate`` typically a column
slice of ``in_proj``'s output: any batch/row stride); ``weight`` and ``bias`` are the
norm's ``(W,)`` parameters in any float dtype (fp32 under autocast, or the model's dtype)
or None. Statistics are fp32 (fp64 for fp64 ``h``); ``y`` is in ``h``'s dtype. The op
saves ``h, gate, weight, bias`` and the ``(B, N)`` statistics ``mean, rstd`` for backward,
nothing else. Each backend implements ``norm_gate_forward`` / ``norm_gate_backward``; the
plain torch composition below (``norm_gate_reference_*``) is what the base backend class
uses, the ``triton`` backend runs one fused kernel each way
(``hgrn_core.kernels.triton_norm_gate``), the ``numba`` backend one compiled loop each way
(``hgrn_core.kernels.numba_norm_gate``).

Call it through :func:`norm_gate`, which validates its inputs; the ops do not. The ops'
``backend`` may be ``"auto"``: they resolve it from ``h``'s device at run time
(``resolve_backend``), so that TorchScript can call ``torch.ops.hgrn.norm_gate`` directly.
"""
from __future__ import annotations

import numbers
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from .backends import op_backend, resolve_choice, run_backend
from .checks import check_float
# the plain torch composition (what the base backend runs), re-exported here
from .norm_gate_torch import norm_gate_reference_backward, norm_gate_reference_forward  # noqa: F401
from .ops import fresh
from .precision import compute_dtype


# ------------------------------------------------------------------------------ the ops
def _empty(shape, like: Tensor, dtype: torch.dtype) -> Tensor:
    return torch.empty(tuple(shape), dtype=dtype, device=like.device)


def _param_grad(g: Optional[Tensor], param: Optional[Tensor], like: Tensor) -> Tensor:
    """A parameter's gradient in its dtype; an empty placeholder for a None parameter
    (custom ops return tensors, not None)."""
    if param is None:
        return _empty((0,), like, like.dtype)
    if g is None:
        return torch.zeros_like(param, memory_format=torch.contiguous_format)
    return fresh(g, param.dtype)


@torch.library.custom_op("hgrn::norm_gate", mutates_args=())
def norm_gate_op(h: Tensor, gate: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                 eps: float, backend: str) -> Tuple[Tensor, Tensor, Tensor]:
    y, mean, rstd = run_backend(backend, h.device, lambda impl: impl.norm_gate_forward(
        h, gate, weight, bias, eps))
    acc = compute_dtype(h.dtype)
    stats = h.shape[:-1]
    return fresh(y, h.dtype), _stat(mean, stats, acc), _stat(rstd, stats, acc)


def _stat(t: Tensor, stats: torch.Size, acc: torch.dtype) -> Tensor:
    """A backend's statistic as a (B, N) output; reshaped only where its shape differs (a
    reshape to the same shape is a view, which ``fresh`` would copy: a copy kernel per call)."""
    return fresh(t if t.shape == stats else t.reshape(stats), acc)


@norm_gate_op.register_fake
def _(h, gate, weight, bias, eps, backend):
    acc = compute_dtype(h.dtype)
    return (_empty(h.shape, h, h.dtype), _empty(h.shape[:-1], h, acc),
            _empty(h.shape[:-1], h, acc))


@torch.library.custom_op("hgrn::norm_gate_backward", mutates_args=())
def norm_gate_backward_op(dy: Tensor, h: Tensor, gate: Tensor, weight: Optional[Tensor],
                          bias: Optional[Tensor], mean: Tensor, rstd: Tensor, eps: float,
                          backend: str) -> List[Tensor]:
    dh, dgate, dweight, dbias = run_backend(backend, h.device, lambda impl: impl.norm_gate_backward(
        dy, h, gate, weight, bias, mean, rstd, eps))
    return [fresh(dh, h.dtype), fresh(dgate, gate.dtype),
            _param_grad(dweight, weight, h), _param_grad(dbias, bias, h)]


@norm_gate_backward_op.register_fake
def _(dy, h, gate, weight, bias, mean, rstd, eps, backend):
    def param(p):
        return _empty((0,), h, h.dtype) if p is None else _empty(p.shape, p, p.dtype)
    return [_empty(h.shape, h, h.dtype), _empty(gate.shape, gate, gate.dtype),
            param(weight), param(bias)]


def _setup(ctx, inputs, output):
    h, gate, weight, bias, eps, backend = inputs
    _, mean, rstd = output
    ctx.save_for_backward(h, gate, weight, bias, mean, rstd)
    ctx.eps, ctx.backend = eps, op_backend(backend, h.device)  # backward runs the same
    ctx.mark_non_differentiable(mean, rstd)


def _backward(ctx, dy, _dmean, _drstd):
    h, gate, weight, bias, mean, rstd = ctx.saved_tensors
    if dy is None:
        dy = torch.zeros_like(h)
    dh, dgate, dweight, dbias = norm_gate_backward_op(
        dy, h, gate, weight, bias, mean, rstd, ctx.eps, ctx.backend)
    return (dh, dgate, dweight if weight is not None else None,
            dbias if bias is not None else None, None, None)


norm_gate_op.register_autograd(_backward, setup_context=_setup)


# -------------------------------------------------------------------------- public entry
def _check_param(name: str, p, h: Tensor) -> None:
    if p is None:
        return
    check_float(name, p)
    W = h.shape[-1]
    if tuple(p.shape) != (W,):
        raise ValueError(f"{name} must have shape ({W},) (one value per channel of h), "
                         f"got {tuple(p.shape)}")
    if p.device != h.device:
        raise ValueError(f"{name} is on {p.device} but h is on {h.device}")


def norm_gate(h: Tensor, gate: Tensor, weight: Optional[Tensor] = None,
              bias: Optional[Tensor] = None, eps: float = 1e-5, *,
              backend: Optional[str] = "auto") -> Tensor:
    """``LayerNorm(h) * SiLU(gate)`` over the last dimension, fused (the HGRU's output path).

    h       (B, N, W) float32 / float64 / bfloat16 / float16, any strides
    gate    (B, N, W), h's dtype and device; any batch/row strides (e.g. a column slice of a
            wider projection, read in place). A tensor whose channel stride is not 1 (h or
            gate) is made contiguous first (a copy).
    weight, bias  (W,) any float dtype (fp32 under autocast, or the model's dtype), or None
    eps     the LayerNorm epsilon (>= 0)
    backend "auto" / None (see ``hgrn_core.backends.resolve_backend``) or a backend's name

    Returns y (B, N, W) contiguous in h's dtype; mean and variance are computed in fp32
    (fp64 for fp64 h). Every input that requires grad gets its gradient (dweight/dbias in
    the parameters' dtypes).
    """
    check_float("h", h)
    check_float("gate", gate)
    if h.dim() != 3:
        raise ValueError(f"h must be a 3-D tensor (B, N, W), batch first; got {h.dim()}-D "
                         f"with shape {tuple(h.shape)}")
    if tuple(gate.shape) != tuple(h.shape):
        raise ValueError(f"gate must have the shape of h {tuple(h.shape)}, "
                         f"got {tuple(gate.shape)}")
    if h.shape[-1] == 0:
        raise ValueError(f"h has no channels (W = 0): shape {tuple(h.shape)}")
    if gate.device != h.device:
        raise ValueError(f"gate is on {gate.device} but h is on {h.device}")
    if gate.dtype != h.dtype:
        raise TypeError(f"gate has dtype {gate.dtype} but h has {h.dtype}; they must match")
    _check_param("weight", weight, h)
    _check_param("bias", bias, h)
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise TypeError(f"eps must be a real number, got {type(eps).__name__}")
    eps = float(eps)
    if not eps >= 0.0 or eps == float("inf"):
        raise ValueError(f"eps must be a finite number >= 0, got {eps}")
    if h.dim() and h.shape[-1] > 1 and h.stride(-1) != 1:
        h = h.contiguous()
    if gate.shape[-1] > 1 and gate.stride(-1) != 1:
        gate = gate.contiguous()
    impl, auto = resolve_choice(backend, h.device)
    # under an automatic choice the op resolves "auto" itself, with its fallback
    y, _, _ = norm_gate_op(h, gate, weight, bias, eps, "auto" if auto else impl.name)
    return y


__all__ = ["norm_gate", "norm_gate_op", "norm_gate_backward_op",
           "norm_gate_reference_forward", "norm_gate_reference_backward"]
