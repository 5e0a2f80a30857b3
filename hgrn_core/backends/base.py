"""The contract every scan backend fulfils.

A backend computes the complex first-order recurrence of the spec (§1) and its
gradients (§5) on batch-first ``(B, N, D)`` tensors:

    forward  (reverse=False):  h_t = lam_t e^{i theta} h_{t-1} + (u_t + i v_t),  h_0 = initial
    reverse  (reverse=True):   h_t = lam_t e^{i theta} h_{t+1} + (u_t + i v_t),  h_{N+1} = initial

and the real-valued form (theta = 0, no imaginary part). Forward and backward are
separate methods so that one ``torch.library`` op (``hgrn_core.ops``) can own the
autograd wiring for every backend; backward methods receive only the op's inputs
(states are recomputed where needed) plus the incoming gradients.

Backends may compute in any precision >= fp32 and return any float dtype: the op
casts results back to the dtypes of the inputs.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor


class ScanBackend:
    name: str = "base"
    description: str = ""
    # True for a backend whose forward is differentiated by autograd itself (the reference
    # loop): it is called directly, without the custom op, and needs no backward methods.
    autograd_forward: bool = False

    def is_available(self, device: torch.device) -> bool:
        """Whether this backend can run on tensors living on ``device``."""
        raise NotImplementedError

    # --- complex scan, one direction -----------------------------------------------------
    def complex_forward(
        self, u: Tensor, v: Tensor, lam: Tensor, theta: Tensor,
        h0r: Optional[Tensor], h0i: Optional[Tensor], reverse: bool,
    ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """Returns ``hr, hi`` (B, N, D) and the final state ``hNr, hNi`` (B, D)."""
        raise NotImplementedError

    def complex_backward(
        self, ghr: Tensor, ghi: Tensor, ghNr: Optional[Tensor], ghNi: Optional[Tensor],
        u: Tensor, v: Tensor, lam: Tensor, theta: Tensor,
        h0r: Optional[Tensor], h0i: Optional[Tensor], reverse: bool,
    ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Optional[Tensor], Optional[Tensor]]:
        """Returns ``du, dv, dlam, dtheta, dh0r, dh0i`` (the last two None without h0)."""
        raise NotImplementedError

    # --- bidirectional: both directions over the same (u, v, lam), states summed --------------
    # The default composes two single-direction scans; fused backends override it.
    def bidirectional_forward(self, u, v, lam, theta_f, theta_r) -> Tuple[Tensor, Tensor]:
        fr, fi, _, _ = self.complex_forward(u, v, lam, theta_f, None, None, False)
        rr, ri, _, _ = self.complex_forward(u, v, lam, theta_r, None, None, True)
        return fr + rr, fi + ri

    def bidirectional_backward(self, ghr, ghi, u, v, lam, theta_f, theta_r):
        # Both directions see the same output gradient, since h = h_fwd + h_bwd.
        duf, dvf, dlf, dtf, _, _ = self.complex_backward(
            ghr, ghi, None, None, u, v, lam, theta_f, None, None, False)
        dur, dvr, dlr, dtr, _, _ = self.complex_backward(
            ghr, ghi, None, None, u, v, lam, theta_r, None, None, True)
        return duf + dur, dvf + dvr, dlf + dlr, dtf, dtr

    # --- real-valued scan -------------------------------------------------------------------
    def real_forward(self, x: Tensor, lam: Tensor, h0: Optional[Tensor], reverse: bool
                     ) -> Tuple[Tensor, Tensor]:
        """Returns ``h`` (B, N, D) and the final state ``hN`` (B, D)."""
        raise NotImplementedError

    def real_backward(self, gh: Tensor, ghN: Optional[Tensor], x: Tensor, lam: Tensor,
                      h0: Optional[Tensor], reverse: bool
                      ) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
        """Returns ``dx, dlam, dh0`` (dh0 None without h0)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<hgrn scan backend {self.name!r}>"


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Low-precision inputs are accumulated in fp32; fp64 stays fp64 (for gradcheck)."""
    return torch.float64 if dtype == torch.float64 else torch.float32
