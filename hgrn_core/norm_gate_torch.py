"""The HGRU's output path in plain torch: ``y = LayerNorm_W(h; weight, bias, eps) * SiLU(gate)``
and its gradients, from the saved statistics. What the base backend runs for the op
``hgrn::norm_gate`` (``hgrn_core.norm_gate_op``), and what its fused kernel is tested
against."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .precision import compute_dtype


def norm_gate_reference_forward(h: Tensor, gate: Tensor, weight: Optional[Tensor],
                                bias: Optional[Tensor], eps: float
                                ) -> Tuple[Tensor, Tensor, Tensor]:
    """``y, mean, rstd`` in plain torch: fp32 math (fp64 for fp64 ``h``), ``y`` in ``h``'s
    dtype, ``mean`` / ``rstd`` ``(B, N)`` in the compute dtype. One fused LayerNorm
    (``torch.native_layer_norm``, which also returns the statistics) and a SiLU product."""
    acc = compute_dtype(h.dtype)
    W = h.shape[-1]
    w = None if weight is None else weight.to(acc)
    b = None if bias is None else bias.to(acc)
    z, mean, rstd = torch.native_layer_norm(h.to(acc), [W], w, b, eps)
    y = z.mul_(F.silu(gate.to(acc))).to(h.dtype)
    return y, mean.reshape(h.shape[:-1]), rstd.reshape(h.shape[:-1])


def norm_gate_reference_backward(dy: Tensor, h: Tensor, gate: Tensor, weight: Optional[Tensor],
                                 bias: Optional[Tensor], mean: Tensor, rstd: Tensor, eps: float
                                 ) -> Tuple[Tensor, Tensor, Optional[Tensor], Optional[Tensor]]:
    """``dh, dgate, dweight, dbias`` in plain torch, from the saved statistics (``eps`` is
    already in ``rstd``). With ``s = silu(g)`` and ``z = xhat * weight + bias``:
    ``dgate = dy * z * silu'(g)``, and the LayerNorm's output gradient ``dy * s`` goes
    through LayerNorm's backward. dh / dgate in h's / gate's dtype, dweight / dbias in
    the parameters' dtypes (None for a None parameter)."""
    acc = compute_dtype(h.dtype)
    W = h.shape[-1]
    hf, g, d = h.to(acc), gate.to(acc), dy.to(acc)
    w = None if weight is None else weight.to(acc)
    b = None if bias is None else bias.to(acc)
    mean_ = mean.to(acc).unsqueeze(-1)
    rstd_ = rstd.to(acc).unsqueeze(-1)
    sig = torch.sigmoid(g)
    z = (hf - mean_).mul_(rstd_)                       # xhat
    if w is not None:
        z.mul_(w)
    if b is not None:
        z.add_(b)
    # silu'(g) = sig * (1 + g * (1 - sig))
    dgate = d * z * (sig * (1.0 + g * (1.0 - sig)))
    dz = d * (g * sig)
    dh, dw, db = torch.ops.aten.native_layer_norm_backward(
        dz, hf, [W], mean_, rstd_, w, b, [True, w is not None, b is not None])
    return (dh.to(h.dtype), dgate.to(gate.dtype),
            None if weight is None else dw.to(weight.dtype),
            None if bias is None else db.to(bias.dtype))
