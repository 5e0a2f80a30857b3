"""The ``torch`` backend: a chunked scan in plain PyTorch, for any device.

The scan itself is ``chunked_scan.scan_in_place``: about 3 sqrt(N) ops, each on all chunks
at once, over a time-major layout whose values are complex (the HGRU's state) or real. It
never divides by a decay: products only shrink (lam <= 1), so long sequences with lam near
0 or near 1 stay finite and accurate; a product that underflows to 0 is the right limit.

``hgru_forward`` (the HGRU op's forward) builds the scan's inputs straight from the
projection in that layout, writing the gates into them (no separate gate tensors, no
planes), and writes the output once; its backward is the base class's composition of the
gates and ``linear_scan``, the same scan behind a batch-first, real-planes interface.

Gradients are hand-written (spec §5): the backward of a scan is the same scan run the
other way over the output gradients, with conjugated decays shifted by one step.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import ScanBackend, compute_dtype
from .chunked_scan import ChunkLayout, scan_in_place

Planes = Tuple[Tensor, ...]  # (real,) or (real, imag)


def _value_dtype(dt: torch.dtype, complex_valued: bool) -> torch.dtype:
    if not complex_valued:
        return dt
    return torch.complex128 if dt == torch.float64 else torch.complex64


def _planes(chunked: Tensor) -> Tensor:
    """A real view (C, B, n_chunks, P, D) of chunked values: P = 2 planes (real, imaginary)
    of a complex tensor, P = 1 of a real one."""
    if chunked.is_complex():
        return torch.view_as_real(chunked).transpose(-1, -2)
    return chunked.unsqueeze(-2)


def _decays(layout: ChunkLayout, lam: Tensor, theta: Optional[Tensor]) -> Tensor:
    """``lam e^{i theta}`` (``lam`` when theta is None) in the chunked layout, from ``lam``
    (B, N, D); 1 in the padding."""
    B, _, D = lam.shape
    a = layout.empty(B, D, dtype=_value_dtype(lam.dtype, theta is not None), device=lam.device)
    if theta is None:
        for part, l in layout.pairs((a,), (lam,)):
            part.copy_(l)
    else:
        re_im = torch.view_as_real(a)
        factors = (torch.cos(theta), torch.sin(theta))
        for plane, factor in enumerate(factors):
            for part, l in layout.pairs((re_im[..., plane],), (lam,)):
                torch.mul(l, factor, out=part)
    layout.fill_padding(a, 1.0)
    return a


def _state_value(h0: Optional[Planes]) -> Optional[Tensor]:
    if h0 is None:
        return None
    return torch.complex(*h0) if len(h0) == 2 else h0[0]


def linear_scan(x: Planes, lam: Tensor, theta: Optional[Tensor], h0: Optional[Planes],
                reverse: bool, chunk: Optional[int] = None) -> Tuple[Planes, Planes]:
    """``h_t = lam_t e^{i theta} h_{t-1} + x_t`` along dim 1 (``h_{t+1}`` when ``reverse``).

    ``x``: planes (real, imag) of (B, N, D), or (real,) with ``theta=None`` for the real
    scan; ``lam``: (B, N, D); ``theta``: (D,); ``h0``: planes of (B, D) or None.
    Returns the planes of ``h`` (B, N, D) and of the final state (B, D).
    """
    B, N, D = lam.shape
    layout = ChunkLayout(N, chunk)
    values = layout.empty(B, D, dtype=_value_dtype(lam.dtype, theta is not None),
                          device=lam.device)
    for plane, p in enumerate(x):
        for part, q in layout.pairs((_planes(values)[..., plane, :],), (p,)):
            part.copy_(q)
    layout.fill_padding(values, 0.0)
    h = scan_in_place(values, _decays(layout, lam, theta), _state_value(h0), reverse)
    out = tuple(torch.empty_like(lam) for _ in x)
    for plane, p in enumerate(out):
        for part, q in layout.pairs((_planes(h)[..., plane, :],), (p,)):
            q.copy_(part)
    last = _planes(layout.last(h, reverse).unsqueeze(1))[:, 0]  # (B, P, D)
    return out, tuple(last[:, plane].clone() for plane in range(len(x)))


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
    dtheta = sum lam Im q (spec §5), dh0 = conj(a_first) D_first.
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

    def hgru_forward(self, proj, lower_bound, theta_f, theta_r, h0, direction):
        """The gates written straight into the scan's chunked inputs, in place where a
        buffer is free (on a CPU a fresh full-size tensor costs more than an op on it):
        lam, then each direction's decays, then 1 - lam over lam, then x = (1 - lam)
        SiLU(c); each scan writes its states over its decays; one pass writes ``h``."""
        complex_ = theta_f is not None or theta_r is not None
        B, N, P = proj.shape
        d = P // (3 if complex_ else 2)
        W, dt = P - d, compute_dtype(proj.dtype)
        layout = ChunkLayout(N)
        lam = torch.sigmoid(proj[..., W:].to(dt))
        if lower_bound is not None:  # gamma + (1 - gamma) s, in one pass
            lb = lower_bound.to(dt)
            torch.addcmul(lb, lam, 1 - lb, out=lam)
        scans = [(theta, reverse) for theta, reverse, names in
                 ((theta_f, False, ("forward", "both")), (theta_r, True, ("reverse", "both")))
                 if direction in names]
        decays = [_decays(layout, lam, theta) for theta, _ in scans]
        silu_c = F.silu(proj[..., :W].to(dt)).unflatten(-1, (W // d, d))  # contiguous: fast
        values = layout.empty(B, d, dtype=_value_dtype(dt, complex_), device=proj.device)
        for part, c_part, l_part in layout.pairs((_planes(values),), (silu_c, lam.unsqueeze(-2))):
            torch.addcmul(c_part, c_part, l_part, value=-1, out=part)  # (1 - lam) SiLU(c)
        layout.fill_padding(values, 0.0)
        h0 = None if h0 is None else _state_value(h0.to(dt).chunk(W // d, -1))
        states = [scan_in_place(values, a, h0, reverse) for a, (_, reverse) in zip(decays, scans)]
        h = proj.new_empty(B, N, W)
        natural = h.unflatten(-1, (W // d, d))
        for parts in layout.pairs(tuple(_planes(s) for s in states), (natural,)):
            *scanned, out = parts
            if len(scanned) == 2:
                torch.add(*scanned, out=out)
            else:
                out.copy_(scanned[0])
        if direction == "both":
            return h, None
        last = _planes(layout.last(states[0], scans[0][1]).unsqueeze(1))[:, 0]  # (B, P, d)
        return h, last.reshape(B, W)

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
