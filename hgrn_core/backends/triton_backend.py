"""The ``triton`` backend: fused Triton kernels.

* the HGRU core (op ``hgrn::hgru``): ``hgrn_core.kernels.triton_hgru`` -- gates and both
  scan directions in one launch, from the projection to the state (docs/triton.md);
* the output path (op ``hgrn::norm_gate``): ``hgrn_core.kernels.triton_norm_gate``;
* the plain scans (``hgrn::complex_scan``, ``bidirectional_scan``, ``real_scan`` of the
  public scan API): ``hgrn_core.kernels.triton_scan``.

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
    from ..kernels import triton_scan  # imports triton
    return triton_scan


class TritonBackend(ScanBackend):
    name = "triton"
    description = "fused Triton kernels (CUDA; CPU only under TRITON_INTERPRET=1)"

    def __init__(self):
        self._k = _kernels()

    def is_available(self, device):
        device = torch.device(device)
        if device.type == "cuda":
            return True
        return device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"

    # --- complex, one direction ---------------------------------------------------------
    def complex_forward(self, u, v, lam, theta, h0r, h0i, reverse):
        if h0r is not None or h0i is not None:
            h0r = h0r if h0r is not None else torch.zeros_like(h0i)
            h0i = h0i if h0i is not None else torch.zeros_like(h0r)
        hr, hi, hNr, hNi = self._k.scan_forward(
            u, v, lam, theta, theta, h0r, h0i, forward=not reverse, backward_dir=reverse)
        return hr, hi, hNr, hNi

    def complex_backward(self, ghr, ghi, ghNr, ghNi, u, v, lam, theta, h0r, h0i, reverse):
        has_h0 = h0r is not None or h0i is not None
        if has_h0:
            h0r = h0r if h0r is not None else torch.zeros_like(h0i)
            h0i = h0i if h0i is not None else torch.zeros_like(h0r)
        du, dv, dlam, dtf, dtr, dh0r, dh0i = self._k.scan_backward(
            ghr, ghi, ghNr, ghNi, u, v, lam, theta, theta, h0r, h0i,
            forward=not reverse, backward_dir=reverse)
        return du, dv, dlam, (dtr if reverse else dtf), dh0r, dh0i

    # --- fused bidirectional ------------------------------------------------------------
    def bidirectional_forward(self, u, v, lam, theta_f, theta_r):
        hr, hi, _, _ = self._k.scan_forward(u, v, lam, theta_f, theta_r,
                                            forward=True, backward_dir=True)
        return hr, hi

    def bidirectional_backward(self, ghr, ghi, u, v, lam, theta_f, theta_r):
        du, dv, dlam, dtf, dtr, _, _ = self._k.scan_backward(
            ghr, ghi, None, None, u, v, lam, theta_f, theta_r,
            forward=True, backward_dir=True)
        return du, dv, dlam, dtf, dtr

    # --- real -----------------------------------------------------------------------------
    def real_forward(self, x, lam, h0, reverse):
        h, _, hN, _ = self._k.scan_forward(x, None, lam, None, None, h0, None,
                                           forward=not reverse, backward_dir=reverse)
        return h, hN

    def real_backward(self, gh, ghN, x, lam, h0, reverse):
        dx, _, dlam, _, _, dh0, _ = self._k.scan_backward(
            gh, None, ghN, None, x, None, lam, None, None, h0, None,
            forward=not reverse, backward_dir=reverse)
        return dx, dlam, dh0

    # --- the HGRU core (hgrn::hgru): gates and scans fused ----------------------------------
    def hgru_forward(self, proj, lower_bound, theta_f, theta_r, h0, direction):
        from ..kernels import triton_hgru  # imports triton
        return triton_hgru.hgru_forward(proj, lower_bound, theta_f, theta_r, h0, direction)

    def hgru_backward(self, dh, dhN, proj, lower_bound, theta_f, theta_r, h0, direction):
        from ..kernels import triton_hgru
        return triton_hgru.hgru_backward(dh, dhN, proj, lower_bound, theta_f, theta_r, h0,
                                         direction)

    # --- fused output path: LayerNorm(h) * SiLU(gate) ---------------------------------------
    def norm_gate_forward(self, h, gate, weight, bias, eps):
        from ..kernels import triton_norm_gate  # imports triton
        return triton_norm_gate.norm_gate_forward(h, gate, weight, bias, eps)

    def norm_gate_backward(self, dy, h, gate, weight, bias, mean, rstd, eps):
        from ..kernels import triton_norm_gate
        return triton_norm_gate.norm_gate_backward(dy, h, gate, weight, bias, mean, rstd, eps)
