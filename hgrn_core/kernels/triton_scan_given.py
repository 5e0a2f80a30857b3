"""The public scan API (``hgrn::complex_scan``, ``bidirectional_scan``, ``real_scan``) on the
walk kernels of the fused HGRU core (``triton_hgru_fwd`` / ``triton_hgru_bwd``), launched
with ``GIVEN=True``: the decays ``lam`` and the inputs ``x = u + i v`` are read as given
instead of being formed from a projection, and ``h`` (``du``, ``dv``, ``dlam``) are written
as separate (B, N, D) tensors. Launch configuration, segments and overrides are those of
``triton_hgru`` (``triton_hgru.override_config``). The design is in docs/triton.md.

    h_t = lam_t e^{i theta} h_{t-1} + (u_t + i v_t)        (reverse: h_{t+1})

Gradients: ``du + i dv = sum_dir D``, ``dlam = sum_dir Re(D conj(e^{i theta} h_prev))``
(the walk hands back the state entering each row: no division by lam, which may be 0),
``dtheta = Im(D conj(A h_prev))``, ``dh0 = conj(A_edge) D_edge``; D the gradient state of a
direction. Each function returns what the matching ``TritonBackend`` method returns; states
and per-channel sums in fp32 (fp64 for fp64 inputs), the op casts them.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .triton_hgru import (_acc_torch, _launch, _launch_config, _scratch, _seq_strides,
                          _shape_args, _vec, walks)
from .triton_hgru_bwd import _hgru_bwd_kernel
from .triton_hgru_fwd import _hgru_fwd_kernel

Tensor = torch.Tensor


def _layout(*ts: Optional[Tensor]):
    """The tensors (B, N, D) as the kernels read them: one pair of (batch, row) strides for
    all, unit channel stride, row stride < 2^24 (int32 in-tile offsets); else contiguous
    copies. None stays None."""
    given = [t for t in ts if t is not None]
    ref = given[0]
    ok = all(t.stride(-1) == 1 and t.stride()[:2] == ref.stride()[:2] for t in given)
    if not ok or ref.stride(1) >= 2 ** 24:
        ts = tuple(None if t is None else t.contiguous() for t in ts)
    return ts


def _pair(re: Optional[Tensor], im: Optional[Tensor], real: bool) -> Optional[Tensor]:
    """A state (B, W) = [Re | Im] from its parts (zeros for a missing half)."""
    if real or (re is None and im is None):
        return _vec(re)
    if re is None:
        re = torch.zeros_like(im)
    if im is None:
        im = torch.zeros_like(re)
    return torch.cat([re, im], -1)


def _split(s: Optional[Tensor], D: int, real: bool):
    if s is None:
        return None, None
    return (s, None) if real else (s[:, :D], s[:, D:])


def scan_forward(u: Tensor, v: Optional[Tensor], lam: Tensor, theta_f: Optional[Tensor],
                 theta_r: Optional[Tensor], h0: Optional[Tensor], direction: str
                 ) -> Tuple[Tensor, Optional[Tensor], Tensor]:
    """The scan in ``direction`` ('forward', 'reverse', 'both': the two summed). ``v`` None:
    the real scan. ``h0`` (B, W), W = D real or 2D [Re | Im], one direction only. Returns
    ``hr``, ``hi`` (None real) in ``u.dtype`` and the final state (B, W) (zeros for 'both')."""
    real = v is None
    u, v, lam = _layout(u, v, lam)
    B, N, D = u.shape
    W = D if real else 2 * D
    dev = u.device
    acc_t = _acc_torch(u.dtype)
    do_f, do_r, both = walks(direction)
    cfg = _launch_config(B, N, D, dev, bwd=False)
    hr = torch.empty(B, N, D, device=dev, dtype=u.dtype)
    hi = hr if real else torch.empty_like(hr)
    hN = torch.zeros(B, W, device=dev, dtype=acc_t)
    h0 = _vec(h0)
    args = dict(
        P=u, V=u if real else v, LAM=lam, **_seq_strides(u, "p"),
        H=hr, HI=hi, **_seq_strides(hr, "h"), HN=hN, H0=h0 if h0 is not None else hr, LB=hr,
        THF=_vec(theta_f) if (do_f and not real) else hr,
        THR=_vec(theta_r) if (do_r and not real) else hr,
        DO_F=do_f, DO_R=do_r, **_scratch(cfg, B, W, acc_t, both, hr, bwd=False),
        **_shape_args(cfg, N, D, u, real, None, h0, given=True))
    _launch(_hgru_fwd_kernel, cfg, B, pre=both, args=args)
    return hr, (None if real else hi), hN


def scan_backward(gr: Tensor, gi: Optional[Tensor], gN: Optional[Tensor], u: Tensor,
                  v: Optional[Tensor], lam: Tensor, theta_f: Optional[Tensor],
                  theta_r: Optional[Tensor], h0: Optional[Tensor], direction: str):
    """Gradients of :func:`scan_forward` from those of ``hr``, ``hi`` and of the final state
    ``gN`` (B, W) (None: zero). Returns ``du``, ``dv`` (None real), ``dlam`` in ``u.dtype``,
    ``dtheta_f``, ``dtheta_r`` (None where unused or real) and ``dh0`` (B, W) (None without
    ``h0``)."""
    real = v is None
    u, v, lam = _layout(u, v, lam)
    gr, gi = _layout(gr, None if real else gi)
    B, N, D = u.shape
    W = D if real else 2 * D
    dev = u.device
    acc_t = _acc_torch(u.dtype)
    do_f, do_r, both = walks(direction)
    if both:
        gN = h0 = None  # 'both' has neither an initial nor a final state
    cfg = _launch_config(B, N, D, dev, bwd=True)
    S = cfg.n_seg
    du = torch.empty(B, N, D, device=dev, dtype=u.dtype)
    dv = du if real else torch.empty_like(du)
    dlam = torch.empty_like(du)
    h0, gN = _vec(h0), _vec(gN)
    need_tf = do_f and not real
    need_tr = do_r and not real
    ptf = torch.empty(B * S, D, device=dev, dtype=acc_t) if need_tf else du
    ptr = torch.empty(B * S, D, device=dev, dtype=acc_t) if need_tr else du
    dh0 = torch.empty(B, W, device=dev, dtype=acc_t) if h0 is not None else None
    args = dict(
        P=u, V=u if real else v, LAM=lam, **_seq_strides(u, "p"),
        G=gr, GI=gr if real else gi, **_seq_strides(gr, "g"),
        GN=gN if gN is not None else du, H0=h0 if h0 is not None else du, LB=du,
        THF=_vec(theta_f) if need_tf else du, THR=_vec(theta_r) if need_tr else du,
        DP=du, DV=dv, DL=dlam, **_seq_strides(du, "d"), DH0=dh0 if dh0 is not None else du,
        PTF=ptf, PTR=ptr, PLB=du,
        HAS_GN=gN is not None, DO_F=do_f, DO_R=do_r, MAIN_REV=direction != "reverse",
        **_scratch(cfg, B, W, acc_t, True, du, bwd=True),
        **_shape_args(cfg, N, D, u, real, None, h0, given=True))
    _launch(_hgru_bwd_kernel, cfg, B, pre=True, args=args)
    dtf = ptf.sum(0) if need_tf else None
    dtr = ptr.sum(0) if need_tr else None
    return du, (None if real else dv), dlam, dtf, dtr, dh0


# --------------------------------------------------------- the TritonBackend's scan methods
def _direction(reverse: bool) -> str:
    return "reverse" if reverse else "forward"


def complex_forward(u, v, lam, theta, h0r, h0i, reverse):
    hr, hi, hN = scan_forward(u, v, lam, None if reverse else theta, theta if reverse else None,
                              _pair(h0r, h0i, False), _direction(reverse))
    D = u.shape[-1]
    return hr, hi, hN[:, :D], hN[:, D:]


def complex_backward(ghr, ghi, ghNr, ghNi, u, v, lam, theta, h0r, h0i, reverse):
    du, dv, dlam, dtf, dtr, dh0 = scan_backward(
        ghr, ghi, _pair(ghNr, ghNi, False), u, v, lam, None if reverse else theta,
        theta if reverse else None, _pair(h0r, h0i, False), _direction(reverse))
    dh0r, dh0i = _split(dh0, u.shape[-1], False)
    return du, dv, dlam, dtr if reverse else dtf, dh0r, dh0i


def bidirectional_forward(u, v, lam, theta_f, theta_r):
    hr, hi, _ = scan_forward(u, v, lam, theta_f, theta_r, None, "both")
    return hr, hi


def bidirectional_backward(ghr, ghi, u, v, lam, theta_f, theta_r):
    du, dv, dlam, dtf, dtr, _ = scan_backward(ghr, ghi, None, u, v, lam, theta_f, theta_r,
                                              None, "both")
    return du, dv, dlam, dtf, dtr


def real_forward(x, lam, h0, reverse):
    h, _, hN = scan_forward(x, None, lam, None, None, h0, _direction(reverse))
    return h, hN


def real_backward(gh, ghN, x, lam, h0, reverse):
    dx, _, dlam, _, _, dh0 = scan_backward(gh, None, ghN, x, None, lam, None, None, h0,
                                           _direction(reverse))
    return dx, dlam, dh0
