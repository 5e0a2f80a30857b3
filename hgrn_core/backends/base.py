"""The contract every scan backend fulfils.

A backend computes the complex first-order recurrence of docs/spec.md (§1.2, §1.3) and its
gradients (§5.1) on batch-first ``(B, N, D)`` tensors:

    forward  (reverse=False):  h_t = lam_t e^{i theta} h_{t-1} + (u_t + i v_t),  h_0 = initial
    reverse  (reverse=True):   h_t = lam_t e^{i theta} h_{t+1} + (u_t + i v_t),  h_{N+1} = initial

and the real-valued form (theta = 0, no imaginary part). Forward and backward are
separate methods so that one ``torch.library`` op (``hgrn_core.ops``) can own the
autograd wiring for every backend; backward methods receive only the op's inputs
(states are recomputed where needed) plus the incoming gradients.

Backends may compute in any precision >= fp32 and return any float dtype: the op
casts results back to the dtypes of the inputs.

The HGRU op (``hgrn::hgru``: the whole recurrent core, from ``in_proj``'s output to the
state) is ``hgru_forward`` / ``hgru_backward``; the base class composes it from the gates
(``hgrn_core.gates``) and the scans above, fused backends override it.

Layers (tests/test_import_layers.py keeps them free of circles): the public API
(``hgrn_core.scan``, ``hgru()``, ``norm_gate()``, the mixers) calls the custom ops
(``hgrn_core.ops``, the ops of ``hgru_op`` / ``norm_gate_op``), which call a backend; a
backend uses the gates, the plain torch compositions and its kernels, and imports nothing
above it. A backend differentiated by autograd itself (``autograd_loop``: the reference loop)
is called by the public API directly, without the ops.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from ..gates import hgru_gates, hgru_gates_backward
from ..norm_gate_torch import norm_gate_reference_backward, norm_gate_reference_forward
from ..precision import compute_dtype  # noqa: F401  (re-exported: backends.base.compute_dtype)


DIRECTIONS = ("forward", "reverse", "both")


# ------------------------------------------------------------------- the patch grid's axes
def grid_rows(t: Tensor, grid_width: int) -> Tensor:
    """(B, H * Wg, C) row-major grid -> its rows as sequences (B * H, Wg, C) (a view when
    the strides allow it)."""
    return t.reshape(-1, grid_width, t.shape[-1])


def grid_cols(t: Tensor, grid_width: int) -> Tensor:
    """(B, H * Wg, C) row-major grid -> its columns as sequences (B * Wg, H, C) (a copy)."""
    B, N, C = t.shape
    return t.reshape(B, N // grid_width, grid_width, C).transpose(1, 2).reshape(-1, N // grid_width, C)


def from_grid_cols(t: Tensor, B: int, grid_width: int) -> Tensor:
    """The inverse of ``grid_cols``: (B * Wg, H, C) -> (B, H * Wg, C)."""
    H, C = t.shape[1:]
    return t.reshape(B, grid_width, H, C).transpose(1, 2).reshape(B, H * grid_width, C)


class ScanBackend:
    name: str = "base"
    description: str = ""

    # True for a backend whose forward methods are differentiated by autograd itself (the
    # reference loop): the public API calls them directly instead of the custom ops
    autograd_loop: bool = False

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

    # --- the HGRU core: gates + scans (hgrn::hgru) ---------------------------------------------
    # proj (B, N, W + d) = [c (W) | mu (d)], W = 2d complex ([Re | Im]) or d real (theta_f and
    # theta_r None); direction 'forward' | 'reverse' | 'both'; h0 (B, W) for one direction.
    def hgru_forward(self, proj, lower_bound, theta_f, theta_r, h0, direction):
        """Returns ``h`` (B, N, W) and the final state ``hN`` (B, W) (None for 'both')."""
        complex_ = theta_f is not None or theta_r is not None
        g = hgru_gates(proj, lower_bound, complex_)
        h0 = None if h0 is None else h0.to(g.x.dtype)
        if not complex_:
            if direction == "both":
                h, _ = self.real_forward(g.x, g.lam, None, False)
                return h + self.real_forward(g.x, g.lam, None, True)[0], None
            return self.real_forward(g.x, g.lam, h0, direction == "reverse")
        u, v = g.x.chunk(2, -1)
        if direction == "both":
            return torch.cat(self.bidirectional_forward(u, v, g.lam, theta_f, theta_r), -1), None
        h0r, h0i = (None, None) if h0 is None else h0.chunk(2, -1)
        reverse = direction == "reverse"
        hr, hi, hNr, hNi = self.complex_forward(u, v, g.lam, theta_r if reverse else theta_f,
                                                h0r, h0i, reverse)
        return torch.cat([hr, hi], -1), torch.cat([hNr, hNi], -1)

    def hgru_backward(self, dh, dhN, proj, lower_bound, theta_f, theta_r, h0, direction):
        """Returns ``dproj`` (B, N, W + d), ``dlower_bound``, ``dtheta_f``, ``dtheta_r``,
        ``dh0`` (None where the input was None or unused). Gates are recomputed."""
        complex_ = theta_f is not None or theta_r is not None
        g = hgru_gates(proj, lower_bound, complex_)
        dt = g.x.dtype
        dh = dh.to(dt)
        h0 = None if h0 is None else h0.to(dt)
        dhN = None if dhN is None else dhN.to(dt)
        dtf = dtr = dh0 = None
        if not complex_:
            if direction == "both":
                dxf, dlf, _ = self.real_backward(dh, None, g.x, g.lam, None, False)
                dxr, dlr, _ = self.real_backward(dh, None, g.x, g.lam, None, True)
                dx, dlam = dxf + dxr, dlf + dlr
            else:
                dx, dlam, dh0 = self.real_backward(dh, dhN, g.x, g.lam, h0,
                                                   direction == "reverse")
        else:
            u, v = g.x.chunk(2, -1)
            ghr, ghi = dh.chunk(2, -1)
            if direction == "both":
                du, dv, dlam, dtf, dtr = self.bidirectional_backward(
                    ghr, ghi, u, v, g.lam, theta_f, theta_r)
            else:
                reverse = direction == "reverse"
                h0r, h0i = (None, None) if h0 is None else h0.chunk(2, -1)
                gNr, gNi = (None, None) if dhN is None else dhN.chunk(2, -1)
                du, dv, dlam, dth, dh0r, dh0i = self.complex_backward(
                    ghr, ghi, gNr, gNi, u, v, g.lam, theta_r if reverse else theta_f,
                    h0r, h0i, reverse)
                dtf, dtr = (None, dth) if reverse else (dth, None)
                dh0 = None if h0 is None else torch.cat([dh0r, dh0i], -1)
            dx = torch.cat([du, dv], -1)
        dproj, dlb = hgru_gates_backward(g, dx, dlam, lower_bound, proj.dtype)
        return dproj, dlb, dtf, dtr, dh0

    # --- the 2-D HGRU core over a patch grid (hgrn::hgru2d) ------------------------------------
    # proj (B, H * Wg, W + d): the grid's tokens row-major, Wg = grid_width. h is the
    # ``direction`` scan(s) along every row plus the same along every column, summed: for
    # 'both' four scans (theta_f for both forward ones, theta_r for both reverse ones), for
    # 'forward' two (theta_f for both). No initial state. The default runs the 1-D core on the
    # rows (a view) and on a transposed copy of the columns; fused backends override it and
    # walk the columns in place through strides.
    def hgru2d_forward(self, proj, lower_bound, theta_f, theta_r, grid_width, direction):
        """Returns ``h`` (B, N, W)."""
        rows = self.hgru_forward(grid_rows(proj, grid_width), lower_bound, theta_f, theta_r,
                                 None, direction)[0]
        cols = self.hgru_forward(grid_cols(proj, grid_width), lower_bound, theta_f, theta_r,
                                 None, direction)[0]
        B, N = proj.shape[:2]
        return rows.reshape(B, N, -1) + from_grid_cols(cols, B, grid_width)

    def hgru2d_backward(self, dh, proj, lower_bound, theta_f, theta_r, grid_width, direction):
        """Returns ``dproj`` (B, N, W + d), ``dlower_bound``, ``dtheta_f``, ``dtheta_r`` (None
        where the input was None). Both axes see the same ``dh`` (h is their sum)."""
        B, N = proj.shape[:2]
        gr = self.hgru_backward(grid_rows(dh, grid_width), None, grid_rows(proj, grid_width),
                                lower_bound, theta_f, theta_r, None, direction)
        gc = self.hgru_backward(grid_cols(dh, grid_width), None, grid_cols(proj, grid_width),
                                lower_bound, theta_f, theta_r, None, direction)
        dproj = gr[0].reshape(B, N, -1) + from_grid_cols(gc[0], B, grid_width)
        return (dproj, *[None if a is None else a + b for a, b in zip(gr[1:4], gc[1:4])])

    # --- fused output path: LayerNorm(h) * SiLU(gate) (op hgrn::norm_gate) -------------------
    # The default is the plain torch composition; fused backends override it.
    def norm_gate_forward(self, h, gate, weight, bias, eps):
        """Returns ``y`` (B, N, W) in h's dtype and ``mean, rstd`` (B, N) fp32 statistics."""
        return norm_gate_reference_forward(h, gate, weight, bias, eps)

    def norm_gate_backward(self, dy, h, gate, weight, bias, mean, rstd, eps):
        """Returns ``dh, dgate, dweight, dbias`` (the last two None without weight / bias)."""
        return norm_gate_reference_backward(dy, h, gate, weight, bias, mean, rstd, eps)

    def __repr__(self) -> str:
        return f"<hgrn scan backend {self.name!r}>"
