"""The ``torch`` backend: a chunked scan in plain PyTorch, for any device.

The sequence is cut into chunks of C positions (C ~ sqrt(N)); every loop step below
works on all chunks at once, a (B, N/C, D) slice:

1. a loop of C steps runs each chunk from a zero state and keeps only its end state;
2. a loop of N/C steps carries the state across chunks, each chunk's total decay being
   prod(lam) * e^{i theta C} (one vectorised product);
3. a second loop of C steps re-runs each chunk from its carried state and writes the
   outputs directly.

That is about 2*sqrt(N) + sqrt(N) Python steps instead of N, and it never divides by a
decay: products only shrink (lam <= 1), so long sequences with lam near 0 or near 1 stay
finite and accurate; a product that underflows to 0 is the right limit. Per-step decays
lam_t e^{i theta} are formed on the (small, cache-resident) slice, never as a full
(B, N, D) complex tensor: on a CPU every full-size temporary costs fresh pages, which
measured more than the arithmetic.

The complex state uses torch's complex dtype (one fused op per complex multiply-add).
Gradients are hand-written (spec §5): the backward of a scan is the same scan run the
other way over the output gradients, with conjugated decays shifted by one step.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from .base import ScanBackend, compute_dtype


def chunk_size_for(n: int) -> int:
    """About sqrt(N), a power of two: balances the in-chunk and the carry loops."""
    return max(1, 2 ** math.ceil(math.log2(max(n, 1)) / 2))


def linear_scan(x: Tensor, lam: Tensor, rot: Optional[Tensor], h0: Optional[Tensor],
                reverse: bool, chunk: Optional[int] = None):
    """``h_t = lam_t * rot * h_{t-1} + x_t`` along dim 1 (``h_{t+1}`` when ``reverse``).

    ``x``: (B, N, D), real or complex; ``lam``: (B, N, D) real; ``rot``: (D,) complex
    (e^{i theta}) or None for a real scan; ``h0``: (B, D) or None.
    Returns ``h`` (B, N, D) and the final state (B, D).
    """
    B, N, D = x.shape
    C = chunk or chunk_size_for(N)
    n_chunks = -(-N // C)
    pad = n_chunks * C - N
    if pad:
        # Padding goes after the last position in scan order (the end of a forward scan, the
        # start of a reverse one), so the initial state still enters at the first real
        # position; padded outputs are dropped and the final state is read at the last
        # real position.
        zeros = x.new_zeros(B, pad, D), lam.new_zeros(B, pad, D)
        x = torch.cat([zeros[0], x] if reverse else [x, zeros[0]], 1)
        lam = torch.cat([zeros[1], lam] if reverse else [lam, zeros[1]], 1)
    xc = x.reshape(B, n_chunks, C, D)
    lc = lam.reshape(B, n_chunks, C, D)
    # the complex decays, built once: steps then multiply complex by complex (a real factor
    # in a complex op would be copied to complex at every step)
    ac = lc if rot is None else lc * rot
    steps = list(range(C - 1, -1, -1)) if reverse else list(range(C))

    if n_chunks == 1:
        state_in = None if h0 is None else h0.to(x.dtype).unsqueeze(1)
    else:
        # 1. each chunk's end state from a zero state, and its total decay
        end = xc[:, :, steps[0]]
        for j in steps[1:]:
            end = torch.addcmul(xc[:, :, j], ac[:, :, j], end)
        total = lc.prod(dim=2)
        if rot is not None:
            total = total * rot ** C
        # 2. the state entering each chunk
        state_in = torch.empty_like(end)
        state = h0.to(x.dtype) if h0 is not None else x.new_zeros(B, D)
        for k in (range(n_chunks - 1, -1, -1) if reverse else range(n_chunks)):
            state_in[:, k] = state
            state = torch.addcmul(end[:, k], total[:, k], state)
    # 3. every chunk again, from its entering state, writing the outputs
    h = torch.empty_like(xc)
    prev = state_in
    for j in steps:
        if prev is None:
            h[:, :, j] = xc[:, :, j]
        else:
            torch.addcmul(xc[:, :, j], ac[:, :, j], prev, out=h[:, :, j])
        prev = h[:, :, j]
    h = h.reshape(B, n_chunks * C, D)
    if pad:
        h = h[:, pad:] if reverse else h[:, :N]
    return h, (h[:, 0] if reverse else h[:, -1])


def _shifted(lam: Tensor, reverse: bool) -> Tensor:
    """Decay moduli of the backward scan: lam_{t+1} for a forward scan (lam_{t-1} for a
    reverse one); where the backward scan starts there is no state to decay (0). Its phase
    is conj(rot), passed separately."""
    edge = lam.new_zeros(lam.shape[0], 1, lam.shape[2])
    return torch.cat([edge, lam[:, :-1]], 1) if reverse else torch.cat([lam[:, 1:], edge], 1)


def _times_previous_conj(dstate: Tensor, h: Tensor, h0: Optional[Tensor], reverse: bool) -> Tensor:
    """dstate_t * conj(h_{t-1}) for each t (h_{t+1} for a reverse scan; the initial state, or
    zero, at the edge), written into one new tensor without building the shifted states."""
    q = torch.empty_like(dstate)
    inner, edge = (slice(None, -1), -1) if reverse else (slice(1, None), 0)
    shifted = h[:, 1:] if reverse else h[:, :-1]
    torch.mul(dstate[:, inner], shifted.conj(), out=q[:, inner])
    if h0 is None:
        q[:, edge] = 0
    else:
        q[:, edge] = dstate[:, edge] * h0.to(h.dtype).conj()
    return q


def _scan_backward(g: Tensor, gN: Optional[Tensor], lam: Tensor, rot: Optional[Tensor],
                   h: Tensor, h0: Optional[Tensor], reverse: bool):
    """Gradients of ``h = scan(x, lam * rot, h0)`` given dL/dh = g and dL/dh_final = gN.

    With D the total gradient of each state (a scan of g the other way, decays
    conj(a_{t+1})) and q = D * conj(rot * h_prev):  dx = D, dlam = Re q,
    dtheta = sum lam * Im q (spec §5), dh0 = conj(a_first) * D_first.
    """
    rot_c = None if rot is None else rot.conj()
    if gN is not None:  # the final state is the state at the last step: its gradient adds there
        g = g.clone()
        g[:, 0 if reverse else -1] += gN
    dstate, _ = linear_scan(g, _shifted(lam, reverse), rot_c, None, not reverse)
    q = _times_previous_conj(dstate, h, h0, reverse)
    if rot is not None:
        q *= rot_c
    dlam = q.real if rot is not None else q
    dtheta = None if rot is None else (lam * q.imag).sum((0, 1))
    dh0 = None
    if h0 is not None:
        edge = -1 if reverse else 0
        a_first = lam[:, edge] if rot is None else lam[:, edge] * rot
        dh0 = a_first.conj() * dstate[:, edge]
    return dstate, dlam, dtheta, dh0


def _complex(re: Optional[Tensor], im: Optional[Tensor], dtype: torch.dtype) -> Optional[Tensor]:
    if re is None and im is None:
        return None
    re = re if re is not None else torch.zeros_like(im)
    im = im if im is not None else torch.zeros_like(re)
    return torch.complex(re.to(dtype), im.to(dtype))


def _rotation(theta: Tensor, dtype: torch.dtype) -> Tensor:
    """e^{i theta} as a complex (D,) tensor."""
    return torch.polar(torch.ones_like(theta, dtype=dtype), theta.to(dtype))


class TorchBackend(ScanBackend):
    name = "torch"
    description = "chunked scan in plain PyTorch (any device)"

    def is_available(self, device):
        return True

    def complex_forward(self, u, v, lam, theta, h0r, h0i, reverse):
        dt = compute_dtype(u.dtype)
        h, hN = linear_scan(_complex(u, v, dt), lam.to(dt), _rotation(theta, dt),
                            _complex(h0r, h0i, dt), reverse)
        return h.real, h.imag, hN.real, hN.imag

    def complex_backward(self, ghr, ghi, ghNr, ghNi, u, v, lam, theta, h0r, h0i, reverse):
        dt = compute_dtype(u.dtype)
        lam, rot, h0 = lam.to(dt), _rotation(theta, dt), _complex(h0r, h0i, dt)
        h, _ = linear_scan(_complex(u, v, dt), lam, rot, h0, reverse)  # recomputed
        dx, dlam, dtheta, dh0 = _scan_backward(_complex(ghr, ghi, dt), _complex(ghNr, ghNi, dt),
                                               lam, rot, h, h0, reverse)
        return (dx.real, dx.imag, dlam, dtheta,
                None if dh0 is None else dh0.real, None if dh0 is None else dh0.imag)

    # Bidirectional: both directions share the complex input and the output gradient, so
    # they are built once (the base class would build them once per direction).
    def bidirectional_forward(self, u, v, lam, theta_f, theta_r):
        dt = compute_dtype(u.dtype)
        x, lam = _complex(u, v, dt), lam.to(dt)
        h, _ = linear_scan(x, lam, _rotation(theta_f, dt), None, False)
        h_rev, _ = linear_scan(x, lam, _rotation(theta_r, dt), None, True)
        h += h_rev
        return h.real, h.imag

    def bidirectional_backward(self, ghr, ghi, u, v, lam, theta_f, theta_r):
        dt = compute_dtype(u.dtype)
        x, lam, g = _complex(u, v, dt), lam.to(dt), _complex(ghr, ghi, dt)
        dx = dlam = None
        dthetas = []
        for theta, reverse in ((theta_f, False), (theta_r, True)):
            rot = _rotation(theta, dt)
            h, _ = linear_scan(x, lam, rot, None, reverse)
            d_x, d_lam, d_theta, _ = _scan_backward(g, None, lam, rot, h, None, reverse)
            if reverse:  # accumulate in place into the first direction's fresh tensors
                dx += d_x
                dlam += d_lam
            else:
                dx, dlam = d_x, d_lam
            dthetas.append(d_theta)
        return dx.real, dx.imag, dlam, dthetas[0], dthetas[1]

    def real_forward(self, x, lam, h0, reverse):
        dt = compute_dtype(x.dtype)
        return linear_scan(x.to(dt), lam.to(dt), None, None if h0 is None else h0.to(dt), reverse)

    def real_backward(self, gh, ghN, x, lam, h0, reverse):
        dt = compute_dtype(x.dtype)
        lam, h0 = lam.to(dt), None if h0 is None else h0.to(dt)
        h, _ = linear_scan(x.to(dt), lam, None, h0, reverse)
        dx, dlam, _, dh0 = _scan_backward(gh.to(dt), None if ghN is None else ghN.to(dt),
                                          lam, None, h, h0, reverse)
        return dx, dlam, dh0
