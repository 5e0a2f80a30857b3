"""The ``reference`` backend: the recurrence written as a plain sequential loop.

This is the ground truth every other backend is tested against. It is written the
most obvious way, in real arithmetic exactly as in docs/spec.md §1.2, and its gradients
are whatever autograd makes of that loop (the backend is called directly, not through
the custom op), so no hand-derived formula is trusted here. It computes in fp64 whatever
the inputs' dtype (results are returned in the inputs' dtypes), as a ground truth should.
It is slow: one Python step per token.
"""
from __future__ import annotations

import torch

from .base import ScanBackend


def _loop_complex(u, v, lam, theta, h0r, h0i, reverse):
    B, N, D = u.shape
    cos, sin = torch.cos(theta), torch.sin(theta)
    hr = h0r if h0r is not None else u.new_zeros(B, D)
    hi = h0i if h0i is not None else u.new_zeros(B, D)
    # unbind once: indexing u[:, t] in the loop would make autograd build a full-size
    # gradient per step (quadratic in N)
    u, v, lam = u.unbind(1), v.unbind(1), lam.unbind(1)
    out_r, out_i = [None] * N, [None] * N
    for t in (reversed(range(N)) if reverse else range(N)):
        a = lam[t] * cos
        b = lam[t] * sin
        hr, hi = a * hr - b * hi + u[t], a * hi + b * hr + v[t]
        out_r[t], out_i[t] = hr, hi
    return torch.stack(out_r, 1), torch.stack(out_i, 1), hr, hi


def _loop_real(x, lam, h0, reverse):
    B, N, D = x.shape
    h = h0 if h0 is not None else x.new_zeros(B, D)
    x, lam = x.unbind(1), lam.unbind(1)
    out = [None] * N
    for t in (reversed(range(N)) if reverse else range(N)):
        h = lam[t] * h + x[t]
        out[t] = h
    return torch.stack(out, 1), h


def _upcast(*tensors):
    return [None if t is None else t.to(torch.float64) for t in tensors]


class ReferenceBackend(ScanBackend):
    """The public API runs the loop directly, without the custom ops (``autograd_loop``), so
    that its gradients are autograd's of the plain loop (no backward methods of its own)."""
    name = "reference"
    description = "plain sequential loop (ground truth; slow)"
    autograd_loop = True

    def is_available(self, device):
        return True

    def hgru_forward(self, proj, lower_bound, theta_f, theta_r, h0, direction):
        # the gates and the loop in fp64 (the base class composes them)
        return super().hgru_forward(*_upcast(proj, lower_bound, theta_f, theta_r, h0), direction)

    def complex_forward(self, u, v, lam, theta, h0r, h0i, reverse):
        return _loop_complex(*_upcast(u, v, lam, theta, h0r, h0i), reverse)

    def real_forward(self, x, lam, h0, reverse):
        return _loop_real(*_upcast(x, lam, h0), reverse)
