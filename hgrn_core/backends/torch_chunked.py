"""The ``torch`` backend: a chunked scan in plain PyTorch, for any device.

The sequence is cut into chunks of C positions. Inside every chunk a short loop of C
steps runs for all chunks at once (one step touches a (B, N/C, D) slice), producing
the chunk-local state and the running product of decays. A second loop of N/C steps
carries the state across chunks, and one fused multiply-add adds each carry, decayed,
to its chunk. That is about 2*sqrt(N) Python steps instead of N, and nothing is ever
divided by a decay: running products only shrink (|lam| <= 1), so long sequences with
lam near 0 or near 1 stay finite and accurate; a product that underflows to 0 is the
right limit.

The complex state uses torch's complex dtype (one fused op per complex multiply-add).
Gradients are hand-written (spec §5): the backward of a scan is the same scan run the
other way over the output gradients, with conjugated decays shifted by one step.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import ScanBackend, compute_dtype


def chunk_size_for(n: int) -> int:
    """About sqrt(N), a power of two: balances the in-chunk and the carry loops."""
    return max(1, 2 ** math.ceil(math.log2(max(n, 1)) / 2))


def linear_scan(x: Tensor, a: Tensor, h0: Tensor | None, reverse: bool, chunk: int | None = None):
    """``h_t = a_t * h_{t-1} + x_t`` along dim 1 (``h_{t+1}`` when ``reverse``).

    ``x, a``: (B, N, D), same dtype (real or complex); ``h0``: (B, D) or None.
    Returns ``h`` (B, N, D) and the final state (B, D).
    """
    B, N, D = x.shape
    C = chunk or chunk_size_for(N)
    n_chunks = -(-N // C)
    pad = n_chunks * C - N
    if pad:
        # decay 1, input 0: the state passes through the padding unchanged, so an initial
        # state entering a reverse scan from the end, and the final state, stay exact.
        x = torch.cat([x, x.new_zeros(B, pad, D)], 1)
        a = torch.cat([a, a.new_ones(B, pad, D)], 1)
    xc = x.reshape(B, n_chunks, C, D)
    ac = a.reshape(B, n_chunks, C, D)

    # Chunk-local pass. Position-major buffers keep each step's slice contiguous.
    local = x.new_empty(C, B, n_chunks, D)
    decay = x.new_empty(C, B, n_chunks, D)
    steps = list(range(C - 1, -1, -1)) if reverse else list(range(C))
    first = steps[0]
    local[first] = xc[:, :, first]
    decay[first] = ac[:, :, first]
    prev = first
    for j in steps[1:]:
        torch.addcmul(xc[:, :, j], ac[:, :, j], local[prev], out=local[j])
        torch.mul(ac[:, :, j], decay[prev], out=decay[j])
        prev = j
    last = prev  # the position that closes a chunk in scan order

    # Carry pass: the state entering each chunk.
    carry = x.new_empty(n_chunks, B, D)
    state = h0.to(x.dtype) if h0 is not None else x.new_zeros(B, D)
    for k in (range(n_chunks - 1, -1, -1) if reverse else range(n_chunks)):
        carry[k] = state
        state = torch.addcmul(local[last, :, k], decay[last, :, k], state)

    h = torch.empty_like(xc)
    torch.addcmul(local.permute(1, 2, 0, 3), decay.permute(1, 2, 0, 3),
                  carry.permute(1, 0, 2).unsqueeze(2), out=h)
    h = h.reshape(B, n_chunks * C, D)
    return (h[:, :N] if pad else h), state


def _shift_decay(a: Tensor, reverse: bool) -> Tensor:
    """Decays of the backward scan: conj(a_{t+1}) for a forward scan (conj(a_{t-1}) for a
    reverse one), and 1 where the backward scan starts, so the final-state gradient enters
    unchanged."""
    one = a.new_ones(a.shape[0], 1, a.shape[2])
    a = a.conj()
    return torch.cat([one, a[:, :-1]], 1) if reverse else torch.cat([a[:, 1:], one], 1)


def _previous_state(h: Tensor, h0: Tensor | None, reverse: bool) -> Tensor:
    """h_{t-1} for each t (h_{t+1} for a reverse scan), the initial state at the edge."""
    edge = (h0.to(h.dtype) if h0 is not None else h.new_zeros(h.shape[0], h.shape[2])).unsqueeze(1)
    return torch.cat([h[:, 1:], edge], 1) if reverse else torch.cat([edge, h[:, :-1]], 1)


def _scan_backward(g: Tensor, gN: Tensor | None, a: Tensor, h: Tensor, h0: Tensor | None,
                   reverse: bool):
    """Gradients of ``h = scan(x, a, h0)`` given dL/dh = g and dL/dh_final = gN.
    Returns dx, da (as the complex conjugate-free product D * conj(h_prev)), dh0."""
    dstate, _ = linear_scan(g, _shift_decay(a, reverse), gN, not reverse)
    da = dstate * _previous_state(h, h0, reverse).conj()
    dh0 = None
    if h0 is not None:
        edge = -1 if reverse else 0
        dh0 = a[:, edge].conj() * dstate[:, edge]
    return dstate, da, dh0


def _complex(re: Tensor, im: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    if re is None:
        return None
    return torch.complex(re.to(dtype), im.to(dtype))


def _rotation(theta: Tensor, dtype: torch.dtype) -> Tensor:
    """e^{i theta} as a complex (D,) tensor."""
    return torch.polar(torch.ones_like(theta, dtype=dtype), theta.to(dtype))


class TorchBackend(ScanBackend):
    name = "torch"
    description = "chunked scan in plain PyTorch (any device)"

    def is_available(self, device):
        return True

    def _complex_state(self, u, v, lam, theta, h0r, h0i, reverse):
        dt = compute_dtype(u.dtype)
        a = lam.to(dt) * _rotation(theta, dt)
        h0 = _complex(h0r, h0i, dt)
        h, hN = linear_scan(_complex(u, v, dt), a, h0, reverse)
        return h, hN, a, h0

    def complex_forward(self, u, v, lam, theta, h0r, h0i, reverse):
        h, hN, _, _ = self._complex_state(u, v, lam, theta, h0r, h0i, reverse)
        return h.real, h.imag, hN.real, hN.imag

    def complex_backward(self, ghr, ghi, ghNr, ghNi, u, v, lam, theta, h0r, h0i, reverse):
        h, _, a, h0 = self._complex_state(u, v, lam, theta, h0r, h0i, reverse)
        dt = compute_dtype(u.dtype)
        g = _complex(ghr, ghi, dt)
        gN = None
        if ghNr is not None or ghNi is not None:
            gN = _complex(ghNr if ghNr is not None else torch.zeros_like(ghNi),
                          ghNi if ghNi is not None else torch.zeros_like(ghNr), dt)
        dx, da, dh0 = _scan_backward(g, gN, a, h, h0, reverse)
        # a = lam * e^{i theta}:  dlam = Re(da e^{-i theta}),  dtheta = Re(da conj(i a))
        dlam = (da * _rotation(theta, dt).conj()).real
        dtheta = (da * (1j * a).conj()).real.sum((0, 1))
        return (dx.real, dx.imag, dlam, dtheta,
                None if dh0 is None else dh0.real, None if dh0 is None else dh0.imag)

    # Bidirectional: both directions share the complex input and the output gradient, so
    # they are built once (the base class would build them once per direction).
    def bidirectional_forward(self, u, v, lam, theta_f, theta_r):
        dt = compute_dtype(u.dtype)
        x, lam = _complex(u, v, dt), lam.to(dt)
        h, _ = linear_scan(x, lam * _rotation(theta_f, dt), None, False)
        h_rev, _ = linear_scan(x, lam * _rotation(theta_r, dt), None, True)
        h += h_rev
        return h.real, h.imag

    def bidirectional_backward(self, ghr, ghi, u, v, lam, theta_f, theta_r):
        dt = compute_dtype(u.dtype)
        x, lam, g = _complex(u, v, dt), lam.to(dt), _complex(ghr, ghi, dt)
        dx, dlam, dthetas = 0, 0, []
        for theta, reverse in ((theta_f, False), (theta_r, True)):
            rotation = _rotation(theta, dt)
            a = lam * rotation
            h, _ = linear_scan(x, a, None, reverse)
            d_x, da, _ = _scan_backward(g, None, a, h, None, reverse)
            dx = dx + d_x
            dlam = dlam + (da * rotation.conj()).real
            dthetas.append((da * (1j * a).conj()).real.sum((0, 1)))
        return dx.real, dx.imag, dlam, dthetas[0], dthetas[1]

    def real_forward(self, x, lam, h0, reverse):
        dt = compute_dtype(x.dtype)
        return linear_scan(x.to(dt), lam.to(dt), None if h0 is None else h0.to(dt), reverse)

    def real_backward(self, gh, ghN, x, lam, h0, reverse):
        dt = compute_dtype(x.dtype)
        a = lam.to(dt)
        h0 = None if h0 is None else h0.to(dt)
        h, _ = linear_scan(x.to(dt), a, h0, reverse)
        dx, dlam, dh0 = _scan_backward(gh.to(dt), None if ghN is None else ghN.to(dt),
                                       a, h, h0, reverse)
        return dx, dlam, dh0
