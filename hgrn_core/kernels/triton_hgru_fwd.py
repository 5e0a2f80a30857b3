"""The forward kernel of the fused HGRU core (``hgrn::hgru``): gates and the scan
directions in one launch, from the projection to the state. Launched by ``triton_hgru``."""
from __future__ import annotations

import triton
import triton.language as tl

from .triton_hgru_device import (
    _walk, _decay, _gates, _channels, _ld_proj, _load_vec, _fold, _store_pair, _load_pair,
    _pre_step, _racc_step, _boundary,
)


# ------------------------------------------------------------------------------------ forward
@triton.jit
def _hgru_fwd_kernel(
        P, sp_b, sp_g, sp_n, H, sh_b, sh_g, sh_n, HN, H0, LB, THF, THR,
        BND, CUM, SE, SP,
        N, D, n_tiles, tps, n_seg, n_inner, V, LAM, HI,
        BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, REAL: tl.constexpr, ACC: tl.constexpr,
        HAS_LB: tl.constexpr, HAS_H0: tl.constexpr, DO_F: tl.constexpr, DO_R: tl.constexpr,
        PRE: tl.constexpr, MAIN: tl.constexpr, SEG_A: tl.constexpr, SEG_B: tl.constexpr,
        VEC: tl.constexpr, PREFETCH: tl.constexpr, FAST: tl.constexpr,
        EVEN_N: tl.constexpr, EVEN_D: tl.constexpr, NUM_STAGES: tl.constexpr,
        GIVEN: tl.constexpr, NESTED: tl.constexpr, ACCUMULATE: tl.constexpr):
    """Forward of the HGRU core. Main walk L for 'forward'/'both' (DO_F), R for 'reverse';
    'both' pre-walks R for HR. PRE+MAIN: one launch (S = 1); SEG_A / SEG_B: the two launches
    of the segmented scheme. Summary slots: HF 0, HR 1.

    Sequence b (grid axis 1) starts at b * sp_b in P, time step sp_n; h is contiguous
    (B, N, W). NESTED (the 2-D op's rows or columns of a patch grid): two batch levels,
    b = outer * n_inner + inner, sequence b at outer * s*_b + inner * s*_g with time step
    s*_n in P (sp_*) and in H (sh_*); no final state (HN unused). ACCUMULATE (not with
    GIVEN): h is added to what H holds (the 2-D op's second axis onto the first's), read and
    written by the one program that owns it.

    GIVEN (the scan API): P, V, LAM are u, v, lam (B, N, D) with the strides (sp_b, sp_n),
    decays and inputs read as given; h is written to H (Re) and HI (Im), (B, N, D) each."""
    pid_d = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    B = tl.num_programs(1).to(tl.int64)
    seg = tl.program_id(2)
    offs_d = _channels(pid_d, BLOCK_D, VEC)  # [1, BLOCK_D]
    if EVEN_D:  # constant masks: the compiler drops them (and vectorizes freely)
        md = tl.full([1, BLOCK_D], 1, tl.int1)
    else:
        md = offs_d < D
    rows = tl.arange(0, BLOCK_T)[:, None]    # [BLOCK_T, 1]
    if REAL:
        W = D
    else:
        W = 2 * D
    if GIVEN:
        WH = D  # row width of the output(s)
    else:
        WH = W
    if NESTED:
        outer = b // n_inner
        inner = b % n_inner
        pseq = outer * sp_b + inner * sp_g
        hseq = outer * sh_b + inner * sh_g
        h_n = sh_n
    else:  # (the 1-D code as it was: h contiguous, its strides implied)
        pseq = b * sp_b
        hseq = b * N * WH
        h_n = WH
    pbase = P + pseq
    vbase = V + pseq
    lbase = LAM + pseq
    hbase = H + hseq
    hibase = HI + hseq
    roff = rows * sp_n + offs_d  # tile offsets from its first row
    hoff = rows * h_n + offs_d
    k_lo = seg * tps
    k_hi = tl.minimum(k_lo + tps, n_tiles)
    nk = k_hi - k_lo
    BOTH: tl.constexpr = DO_F and DO_R
    PRE_REV: tl.constexpr = DO_F  # the pre-walk / launch A go against the main walk

    lb = _load_vec(LB + offs_d, md, ACC, HAS_LB, 0.0, BLOCK_D)
    if REAL:
        cf = lb
        sf = lb
        cr_ = lb
        sr_ = lb
    else:
        thf = _load_vec(THF + offs_d, md, ACC, DO_F, 0.0, BLOCK_D)
        thr = _load_vec(THR + offs_d, md, ACC, DO_R, 0.0, BLOCK_D)
        cf = tl.cos(thf)
        sf = tl.sin(thf)
        cr_ = tl.cos(thr)
        sr_ = tl.sin(thr)
    zero = tl.full([1, BLOCK_D], 0.0, ACC)
    one = tl.full([1, BLOCK_D], 1.0, ACC)

    # ---- pre-walk (against the main direction) -------------------------------------------
    if PRE or SEG_A:
        ncr = zero  # carry of the pre-walk quantity (HR, 'both' only)
        nci = zero
        nqr = one   # its cumulative decay from the segment edge (launch A)
        nqi = zero
        aer = zero  # launch A: summary of the main quantity, accumulated against it
        aei = zero
        agr = one
        agi = zero
        if PRE_REV:
            k0 = k_hi - 1
            kstep = -1
        else:
            k0 = k_lo
            kstep = 1
        if PREFETCH:
            p_cr, p_ci, p_mu = _ld_proj(pbase, vbase, lbase, sp_n, roff, k0, nk > 0, rows, md, N, D,
                                        W, BLOCK_T, REAL, EVEN_N, GIVEN)
        for j in tl.range(0, nk, num_stages=NUM_STAGES):
            k = k0 + j * kstep
            if PREFETCH:
                c_r = p_cr
                c_i = p_ci
                mu = p_mu
                p_cr, p_ci, p_mu = _ld_proj(pbase, vbase, lbase, sp_n, roff, k + kstep, j + 1 < nk,
                                            rows, md, N, D, W, BLOCK_T, REAL, EVEN_N, GIVEN)
            else:
                c_r, c_i, mu = _ld_proj(pbase, vbase, lbase, sp_n, roff, k, True, rows, md, N, D, W,
                                        BLOCK_T, REAL, EVEN_N, GIVEN)
            if EVEN_N:
                mt = tl.full([BLOCK_T, 1], 1, tl.int1)
            else:
                mt = k * BLOCK_T + rows < N
            s, oms, lam, oml, xr, xi, c_r, c_i, sg_r, sg_i = _gates(c_r, c_i, mu, lb, ACC,
                                                                        REAL, FAST, GIVEN)
            if BOTH:
                bidx = (b * n_tiles + k) * W + offs_d
                ar, ai = _decay(lam, cr_, sr_, mt, False, REAL)
                ncr, nci, nqr, nqi = _pre_step(ar, ai, xr, xi, ncr, nci, nqr, nqi, BND, CUM,
                                               bidx, rows, md, D, True, SEG_A, REAL, BLOCK_T)
            if SEG_A:
                if DO_F:
                    ar, ai = _decay(lam, cf, sf, mt, False, REAL)
                    aer, aei, agr, agi = _racc_step(ar, ai, xr, xi, aer, aei, agr, agi, rows,
                                                    False, REAL, BLOCK_T)
                else:
                    ar, ai = _decay(lam, cr_, sr_, mt, False, REAL)
                    aer, aei, agr, agi = _racc_step(ar, ai, xr, xi, aer, aei, agr, agi, rows,
                                                    True, REAL, BLOCK_T)
        if SEG_A:
            sidx0 = ((0 * B + b) * n_seg + seg) * W + offs_d
            sidx1 = ((1 * B + b) * n_seg + seg) * W + offs_d
            if DO_F:
                _store_pair(SE, sidx0, aer, aei, md, D, REAL)
                _store_pair(SP, sidx0, agr, agi, md, D, REAL)
                if DO_R:
                    _store_pair(SE, sidx1, ncr, nci, md, D, REAL)
                    _store_pair(SP, sidx1, nqr, nqi, md, D, REAL)
            else:
                _store_pair(SE, sidx1, aer, aei, md, D, REAL)
                _store_pair(SP, sidx1, agr, agi, md, D, REAL)

    # ---- main walk ---------------------------------------------------------------------
    if MAIN or SEG_B:
        if PRE:
            tl.debug_barrier()  # this program's boundary stores -> its own loads
        # main carry: h0 at the walk's start, then the segments before this one
        if HAS_H0:
            mr, mi = _load_pair(H0, b * W + offs_d, md, D, REAL, ACC)
        else:
            mr = zero
            mi = zero
        pcr = zero  # 'both', launch B: HR entering this segment from the right
        pci = zero
        if SEG_B:
            if DO_F:
                mr, mi = _fold(SE, SP, 0, b, B, n_seg, 0, seg, 1, offs_d, md, D, W, mr, mi,
                               REAL, ACC)
                if DO_R:
                    pcr, pci = _fold(SE, SP, 1, b, B, n_seg, n_seg - 1, n_seg - 1 - seg, -1,
                                     offs_d, md, D, W, pcr, pci, REAL, ACC)
            else:
                mr, mi = _fold(SE, SP, 1, b, B, n_seg, n_seg - 1, n_seg - 1 - seg, -1,
                               offs_d, md, D, W, mr, mi, REAL, ACC)
        if DO_F:
            k0 = k_lo
            kstep = 1
        else:
            k0 = k_hi - 1
            kstep = -1
        if PREFETCH:
            p_cr, p_ci, p_mu = _ld_proj(pbase, vbase, lbase, sp_n, roff, k0, nk > 0, rows, md, N, D,
                                        W, BLOCK_T, REAL, EVEN_N, GIVEN)
        for j in tl.range(0, nk, num_stages=NUM_STAGES):
            k = k0 + j * kstep
            if PREFETCH:
                c_r = p_cr
                c_i = p_ci
                mu = p_mu
                p_cr, p_ci, p_mu = _ld_proj(pbase, vbase, lbase, sp_n, roff, k + kstep, j + 1 < nk,
                                            rows, md, N, D, W, BLOCK_T, REAL, EVEN_N, GIVEN)
            else:
                c_r, c_i, mu = _ld_proj(pbase, vbase, lbase, sp_n, roff, k, True, rows, md, N, D, W,
                                        BLOCK_T, REAL, EVEN_N, GIVEN)
            t = k * BLOCK_T + rows
            if EVEN_N:
                mt = tl.full([BLOCK_T, 1], 1, tl.int1)
            else:
                mt = t < N
            m2 = mt & md
            s, oms, lam, oml, xr, xi, c_r, c_i, sg_r, sg_i = _gates(c_r, c_i, mu, lb, ACC,
                                                                        REAL, FAST, GIVEN)
            if DO_F:
                ar, ai = _decay(lam, cf, sf, mt, False, REAL)
                hr, hi, mr, mi, _, _ = _walk(ar, ai, xr, xi, mr, mi, rows, False, REAL, BLOCK_T,
                                             False)
                if DO_R:
                    bidx = (b * n_tiles + k) * W + offs_d
                    br, bi = _boundary(BND, CUM, bidx, pcr, pci, md, D, SEG_B, REAL, ACC)
                    ar, ai = _decay(lam, cr_, sr_, mt, False, REAL)
                    gr, gi, _, _, _, _ = _walk(ar, ai, xr, xi, br, bi, rows, True, REAL,
                                               BLOCK_T, False)
                    hr = hr + gr
                    hi = hi + gi
            else:
                ar, ai = _decay(lam, cr_, sr_, mt, False, REAL)
                hr, hi, mr, mi, _, _ = _walk(ar, ai, xr, xi, mr, mi, rows, True, REAL, BLOCK_T,
                                             False)
            hs = (k * BLOCK_T).to(tl.int64) * h_n
            hp = hbase + hs + hoff
            if ACCUMULATE:  # in ACC, then rounded once
                hr += tl.load(hp, mask=m2, other=0.0).to(ACC)
            tl.store(hp, hr.to(H.dtype.element_ty), mask=m2)
            if not REAL:
                if GIVEN:
                    tl.store(hibase + hs + hoff, hi.to(H.dtype.element_ty), mask=m2)
                else:
                    if ACCUMULATE:
                        hi += tl.load(hp + D, mask=m2, other=0.0).to(ACC)
                    tl.store(hp + D, hi.to(H.dtype.element_ty), mask=m2)
        if not BOTH and not NESTED:
            if DO_F:
                last = seg == n_seg - 1
            else:
                last = seg == 0
            if last:
                _store_pair(HN, b * W + offs_d, mr, mi, md, D, REAL)
