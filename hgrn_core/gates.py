"""The HGRU's gates in plain torch: from the projection to the scan inputs, and back.

``proj`` is ``in_proj``'s core output, ``[c (W) | mu (d)]`` per token, with ``W = 2d``
(``c = [Re c | Im c]``, complex) or ``W = d`` (real). docs/spec.md §1.1 (backward: §5.2):

    s   = sigmoid(mu),   lam = gamma + (1 - gamma) s        (gamma: the layer's lower bound)
    x   = (1 - lam) SiLU(c)                                  (the scan input; lam shared by Re, Im)

The one definition of the gates: the torch and reference backends use these functions, the
fused kernels and the ONNX translation the same formulas. ``1 - lam`` is never formed by
subtracting ``lam`` from 1 -- near lam = 1 (large mu, lower bounds near 1) that cancels to
a few bits: it is ``(1 - gamma) sigmoid(-mu)``, and ``1 - s = sigmoid(-mu)``. Math runs in
fp32 (fp64 for fp64 inputs, or ``dtype=``): in bf16 a decay of 0.999 already rounds to 1.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .precision import compute_dtype


class Gates(NamedTuple):
    x: Tensor          # (B, N, W) scan input (1 - lam) SiLU(c)
    lam: Tensor        # (B, N, d) decay
    s: Tensor          # (B, N, d) sigmoid(mu)
    oms: Tensor        # (B, N, d) 1 - s = sigmoid(-mu)
    oml: Tensor        # (B, N, d) 1 - lam = (1 - gamma)(1 - s)
    c: Tensor          # (B, N, W) c in the compute dtype (for SiLU's derivative)
    silu_c: Tensor     # (B, N, W)


def state_width(proj: Tensor, complex_valued: bool) -> Tuple[int, int]:
    """(W, d) of a projection ``[c (W) | mu (d)]``."""
    d = proj.shape[-1] // (3 if complex_valued else 2)
    return proj.shape[-1] - d, d


def _times_per_plane(x: Tensor, t: Tensor) -> Tensor:
    """``x`` (B, N, W) times ``t`` (B, N, d) broadcast over the W // d planes of ``x``,
    without materialising the broadcast."""
    d = t.shape[-1]
    return (x.unflatten(-1, (x.shape[-1] // d, d)) * t.unsqueeze(-2)).flatten(-2)


def hgru_gates(proj: Tensor, lower_bound: Optional[Tensor], complex_valued: bool,
               dtype: Optional[torch.dtype] = None) -> Gates:
    """The gates of ``proj`` in ``dtype`` (default: fp32, fp64 for fp64 ``proj``)."""
    W, d = state_width(proj, complex_valued)
    dt = dtype or compute_dtype(proj.dtype)
    c = proj[..., :W].to(dt)
    mu = proj[..., W:].to(dt)
    s = torch.sigmoid(mu)
    oms = torch.sigmoid(-mu)
    if lower_bound is None:
        lam, oml = s, oms
    else:
        lb = lower_bound.to(dt)
        lam = lb + (1 - lb) * s
        oml = (1 - lb) * oms
    silu_c = F.silu(c)
    x = _times_per_plane(silu_c, oml)
    return Gates(x, lam, s, oms, oml, c, silu_c)


def hgru_gates_backward(g: Gates, dx: Tensor, dlam: Tensor, lower_bound: Optional[Tensor],
                        proj_dtype: torch.dtype) -> Tuple[Tensor, Optional[Tensor]]:
    """Gradients of the projection (B, N, W + d) and of the lower bound (d,), given those of
    the scan input ``dx`` (B, N, W) and of the decay ``dlam`` (B, N, d)."""
    W, d = g.x.shape[-1], g.lam.shape[-1]
    # x = (1 - lam) SiLU(c): lam gets -sum over planes of SiLU(c) dx
    dlam = dlam - (g.silu_c * dx).unflatten(-1, (W // d, d)).sum(-2)
    sig_c = torch.sigmoid(g.c)
    dc = _times_per_plane(dx, g.oml) * sig_c * (1 + g.c * (1 - sig_c))
    # d lam / d mu = (1 - gamma) s (1 - s); d lam / d gamma = 1 - s
    dmu = dlam * g.s * g.oms
    if lower_bound is not None:
        dmu = dmu * (1 - lower_bound.to(g.lam.dtype))
    dlb = None if lower_bound is None else (dlam * g.oms).sum((0, 1))
    return torch.cat([dc, dmu], -1).to(proj_dtype), dlb
