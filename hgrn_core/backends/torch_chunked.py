"""The ``torch`` backend: a chunked scan in plain PyTorch, for any device.

The sequence is cut into chunks of C positions (C ~ sqrt(N)); every loop step below
works on all chunks at once, a (B, N/C, D) slice:

1. a loop of C steps runs each chunk from a zero state and keeps only its end state;
2. a loop of N/C steps carries the state across chunks, each chunk's total decay being
   prod(lam) * e^{i theta C} (one vectorised product);
3. a second loop of C steps re-runs each chunk from its carried state and writes the
   outputs directly.

That is about 3*sqrt(N) Python steps instead of N, and it never divides by a decay:
products only shrink (lam <= 1), so long sequences with lam near 0 or near 1 stay finite
and accurate; a product that underflows to 0 is the right limit.

The complex state is kept as two real planes (real, imaginary) and every step works on
slices: no full-size temporary is made besides the outputs. On a CPU a fresh full-size
tensor costs new pages, which measured more than the arithmetic (and torch's complex
dtype would need several such conversions per call).

Gradients are hand-written (docs/spec.md §5.1): the backward of a scan is the same scan run the
other way over the output gradients, with conjugated decays shifted by one step.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import Tensor

from ..precision import compute_dtype
from .base import ScanBackend

Planes = Tuple[Tensor, ...]  # (real,) or (real, imag)


def chunk_size_for(n: int) -> int:
    """About sqrt(N), a power of two: balances the in-chunk and the carry loops."""
    return max(1, 2 ** math.ceil(math.log2(max(n, 1)) / 2))


def _step(x: Planes, lam: Tensor, cos: Optional[Tensor], sin: Optional[Tensor], prev: Planes,
          out: Optional[Planes] = None, work: Optional[Planes] = None) -> Planes:
    """One step on a slice: ``out = lam * (cos + i sin) * prev + x`` (real: ``lam * prev + x``).

    Results go into buffers made beforehand (``out``; ``work`` holds two slice-sized
    buffers for the decays): on a CPU a fresh slice-sized tensor per step costs new pages.
    The first product of each plane is written with ``out=`` (no copy of ``x`` first)."""
    if out is None:
        out = tuple(torch.empty_like(p) for p in x)
    if len(x) == 1:
        return (torch.addcmul(x[0], lam, prev[0], out=out[0]),)
    a, b = work if work is not None else (None, None)
    a = torch.mul(lam, cos, out=a)
    b = torch.mul(lam, sin, out=b)
    re = torch.addcmul(x[0], a, prev[0], out=out[0]).addcmul_(b, prev[1], value=-1)
    im = torch.addcmul(x[1], a, prev[1], out=out[1]).addcmul_(b, prev[0])
    return re, im


def linear_scan(x: Planes, lam: Tensor, theta: Optional[Tensor], h0: Optional[Planes],
                reverse: bool, chunk: Optional[int] = None) -> Tuple[Planes, Planes]:
    """``h_t = lam_t e^{i theta} h_{t-1} + x_t`` along dim 1 (``h_{t+1}`` when ``reverse``).

    ``x``: planes (real, imag) of (B, N, D), or (real,) with ``theta=None`` for the real
    scan; ``lam``: (B, N, D); ``theta``: (D,); ``h0``: planes of (B, D) or None.
    Returns the planes of ``h`` (B, N, D) and of the final state (B, D).
    """
    B, N, D = lam.shape
    C = chunk or chunk_size_for(N)
    n_chunks = -(-N // C)
    pad = n_chunks * C - N
    if pad:
        # Padding goes after the last position in scan order (the end of a forward scan, the
        # start of a reverse one), so the initial state still enters at the first real
        # position; padded outputs are dropped, the final state is read at the last real one.
        def padded(t):
            z = t.new_zeros(B, pad, D)
            return torch.cat([z, t] if reverse else [t, z], 1)
        x, lam = tuple(padded(p) for p in x), padded(lam)
    xc = tuple(p.reshape(B, n_chunks, C, D) for p in x)
    lc = lam.reshape(B, n_chunks, C, D)
    cos = sin = None
    if theta is not None:
        cos, sin = torch.cos(theta), torch.sin(theta)
    steps = list(range(C - 1, -1, -1)) if reverse else list(range(C))

    def at(j):
        return tuple(p[:, :, j] for p in xc)

    def slices(n):
        return tuple(lam.new_empty(B, n_chunks, D) for _ in range(n))

    work = slices(2) if theta is not None else None
    if n_chunks == 1:
        state_in = None if h0 is None else tuple(p.unsqueeze(1) for p in h0)
    else:
        # 1. each chunk's end state from a zero state (two buffers, used in turn)
        end, buffers = at(steps[0]), (slices(len(x)), slices(len(x)))
        for n, j in enumerate(steps[1:]):
            end = _step(at(j), lc[:, :, j], cos, sin, end, buffers[n % 2], work)
        # 2. the state entering each chunk; a chunk's decay is prod(lam) e^{i theta C}
        total = lc.prod(dim=2)
        tc = ts = None
        if theta is not None:
            tc, ts = torch.cos(theta * C), torch.sin(theta * C)
        state_in = tuple(torch.empty_like(p) for p in end)
        state = h0 if h0 is not None else tuple(lam.new_zeros(B, D) for _ in x)
        for k in (range(n_chunks - 1, -1, -1) if reverse else range(n_chunks)):
            for p, s in zip(state_in, state):
                p[:, k] = s
            state = _step(tuple(p[:, k] for p in end), total[:, k], tc, ts, state)
    # 3. every chunk again, from its entering state, writing the outputs
    h = tuple(torch.empty(B, n_chunks, C, D, dtype=lam.dtype, device=lam.device) for _ in x)
    prev = state_in
    for j in steps:
        here = tuple(p[:, :, j] for p in h)
        if prev is None:
            for p, q in zip(here, at(j)):
                p.copy_(q)
        else:
            _step(at(j), lc[:, :, j], cos, sin, prev, here, work)
        prev = here
    h = tuple(p.reshape(B, n_chunks * C, D) for p in h)
    if pad:
        h = tuple(p[:, pad:] if reverse else p[:, :N] for p in h)
    return h, tuple(p[:, 0] if reverse else p[:, -1] for p in h)


def _shifted(lam: Tensor, reverse: bool) -> Tensor:
    """Decay moduli of the backward scan: lam_{t+1} for a forward scan (lam_{t-1} for a
    reverse one); where the backward scan starts there is no state to decay (0). Its phase
    is -theta (conjugated decays)."""
    edge = lam.new_zeros(lam.shape[0], 1, lam.shape[2])
    return torch.cat([edge, lam[:, :-1]], 1) if reverse else torch.cat([lam[:, 1:], edge], 1)


def _times_previous_conj(d: Planes, h: Planes, h0: Optional[Planes], reverse: bool) -> Planes:
    """d_t * conj(h_{t-1}) for each t (h_{t+1} for a reverse scan; the initial state, or zero,
    at the edge), without building the shifted states. Complex: (Dr Pr + Di Pi,
    Di Pr - Dr Pi); real: (D P,)."""
    inner, edge = (slice(None, -1), -1) if reverse else (slice(1, None), 0)
    shift = slice(1, None) if reverse else slice(None, -1)
    prev = tuple(p[:, shift] for p in h)
    re = torch.empty_like(d[0])
    torch.mul(d[0][:, inner], prev[0], out=re[:, inner])
    if len(d) == 2:
        re[:, inner].addcmul_(d[1][:, inner], prev[1])
        im = torch.empty_like(d[0])
        torch.mul(d[1][:, inner], prev[0], out=im[:, inner])
        im[:, inner].addcmul_(d[0][:, inner], prev[1], value=-1)
    if h0 is None:
        re[:, edge] = 0
        if len(d) == 2:
            im[:, edge] = 0
    elif len(d) == 2:
        re[:, edge] = d[0][:, edge] * h0[0] + d[1][:, edge] * h0[1]
        im[:, edge] = d[1][:, edge] * h0[0] - d[0][:, edge] * h0[1]
    else:
        re[:, edge] = d[0][:, edge] * h0[0]
    return (re, im) if len(d) == 2 else (re,)


def _scan_backward(g: Planes, gN: Optional[Planes], lam: Tensor, theta: Optional[Tensor],
                   h: Planes, h0: Optional[Planes], reverse: bool):
    """Gradients of ``h = scan(x, lam e^{i theta}, h0)`` given dL/dh = g, dL/dh_final = gN.

    With D the total gradient of each state (a scan of g the other way, decays
    conj(a_{t+1})) and q = D conj(h_prev) e^{-i theta}:  dx = D, dlam = Re q,
    dtheta = sum lam Im q (docs/spec.md §5.1), dh0 = conj(a_first) D_first.
    Returns (dx planes, dlam, dtheta or None, dh0 planes or None).
    """
    if gN is not None:  # the final state is the state at the last step: its gradient adds there
        g = tuple(p.clone() for p in g)
        for p, n in zip(g, gN):
            p[:, 0 if reverse else -1] += n
    neg = None if theta is None else -theta
    d, _ = linear_scan(g, _shifted(lam, reverse), neg, None, not reverse)
    q = _times_previous_conj(d, h, h0, reverse)
    edge = -1 if reverse else 0
    if theta is None:
        dlam, dtheta = q[0], None
        dh0 = None if h0 is None else (lam[:, edge] * d[0][:, edge],)
    else:
        cos, sin = torch.cos(theta), torch.sin(theta)
        x, y = q  # q e^{-i theta} = (x cos + y sin) + i (y cos - x sin)
        dlam = x * cos
        dlam.addcmul_(y, sin)
        y.mul_(cos).addcmul_(x, sin, value=-1)
        dtheta = (y.mul_(lam)).sum((0, 1))
        dh0 = None
        if h0 is not None:
            le, dr, di = lam[:, edge], d[0][:, edge], d[1][:, edge]
            dh0 = (le * (cos * dr + sin * di), le * (cos * di - sin * dr))
    return d, dlam, dtheta, dh0


def _pair(re: Optional[Tensor], im: Optional[Tensor], dt) -> Optional[Planes]:
    if re is None and im is None:
        return None
    re = re if re is not None else torch.zeros_like(im)
    im = im if im is not None else torch.zeros_like(re)
    return re.to(dt), im.to(dt)


class TorchBackend(ScanBackend):
    name = "torch"
    description = "chunked scan in plain PyTorch (any device)"

    def is_available(self, device):
        return True

    def complex_forward(self, u, v, lam, theta, h0r, h0i, reverse):
        dt = compute_dtype(u.dtype)
        (hr, hi), (fr, fi) = linear_scan((u.to(dt), v.to(dt)), lam.to(dt), theta.to(dt),
                                         _pair(h0r, h0i, dt), reverse)
        return hr, hi, fr, fi

    def complex_backward(self, ghr, ghi, ghNr, ghNi, u, v, lam, theta, h0r, h0i, reverse):
        dt = compute_dtype(u.dtype)
        lam, theta, h0 = lam.to(dt), theta.to(dt), _pair(h0r, h0i, dt)
        h, _ = linear_scan((u.to(dt), v.to(dt)), lam, theta, h0, reverse)  # recomputed
        d, dlam, dtheta, dh0 = _scan_backward(_pair(ghr, ghi, dt), _pair(ghNr, ghNi, dt),
                                              lam, theta, h, h0, reverse)
        return (*d, dlam, dtheta, *(dh0 if dh0 is not None else (None, None)))

    def bidirectional_forward(self, u, v, lam, theta_f, theta_r):
        dt = compute_dtype(u.dtype)
        x, lam = (u.to(dt), v.to(dt)), lam.to(dt)
        h, _ = linear_scan(x, lam, theta_f.to(dt), None, False)
        h_rev, _ = linear_scan(x, lam, theta_r.to(dt), None, True)
        for p, q in zip(h, h_rev):
            p += q
        return h

    def bidirectional_backward(self, ghr, ghi, u, v, lam, theta_f, theta_r):
        dt = compute_dtype(u.dtype)
        x, lam, g = (u.to(dt), v.to(dt)), lam.to(dt), (ghr.to(dt), ghi.to(dt))
        grads = []
        for theta, reverse in ((theta_f.to(dt), False), (theta_r.to(dt), True)):
            h, _ = linear_scan(x, lam, theta, None, reverse)
            grads.append(_scan_backward(g, None, lam, theta, h, None, reverse))
        (df, dlam, dtf, _), (dr, dlam_r, dtr, _) = grads
        for p, q in zip(df, dr):  # both directions feed the same inputs: add in place
            p += q
        dlam += dlam_r
        return df[0], df[1], dlam, dtf, dtr

    def real_forward(self, x, lam, h0, reverse):
        dt = compute_dtype(x.dtype)
        (h,), (hN,) = linear_scan((x.to(dt),), lam.to(dt), None,
                                  None if h0 is None else (h0.to(dt),), reverse)
        return h, hN

    def real_backward(self, gh, ghN, x, lam, h0, reverse):
        dt = compute_dtype(x.dtype)
        lam, h0 = lam.to(dt), None if h0 is None else (h0.to(dt),)
        h, _ = linear_scan((x.to(dt),), lam, None, h0, reverse)
        (dx,), dlam, _, dh0 = _scan_backward((gh.to(dt),), None if ghN is None else (ghN.to(dt),),
                                             lam, None, h, h0, reverse)
        return dx, dlam, None if dh0 is None else dh0[0]
