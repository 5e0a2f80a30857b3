"""Triton kernels for the HGRN complex (and real) linear-recurrence scan.

    h_t = lam_t e^{i theta} h_{t-1} + (u_t + i v_t)        (reverse: h_{t+1})

Layout: every sequence tensor is a contiguous ``(B, N, D)`` array (the Python wrappers
call ``.contiguous()``, a no-op for the usual layout). A program owns ``BLOCK_D``
channels of one batch row and one *tile* of ``BLOCK_T`` positions; inside a tile the
recurrence is an associative scan over the time axis (``tl.associative_scan``) of pairs
``(decay, input)``, so a tile is read once and written once. ``a = lam cos(theta)`` and
``b = lam sin(theta)`` are formed in registers, never in memory. State and accumulation
are fp32 (fp64 for fp64 inputs); outputs are stored in the input dtype.

Sequences longer than one tile:
  * single-direction forward with enough ``(batch, channel-block)`` programs: one program
    walks its tiles in scan order and keeps the carry in registers (one read, one write);
  * otherwise (few programs, or the fused bidirectional / backward kernels): the chunked
    scheme. Pass 1 (``STORE_SUM``) scans every tile from a zero state and writes its end
    state and total decay; pass 2 (``_carry_kernel``) scans these few summaries across
    tiles; pass 3 re-scans each tile from its carry and writes the outputs. Nothing is ever
    divided by a decay, so lam near 0 or 1 is safe (docs/spec.md §6).

Backward (docs/spec.md §5.1) recomputes the states: the op saves only inputs. Per direction the
gradient state ``D_t = G_t + conj(A_{t+1}) D_{t+1}`` is a scan in the opposite direction
whose decays are shifted by one step (loaded at ``t+1``); ``h_{t-1}`` comes from a scan over
inputs loaded at ``t-1`` whose first row is replaced by the tile's carry-in state. dtheta is
written as per-(batch, tile) partial sums and reduced in torch (deterministic).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import triton
import triton.language as tl

from .launch_overrides import LaunchOverrides


# ------------------------------------------------------------------------- device helpers
@triton.jit
def _cplx_combine(ar1, ai1, xr1, xi1, ar2, ai2, xr2, xi2):
    # (A1, X1) then (A2, X2):  A = A2 A1,  X = A2 X1 + X2  (complex)
    return (ar2 * ar1 - ai2 * ai1, ar2 * ai1 + ai2 * ar1,
            ar2 * xr1 - ai2 * xi1 + xr2, ar2 * xi1 + ai2 * xr1 + xi2)


@triton.jit
def _real_combine(a1, x1, a2, x2):
    return a2 * a1, a2 * x1 + x2


@triton.jit
def _row(x, rows, idx):
    """Row ``idx`` of a (BLOCK_T, BLOCK_D) tile as a (BLOCK_D,) vector."""
    return tl.sum(tl.where(rows[:, None] == idx, x, 0.0), axis=0)


@triton.jit
def _load_vec(P, idx, mask, ACC: tl.constexpr):
    return tl.load(P + idx, mask=mask, other=0.0).to(ACC)


# ---------------------------------------------------------------------------- forward
@triton.jit
def _fwd_kernel(U, V, LAM, THF, THR,
                CFR, CFI, CRR, CRI, c_sb, c_sg,
                HR, HI,
                EFR, EFI, PFR, PFI, ERR, ERI, PRR, PRI,
                N, D, TPP,
                BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
                DO_F: tl.constexpr, DO_R: tl.constexpr,
                HAS_CF: tl.constexpr, HAS_CR: tl.constexpr,
                STORE_H: tl.constexpr, STORE_SUM: tl.constexpr,
                REAL: tl.constexpr, ACC: tl.constexpr):
    """Scan TPP consecutive tiles (group ``program_id(2)``) in one or both directions.

    Carries (state entering the group) are read from C* at ``b*c_sb + g*c_sg + d``.
    STORE_H writes h (sum of both directions); STORE_SUM writes the group's end state and
    total decay per direction at ``(b*G + g)*D + d`` (fp32 summaries / final states).
    """
    pid_d = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    g = tl.program_id(2).to(tl.int64)
    n_groups = tl.num_programs(2).to(tl.int64)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    md = offs_d < D
    rows = tl.arange(0, BLOCK_T)
    seq = b * N * D
    cidx = b * c_sb + g * c_sg + offs_d
    sidx = (b * n_groups + g) * D + offs_d

    if DO_F:
        if HAS_CF:
            fr = _load_vec(CFR, cidx, md, ACC)
        else:
            fr = tl.zeros([BLOCK_D], ACC)
        pfr = tl.full([BLOCK_D], 1.0, ACC)
        if not REAL:
            thf = _load_vec(THF, offs_d, md, ACC)
            cosf = tl.cos(thf)
            sinf = tl.sin(thf)
            if HAS_CF:
                fi = _load_vec(CFI, cidx, md, ACC)
            else:
                fi = tl.zeros([BLOCK_D], ACC)
            pfi = tl.zeros([BLOCK_D], ACC)
    if DO_R:
        if HAS_CR:
            rr = _load_vec(CRR, cidx, md, ACC)
        else:
            rr = tl.zeros([BLOCK_D], ACC)
        prr = tl.full([BLOCK_D], 1.0, ACC)
        if not REAL:
            thr = _load_vec(THR, offs_d, md, ACC)
            cosr = tl.cos(thr)
            sinr = tl.sin(thr)
            if HAS_CR:
                ri = _load_vec(CRI, cidx, md, ACC)
            else:
                ri = tl.zeros([BLOCK_D], ACC)
            pri = tl.zeros([BLOCK_D], ACC)

    for k in range(TPP):
        if DO_F:
            tile = g * TPP + k
        else:
            tile = g * TPP + (TPP - 1 - k)
        t = tile * BLOCK_T + rows
        mt = t < N
        m2 = mt[:, None] & md[None, :]
        off = seq + t[:, None] * D + offs_d[None, :]
        u = tl.load(U + off, mask=m2, other=0.0).to(ACC)
        lam = tl.load(LAM + off, mask=m2, other=1.0).to(ACC)
        if not REAL:
            v = tl.load(V + off, mask=m2, other=0.0).to(ACC)

        if DO_F:
            if REAL:
                ar = tl.where(mt[:, None], lam, 1.0)
                acr, xr = tl.associative_scan((ar, u), 0, _real_combine)
                hfr = xr + acr * fr[None, :]
                fr = _row(hfr, rows, BLOCK_T - 1)
                if STORE_SUM:
                    pfr = pfr * _row(acr, rows, BLOCK_T - 1)
            else:
                ar = tl.where(mt[:, None], lam * cosf[None, :], 1.0)
                ai = tl.where(mt[:, None], lam * sinf[None, :], 0.0)
                acr, aci, xr, xi = tl.associative_scan((ar, ai, u, v), 0, _cplx_combine)
                hfr = xr + acr * fr[None, :] - aci * fi[None, :]
                hfi = xi + acr * fi[None, :] + aci * fr[None, :]
                fr = _row(hfr, rows, BLOCK_T - 1)
                fi = _row(hfi, rows, BLOCK_T - 1)
                if STORE_SUM:
                    lr = _row(acr, rows, BLOCK_T - 1)
                    li = _row(aci, rows, BLOCK_T - 1)
                    pfr, pfi = lr * pfr - li * pfi, lr * pfi + li * pfr
        if DO_R:
            if REAL:
                ar = tl.where(mt[:, None], lam, 1.0)
                acr, xr = tl.associative_scan((ar, u), 0, _real_combine, reverse=True)
                hrr = xr + acr * rr[None, :]
                rr = _row(hrr, rows, 0)
                if STORE_SUM:
                    prr = prr * _row(acr, rows, 0)
            else:
                ar = tl.where(mt[:, None], lam * cosr[None, :], 1.0)
                ai = tl.where(mt[:, None], lam * sinr[None, :], 0.0)
                acr, aci, xr, xi = tl.associative_scan((ar, ai, u, v), 0, _cplx_combine,
                                                       reverse=True)
                hrr = xr + acr * rr[None, :] - aci * ri[None, :]
                hri = xi + acr * ri[None, :] + aci * rr[None, :]
                rr = _row(hrr, rows, 0)
                ri = _row(hri, rows, 0)
                if STORE_SUM:
                    lr = _row(acr, rows, 0)
                    li = _row(aci, rows, 0)
                    prr, pri = lr * prr - li * pri, lr * pri + li * prr

        if STORE_H:
            if DO_F and DO_R:
                outr = hfr + hrr
                if not REAL:
                    outi = hfi + hri
            elif DO_F:
                outr = hfr
                if not REAL:
                    outi = hfi
            else:
                outr = hrr
                if not REAL:
                    outi = hri
            tl.store(HR + off, outr.to(HR.dtype.element_ty), mask=m2)
            if not REAL:
                tl.store(HI + off, outi.to(HI.dtype.element_ty), mask=m2)

    if STORE_SUM:
        if DO_F:
            tl.store(EFR + sidx, fr, mask=md)
            tl.store(PFR + sidx, pfr, mask=md)
            if not REAL:
                tl.store(EFI + sidx, fi, mask=md)
                tl.store(PFI + sidx, pfi, mask=md)
        if DO_R:
            tl.store(ERR + sidx, rr, mask=md)
            tl.store(PRR + sidx, prr, mask=md)
            if not REAL:
                tl.store(ERI + sidx, ri, mask=md)
                tl.store(PRI + sidx, pri, mask=md)


# ------------------------------------------------------------------------ carry across tiles
@triton.jit
def _carry_kernel(ER, EI, PR, PI, H0R, H0I, CR, CI, FR, FI, G, D,
                  BLOCK_D: tl.constexpr, HAS_H0: tl.constexpr, REVERSE: tl.constexpr,
                  REAL: tl.constexpr, ACC: tl.constexpr):
    """Sequential scan over the G tile summaries (end state E, total decay P) of one
    (batch, channel block): writes the state entering every tile (C) and the final state."""
    pid_d = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    md = offs_d < D
    if HAS_H0:
        sr = _load_vec(H0R, b * D + offs_d, md, ACC)
    else:
        sr = tl.zeros([BLOCK_D], ACC)
    if not REAL:
        if HAS_H0:
            si = _load_vec(H0I, b * D + offs_d, md, ACC)
        else:
            si = tl.zeros([BLOCK_D], ACC)
    for k in range(G):
        if REVERSE:
            gg = G - 1 - k
        else:
            gg = k
        idx = (b * G + gg) * D + offs_d
        tl.store(CR + idx, sr, mask=md)
        er = _load_vec(ER, idx, md, ACC)
        pr = _load_vec(PR, idx, md, ACC)
        if REAL:
            sr = er + pr * sr
        else:
            tl.store(CI + idx, si, mask=md)
            ei = _load_vec(EI, idx, md, ACC)
            pi = _load_vec(PI, idx, md, ACC)
            sr, si = er + pr * sr - pi * si, ei + pr * si + pi * sr
    tl.store(FR + b * D + offs_d, sr, mask=md)
    if not REAL:
        tl.store(FI + b * D + offs_d, si, mask=md)


# ---------------------------------------------------------------------------- backward
@triton.jit
def _bwd_kernel(U, V, LAM, GR, GI, THF, THR,
                HFR, HFI, HRR, HRI, h_sb, h_sg,
                QFR, QFI, QRR, QRI, q_sb, q_sg,
                DU, DV, DLAM, DTF, DTR,
                EFR, EFI, PFR, PFI, ERR, ERI, PRR, PRI,
                N, D,
                BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
                DO_F: tl.constexpr, DO_R: tl.constexpr,
                HAS_HF: tl.constexpr, HAS_HR: tl.constexpr,
                HAS_QF: tl.constexpr, HAS_QR: tl.constexpr,
                SUMMARY: tl.constexpr, REAL: tl.constexpr, ACC: tl.constexpr):
    """One tile (``program_id(2)``) of the backward pass, both directions fused.

    H* are the state carries (h entering the tile in its scan order), Q* the gradient
    carries (D entering the tile in the backward scan's order). SUMMARY only scans the
    gradient state from zero and writes its tile end state / total decay (pass 1).
    """
    pid_d = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    g = tl.program_id(2).to(tl.int64)
    n_tiles = tl.num_programs(2).to(tl.int64)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    md = offs_d < D
    rows = tl.arange(0, BLOCK_T)
    seq = b * N * D
    hidx = b * h_sb + g * h_sg + offs_d
    qidx = b * q_sb + g * q_sg + offs_d
    sidx = (b * n_tiles + g) * D + offs_d

    t = g * BLOCK_T + rows
    mt = t < N
    m2 = mt[:, None] & md[None, :]
    off = seq + t[:, None] * D + offs_d[None, :]
    m_next = (t + 1 < N)[:, None] & md[None, :]      # position t+1 exists
    m_prev = ((t >= 1) & (t <= N))[:, None] & md[None, :]  # position t-1 exists
    first = rows[:, None] == 0
    last = rows[:, None] == BLOCK_T - 1

    gr = tl.load(GR + off, mask=m2, other=0.0).to(ACC)
    if not REAL:
        gi = tl.load(GI + off, mask=m2, other=0.0).to(ACC)
    lam_next = tl.load(LAM + off + D, mask=m_next, other=0.0).to(ACC)
    lam_prev = tl.load(LAM + off - D, mask=m_prev, other=0.0).to(ACC)
    if not SUMMARY:
        lam = tl.load(LAM + off, mask=m2, other=0.0).to(ACC)
        u_next = tl.load(U + off + D, mask=m_next, other=0.0).to(ACC)
        u_prev = tl.load(U + off - D, mask=m_prev, other=0.0).to(ACC)
        if not REAL:
            v_next = tl.load(V + off + D, mask=m_next, other=0.0).to(ACC)
            v_prev = tl.load(V + off - D, mask=m_prev, other=0.0).to(ACC)
        dur = tl.zeros([BLOCK_T, BLOCK_D], ACC)
        dlam = tl.zeros([BLOCK_T, BLOCK_D], ACC)
        if not REAL:
            dvr = tl.zeros([BLOCK_T, BLOCK_D], ACC)

    # -- forward direction: D_t = G_t + conj(A_{t+1}) D_{t+1} (a reverse scan), h_{t-1} --
    if DO_F:
        if not REAL:
            thf = _load_vec(THF, offs_d, md, ACC)
            cf = tl.cos(thf)
            sf = tl.sin(thf)
        if REAL:
            ar = tl.where(m_next, lam_next, 1.0)
            acr, xr = tl.associative_scan((ar, gr), 0, _real_combine, reverse=True)
        else:
            ar = tl.where(m_next, lam_next * cf[None, :], 1.0)
            ai = tl.where(m_next, -lam_next * sf[None, :], 0.0)
            acr, aci, xr, xi = tl.associative_scan((ar, ai, gr, gi), 0, _cplx_combine,
                                                   reverse=True)
        if SUMMARY:
            tl.store(EFR + sidx, _row(xr, rows, 0), mask=md)
            tl.store(PFR + sidx, _row(acr, rows, 0), mask=md)
            if not REAL:
                tl.store(EFI + sidx, _row(xi, rows, 0), mask=md)
                tl.store(PFI + sidx, _row(aci, rows, 0), mask=md)
        else:
            if HAS_QF:
                qr = _load_vec(QFR, qidx, md, ACC)
            else:
                qr = tl.zeros([BLOCK_D], ACC)
            if REAL:
                dr = xr + acr * qr[None, :]
            else:
                if HAS_QF:
                    qi = _load_vec(QFI, qidx, md, ACC)
                else:
                    qi = tl.zeros([BLOCK_D], ACC)
                dr = xr + acr * qr[None, :] - aci * qi[None, :]
                di = xi + acr * qi[None, :] + aci * qr[None, :]
            # h_{t-1}: scan of inputs at t-1, the tile's carry-in injected at row 0
            if HAS_HF:
                cr = _load_vec(HFR, hidx, md, ACC)
            else:
                cr = tl.zeros([BLOCK_D], ACC)
            if REAL:
                pa = tl.where(first, 0.0, tl.where(m_prev, lam_prev, 1.0))
                px = tl.where(first, cr[None, :], u_prev)
                _, hpr = tl.associative_scan((pa, px), 0, _real_combine)
                dlam += dr * hpr
            else:
                if HAS_HF:
                    ci = _load_vec(HFI, hidx, md, ACC)
                else:
                    ci = tl.zeros([BLOCK_D], ACC)
                par = tl.where(first, 0.0, tl.where(m_prev, lam_prev * cf[None, :], 1.0))
                pai = tl.where(first, 0.0, tl.where(m_prev, lam_prev * sf[None, :], 0.0))
                pxr = tl.where(first, cr[None, :], u_prev)
                pxi = tl.where(first, ci[None, :], v_prev)
                _, _, hpr, hpi = tl.associative_scan((par, pai, pxr, pxi), 0, _cplx_combine)
                dar = dr * hpr + di * hpi
                dai = di * hpr - dr * hpi
                dlam += dar * cf[None, :] + dai * sf[None, :]
                dth = tl.where(m2, lam * (dai * cf[None, :] - dar * sf[None, :]), 0.0)
                tl.store(DTF + sidx, tl.sum(dth, axis=0), mask=md)
                dvr += di
            dur += dr

    # -- reverse direction: D_t = G_t + conj(A_{t-1}) D_{t-1} (a forward scan), h_{t+1} --
    if DO_R:
        if not REAL:
            thr = _load_vec(THR, offs_d, md, ACC)
            cr_ = tl.cos(thr)
            sr_ = tl.sin(thr)
        if REAL:
            ar = tl.where(m_prev, lam_prev, 1.0)
            acr, xr = tl.associative_scan((ar, gr), 0, _real_combine)
        else:
            ar = tl.where(m_prev, lam_prev * cr_[None, :], 1.0)
            ai = tl.where(m_prev, -lam_prev * sr_[None, :], 0.0)
            acr, aci, xr, xi = tl.associative_scan((ar, ai, gr, gi), 0, _cplx_combine)
        if SUMMARY:
            tl.store(ERR + sidx, _row(xr, rows, BLOCK_T - 1), mask=md)
            tl.store(PRR + sidx, _row(acr, rows, BLOCK_T - 1), mask=md)
            if not REAL:
                tl.store(ERI + sidx, _row(xi, rows, BLOCK_T - 1), mask=md)
                tl.store(PRI + sidx, _row(aci, rows, BLOCK_T - 1), mask=md)
        else:
            if HAS_QR:
                qr = _load_vec(QRR, qidx, md, ACC)
            else:
                qr = tl.zeros([BLOCK_D], ACC)
            if REAL:
                dr = xr + acr * qr[None, :]
            else:
                if HAS_QR:
                    qi = _load_vec(QRI, qidx, md, ACC)
                else:
                    qi = tl.zeros([BLOCK_D], ACC)
                dr = xr + acr * qr[None, :] - aci * qi[None, :]
                di = xi + acr * qi[None, :] + aci * qr[None, :]
            if HAS_HR:
                cr = _load_vec(HRR, hidx, md, ACC)
            else:
                cr = tl.zeros([BLOCK_D], ACC)
            if REAL:
                pa = tl.where(last, 0.0, tl.where(m_next, lam_next, 1.0))
                px = tl.where(last, cr[None, :], u_next)
                _, hpr = tl.associative_scan((pa, px), 0, _real_combine, reverse=True)
                dlam += dr * hpr
            else:
                if HAS_HR:
                    ci = _load_vec(HRI, hidx, md, ACC)
                else:
                    ci = tl.zeros([BLOCK_D], ACC)
                par = tl.where(last, 0.0, tl.where(m_next, lam_next * cr_[None, :], 1.0))
                pai = tl.where(last, 0.0, tl.where(m_next, lam_next * sr_[None, :], 0.0))
                pxr = tl.where(last, cr[None, :], u_next)
                pxi = tl.where(last, ci[None, :], v_next)
                _, _, hpr, hpi = tl.associative_scan((par, pai, pxr, pxi), 0, _cplx_combine,
                                                     reverse=True)
                dar = dr * hpr + di * hpi
                dai = di * hpr - dr * hpi
                dlam += dar * cr_[None, :] + dai * sr_[None, :]
                dth = tl.where(m2, lam * (dai * cr_[None, :] - dar * sr_[None, :]), 0.0)
                tl.store(DTR + sidx, tl.sum(dth, axis=0), mask=md)
                dvr += di
            dur += dr

    if not SUMMARY:
        tl.store(DU + off, dur.to(DU.dtype.element_ty), mask=m2)
        tl.store(DLAM + off, dlam.to(DLAM.dtype.element_ty), mask=m2)
        if not REAL:
            tl.store(DV + off, dvr.to(DV.dtype.element_ty), mask=m2)


# ------------------------------------------------------------------------------ launch config
_OVERRIDE = LaunchOverrides()


def override_config(**kwargs):
    """Force launch parameters (for tests and tuning): ``block_t``, ``block_d``,
    ``chunked`` (True: the 3-pass chunk-parallel scheme whenever N spans several tiles;
    False: never for single-direction forwards), ``target_programs``, ``num_warps``."""
    return _OVERRIDE.forcing(**kwargs)


# elements of one (BLOCK_T, BLOCK_D) tile: bounds registers per program (untuned on GPU)
TILE_ELEMS_FWD = 4096
TILE_ELEMS_BWD = 2048
MIN_BLOCK_T = 64
MIN_BLOCK_D = 8


def _pow2(n: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(n, 1))))


def _target_programs(device: torch.device) -> int:
    if "target_programs" in _OVERRIDE:
        return _OVERRIDE["target_programs"]
    if device.type == "cuda":
        return 2 * torch.cuda.get_device_properties(device).multi_processor_count
    return 1  # the interpreter: parallelism buys nothing


class _Config:
    def __init__(self, B, N, D, device, elems, single_forward):
        # widest channel block (<= 32) that still lets the whole sequence fit one tile,
        # but at least MIN_BLOCK_D channels (32-byte fp32 rows) per program
        bd = _OVERRIDE.get("block_d") or min(32, _pow2(D), max(MIN_BLOCK_D, elems // _pow2(N)))
        bt = _OVERRIDE.get("block_t") or min(_pow2(N), max(1, elems // bd))
        n_bd = B * triton.cdiv(D, bd)
        target = _target_programs(device)
        if "block_t" not in _OVERRIDE and n_bd * triton.cdiv(N, bt) < target:
            # few (batch, channel-block) programs for a long sequence: cut it into more,
            # smaller tiles so that the chunk-parallel scheme fills the GPU
            want = triton.cdiv(target, n_bd)
            bt = max(min(bt, MIN_BLOCK_T), min(bt, _pow2(triton.cdiv(N, want))))
        self.block_d, self.block_t = bd, bt
        self.n_dblk = triton.cdiv(D, bd)
        self.n_tiles = triton.cdiv(N, bt)
        chunked = _OVERRIDE.get("chunked")
        if chunked is None:
            chunked = not single_forward or n_bd < target
        self.chunked = self.n_tiles > 1 and (chunked or not single_forward)
        self.num_warps = _OVERRIDE.get("num_warps") or (8 if bt * bd >= 4096 else 4)


def _acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _acc_torch(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _c(x: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """Kernels index (B, N, D) / (B, D) / (D,) tensors as dense row-major arrays."""
    return None if x is None else x.contiguous()


def _summary_buffers(B, G, D, device, dt, n):
    return [torch.empty(B, G, D, device=device, dtype=dt) for _ in range(n)]


def _summary_args(sf, sr) -> dict:
    """Per-tile summary buffers (end state re/im, total decay re/im) of each direction."""
    return dict(EFR=sf[0], EFI=sf[1], PFR=sf[2], PFI=sf[3],
                ERR=sr[0], ERI=sr[1], PRR=sr[2], PRI=sr[3])


def _run_carry(cfg, B, D, ends, decs, h0r, h0i, reverse, real, dt, device):
    """Pass 2: state entering every tile + final state, from per-tile summaries."""
    G = ends[0].shape[1]
    cr = torch.empty(B, G, D, device=device, dtype=dt)
    ci = cr if real else torch.empty_like(cr)
    fr = torch.empty(B, D, device=device, dtype=dt)
    fi = fr if real else torch.empty_like(fr)
    has_h0 = h0r is not None
    _carry_kernel[(cfg.n_dblk, B)](
        ER=ends[0], EI=ends[-1], PR=decs[0], PI=decs[-1],
        H0R=h0r if has_h0 else fr, H0I=h0i if has_h0 and not real else fr,
        CR=cr, CI=ci, FR=fr, FI=fi, G=G, D=D,
        BLOCK_D=cfg.block_d, HAS_H0=has_h0, REVERSE=reverse, REAL=real, ACC=_acc(dt))
    return cr, ci, fr, fi


# ------------------------------------------------------------------------------- forward API
def scan_forward(u, v, lam, theta_f, theta_r, h0r=None, h0i=None, *,
                 forward: bool = True, backward_dir: bool = False):
    """Forward scan. ``forward``/``backward_dir`` select the directions (both: the fused
    bidirectional scan, states summed, no initial/final state). ``v``/``theta`` None: the
    real scan. Returns ``hr, hi, hNr, hNi`` (hi/hN* None where not applicable)."""
    real = v is None
    u, v, lam = _c(u), _c(v), _c(lam)
    B, N, D = u.shape
    device, dt = u.device, _acc_torch(u.dtype)
    do_f, do_r = forward, backward_dir
    both = do_f and do_r
    cfg = _Config(B, N, D, device, TILE_ELEMS_FWD, single_forward=not both)
    thf = _c(theta_f) if not real and do_f else u
    thr = _c(theta_r) if not real and do_r else u
    h0r, h0i = _c(h0r), _c(h0i)
    hr = torch.empty_like(u)
    hi = hr if real else torch.empty_like(u)
    vv = u if real else v
    acc = _acc(dt)
    dims = dict(BLOCK_T=cfg.block_t, BLOCK_D=cfg.block_d, REAL=real, ACC=acc,
                num_warps=cfg.num_warps)

    if not cfg.chunked:
        # one group of all tiles per program, carry in registers
        G = 1
        ends = _summary_buffers(B, G, D, device, dt, 4)
        c = h0r if h0r is not None else hr
        ci = h0i if (h0i is not None and not real) else c
        has = h0r is not None
        _fwd_kernel[(cfg.n_dblk, B, 1)](
            U=u, V=vv, LAM=lam, THF=thf, THR=thr,
            CFR=c, CFI=ci, CRR=c, CRI=ci, c_sb=D, c_sg=0, HR=hr, HI=hi,
            **_summary_args(ends, ends), N=N, D=D, TPP=cfg.n_tiles,
            DO_F=do_f, DO_R=do_r, HAS_CF=has and do_f, HAS_CR=has and do_r,
            STORE_H=True, STORE_SUM=not both, **dims)
        if both:
            return hr, (None if real else hi), None, None
        return hr, (None if real else hi), ends[0][:, 0], (None if real else ends[1][:, 0])

    # chunk-parallel: pass 1 summaries, pass 2 carries, pass 3 outputs
    T = cfg.n_tiles
    sf = _summary_buffers(B, T, D, device, dt, 4)
    sr = _summary_buffers(B, T, D, device, dt, 4)
    _fwd_kernel[(cfg.n_dblk, B, T)](
        U=u, V=vv, LAM=lam, THF=thf, THR=thr,
        CFR=hr, CFI=hr, CRR=hr, CRI=hr, c_sb=0, c_sg=0, HR=hr, HI=hi,
        **_summary_args(sf, sr), N=N, D=D, TPP=1,
        DO_F=do_f, DO_R=do_r, HAS_CF=False, HAS_CR=False, STORE_H=False, STORE_SUM=True,
        **dims)
    carries = {}
    for name, on, rev, s in (("f", do_f, False, sf), ("r", do_r, True, sr)):
        if on:
            carries[name] = _run_carry(cfg, B, D, (s[0], s[1]), (s[2], s[3]),
                                       h0r if not both else None, h0i if not both else None,
                                       rev, real, dt, device)
    cf = carries.get("f", (hr, hr, None, None))
    cr = carries.get("r", (hr, hr, None, None))
    _fwd_kernel[(cfg.n_dblk, B, T)](
        U=u, V=vv, LAM=lam, THF=thf, THR=thr,
        CFR=cf[0], CFI=cf[1], CRR=cr[0], CRI=cr[1], c_sb=T * D, c_sg=D, HR=hr, HI=hi,
        **_summary_args(sf, sr), N=N, D=D, TPP=1,
        DO_F=do_f, DO_R=do_r, HAS_CF=do_f, HAS_CR=do_r, STORE_H=True, STORE_SUM=False,
        **dims)
    if both:
        return hr, (None if real else hi), None, None
    fin = cf if do_f else cr
    return hr, (None if real else hi), fin[2], (None if real else fin[3])


# ------------------------------------------------------------------------------ backward API
def scan_backward(ghr, ghi, ghNr, ghNi, u, v, lam, theta_f, theta_r, h0r=None, h0i=None, *,
                  forward: bool = True, backward_dir: bool = False):
    """Gradients of :func:`scan_forward`. Returns ``du, dv, dlam, dtheta_f, dtheta_r,
    dh0r, dh0i`` (None where not applicable)."""
    real = v is None
    u, v, lam, ghr, ghi = _c(u), _c(v), _c(lam), _c(ghr), _c(ghi)
    B, N, D = u.shape
    device, dt = u.device, _acc_torch(u.dtype)
    do_f, do_r = forward, backward_dir
    both = do_f and do_r
    cfg = _Config(B, N, D, device, TILE_ELEMS_BWD, single_forward=False)
    T = cfg.n_tiles
    acc = _acc(dt)
    thf = _c(theta_f) if not real and do_f else u
    thr = _c(theta_r) if not real and do_r else u
    vv = u if real else v
    gii = ghr if real else ghi
    h0r, h0i = _c(h0r), _c(h0i)
    if ghNr is not None or ghNi is not None:
        ghNr = _c(ghNr) if ghNr is not None else torch.zeros_like(ghNi)
        if not real:
            ghNi = _c(ghNi) if ghNi is not None else torch.zeros_like(ghNr)
    dims = dict(BLOCK_T=cfg.block_t, BLOCK_D=cfg.block_d, REAL=real, ACC=acc,
                num_warps=cfg.num_warps)
    du = torch.empty_like(u)
    dv = du if real else torch.empty_like(u)
    dlam = torch.empty_like(lam)
    dtf = torch.empty(B, T, D, device=device, dtype=dt) if do_f and not real else du
    dtr = torch.empty(B, T, D, device=device, dtype=dt) if do_r and not real else du

    dummy = du
    if T == 1:
        # carries are the initial state (h) and the final-state gradient (D)
        hc = (h0r, h0i if not real else h0r) if h0r is not None else None
        qc = (ghNr, ghNi if not real else ghNr) if ghNr is not None else None
        hf = hc if do_f and not both else None
        hrv = hc if do_r and not both else None
        qf = qc if do_f and not both else None
        qrv = qc if do_r and not both else None
        h_strides, q_strides = (D, 0), (D, 0)
    else:
        sf = _summary_buffers(B, T, D, device, dt, 4)
        sr = _summary_buffers(B, T, D, device, dt, 4)
        # state carries: forward pass 1 + 2
        _fwd_kernel[(cfg.n_dblk, B, T)](
            U=u, V=vv, LAM=lam, THF=thf, THR=thr,
            CFR=dummy, CFI=dummy, CRR=dummy, CRI=dummy, c_sb=0, c_sg=0, HR=dummy, HI=dummy,
            **_summary_args(sf, sr), N=N, D=D, TPP=1,
            DO_F=do_f, DO_R=do_r, HAS_CF=False, HAS_CR=False, STORE_H=False,
            STORE_SUM=True, **dims)
        h0 = (None, None) if both else (h0r, h0i)
        hf = _run_carry(cfg, B, D, sf[:2], sf[2:], *h0, False, real, dt, device)[:2] \
            if do_f else None
        hrv = _run_carry(cfg, B, D, sr[:2], sr[2:], *h0, True, real, dt, device)[:2] \
            if do_r else None
        # gradient carries: backward pass 1 + 2
        _bwd_kernel[(cfg.n_dblk, B, T)](
            U=u, V=vv, LAM=lam, GR=ghr, GI=gii, THF=thf, THR=thr,
            HFR=dummy, HFI=dummy, HRR=dummy, HRI=dummy, h_sb=0, h_sg=0,
            QFR=dummy, QFI=dummy, QRR=dummy, QRI=dummy, q_sb=0, q_sg=0,
            DU=dummy, DV=dummy, DLAM=dummy, DTF=dummy, DTR=dummy,
            **_summary_args(sf, sr), N=N, D=D,
            DO_F=do_f, DO_R=do_r, HAS_HF=False, HAS_HR=False, HAS_QF=False, HAS_QR=False,
            SUMMARY=True, **dims)
        gN = (None, None) if both or ghNr is None else (ghNr, ghNi)
        qf = _run_carry(cfg, B, D, sf[:2], sf[2:], *gN, True, real, dt, device)[:2] \
            if do_f else None
        qrv = _run_carry(cfg, B, D, sr[:2], sr[2:], *gN, False, real, dt, device)[:2] \
            if do_r else None
        h_strides, q_strides = (T * D, D), (T * D, D)

    def ptrs(p):
        return (p[0], p[1]) if p is not None else (dummy, dummy)

    (hfr, hfi), (hrr, hri), (qfr, qfi), (qrr, qri) = ptrs(hf), ptrs(hrv), ptrs(qf), ptrs(qrv)
    _bwd_kernel[(cfg.n_dblk, B, T)](
        U=u, V=vv, LAM=lam, GR=ghr, GI=gii, THF=thf, THR=thr,
        HFR=hfr, HFI=hfi, HRR=hrr, HRI=hri, h_sb=h_strides[0], h_sg=h_strides[1],
        QFR=qfr, QFI=qfi, QRR=qrr, QRI=qri, q_sb=q_strides[0], q_sg=q_strides[1],
        DU=du, DV=dv, DLAM=dlam, DTF=dtf, DTR=dtr,
        **_summary_args([dummy] * 4, [dummy] * 4), N=N, D=D,
        DO_F=do_f, DO_R=do_r, HAS_HF=hf is not None, HAS_HR=hrv is not None,
        HAS_QF=qf is not None, HAS_QR=qrv is not None, SUMMARY=False, **dims)

    dthf = dtf.sum((0, 1)) if do_f and not real else None
    dthr = dtr.sum((0, 1)) if do_r and not real else None
    dh0r = dh0i = None
    if h0r is not None and not both:
        # dh0 = conj(A_edge) * D_edge, the edge being the scan's first step
        e = N - 1 if do_r else 0
        l0 = lam[:, e].to(dt)
        if real:
            dh0r = l0 * du[:, e].to(dt)
        else:
            th = (theta_f if do_f else theta_r).to(dt)
            c, s = torch.cos(th), torch.sin(th)
            dr, di = du[:, e].to(dt), dv[:, e].to(dt)
            dh0r = l0 * (c * dr + s * di)
            dh0i = l0 * (c * di - s * dr)
    return (du, None if real else dv, dlam, dthf, dthr, dh0r, dh0i)
