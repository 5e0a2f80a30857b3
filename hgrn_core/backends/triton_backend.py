"""The ``triton`` backend: fused Triton kernels.

* the HGRU core (op ``hgrn::hgru``): ``hgrn_core.kernels.triton_hgru`` -- gates and both
  scan directions in one launch, from the projection to the state (docs/triton.md);
* the 2-D HGRU core (op ``hgrn::hgru2d``): the same kernels along the grid's rows, then its
  columns (accumulating), each read in place through strides;
* the output path (op ``hgrn::norm_gate``): ``hgrn_core.kernels.triton_norm_gate``;
* the plain scans (``hgrn::complex_scan``, ``bidirectional_scan``, ``real_scan`` of the
  public scan API): the same walk kernels with decays and inputs given
  (``hgrn_core.kernels.triton_scan_given``).

Runs on CUDA tensors, and on CPU tensors only under ``TRITON_INTERPRET=1`` (Triton's
interpreter, for tests: slow). fp32/bf16/fp16 inputs are computed with an fp32 state and
returned in the input dtype; fp64 inputs are computed in fp64 by the same kernels (for
gradcheck; slow on most GPUs). Nothing but the ops' inputs is kept for backward: gates and
states are recomputed.
"""
from __future__ import annotations

import os

import torch

from .base import ScanBackend


def _kernels():
    from ..kernels import triton_scan_given  # imports triton
    return triton_scan_given


class TritonBackend(ScanBackend):
    name = "triton"
    description = "fused Triton kernels (CUDA; CPU only under TRITON_INTERPRET=1)"

    def __init__(self):
        # imports triton (the backend is made on first use); the modules are kept, not
        # imported per call (an import statement costs a few us of host time)
        from ..kernels import triton_hgru, triton_norm_gate
        self._k = _kernels()
        self._hgru, self._norm_gate = triton_hgru, triton_norm_gate

    def is_available(self, device):
        device = torch.device(device)
        if device.type == "cuda":
            return True
        return device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"

    # --- the plain scans: the walk kernels with decays and inputs given -------------------
    def complex_forward(self, u, v, lam, theta, h0r, h0i, reverse):
        return self._k.complex_forward(u, v, lam, theta, h0r, h0i, reverse)

    def complex_backward(self, ghr, ghi, ghNr, ghNi, u, v, lam, theta, h0r, h0i, reverse):
        return self._k.complex_backward(ghr, ghi, ghNr, ghNi, u, v, lam, theta, h0r, h0i,
                                        reverse)

    def bidirectional_forward(self, u, v, lam, theta_f, theta_r):
        return self._k.bidirectional_forward(u, v, lam, theta_f, theta_r)

    def bidirectional_backward(self, ghr, ghi, u, v, lam, theta_f, theta_r):
        return self._k.bidirectional_backward(ghr, ghi, u, v, lam, theta_f, theta_r)

    def real_forward(self, x, lam, h0, reverse):
        return self._k.real_forward(x, lam, h0, reverse)

    def real_backward(self, gh, ghN, x, lam, h0, reverse):
        return self._k.real_backward(gh, ghN, x, lam, h0, reverse)

    # --- the HGRU core (hgrn::hgru): gates and scans fused ----------------------------------
    def hgru_forward(self, proj, lower_bound, theta_f, theta_r, h0, direction):
        return self._hgru.hgru_forward(proj, lower_bound, theta_f, theta_r, h0, direction)

    def hgru_backward(self, dh, dhN, proj, lower_bound, theta_f, theta_r, h0, direction):
        return self._hgru.hgru_backward(dh, dhN, proj, lower_bound, theta_f, theta_r, h0,
                                         direction)

    # --- the 2-D HGRU core (hgrn::hgru2d): the same kernels along rows and columns in place --
    # (a grid too large for the kernels' int32 offsets / launch limits, far beyond any vision
    # model's, takes the base class's composition)
    def hgru2d_forward(self, proj, lower_bound, theta_f, theta_r, grid_width, direction):
        if not self._hgru.grid_fits(proj.shape[1], proj.shape[2], grid_width):
            return super().hgru2d_forward(proj, lower_bound, theta_f, theta_r, grid_width,
                                          direction)
        return self._hgru.hgru2d_forward(proj, lower_bound, theta_f, theta_r, grid_width,
                                          direction)

    def hgru2d_backward(self, dh, proj, lower_bound, theta_f, theta_r, grid_width, direction):
        if not self._hgru.grid_fits(proj.shape[1], proj.shape[2], grid_width):
            return super().hgru2d_backward(dh, proj, lower_bound, theta_f, theta_r,
                                           grid_width, direction)
        return self._hgru.hgru2d_backward(dh, proj, lower_bound, theta_f, theta_r,
                                           grid_width, direction)

    # --- fused output path: LayerNorm(h) * SiLU(gate) ---------------------------------------
    def norm_gate_forward(self, h, gate, weight, bias, eps):
        return self._norm_gate.norm_gate_forward(h, gate, weight, bias, eps)

    def norm_gate_backward(self, dy, h, gate, weight, bias, mean, rstd, eps):
        return self._norm_gate.norm_gate_backward(dy, h, gate, weight, bias, mean, rstd, eps)
