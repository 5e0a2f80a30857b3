"""The backward kernel of the fused HGRU core (``hgrn::hgru_backward``): gates and states
recomputed from the projection, the gradient states walked against them, dproj written
once. Launched by ``triton_hgru``."""
from __future__ import annotations

import triton
import triton.language as tl

from .triton_hgru_device import (
    _rsum, _walk, _decay, _sig, _lam_at, _gates, _fdiv, _channels, _ld_proj, _ld_g, _prev_terms,
    _load_vec, _fold, _store_pair, _load_pair, _pre_step, _racc_step, _boundary,
)


# ----------------------------------------------------------------------------------- backward
@triton.jit
def _hgru_bwd_kernel(
        P, sp_b, sp_g, sp_n, G, sg_b, sg_g, sg_n, GN, H0, LB, THF, THR,
        DP, sd_b, sd_g, sd_n, DH0, PTF, PTR, PLB,
        BND, CUM, SE, SP,
        N, D, n_tiles, tps, n_seg, n_inner, V, LAM, GI, DV, DL,
        BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, REAL: tl.constexpr, ACC: tl.constexpr,
        HAS_LB: tl.constexpr, HAS_H0: tl.constexpr, HAS_GN: tl.constexpr,
        DO_F: tl.constexpr, DO_R: tl.constexpr, MAIN_REV: tl.constexpr,
        PRE: tl.constexpr, MAIN: tl.constexpr, SEG_A: tl.constexpr, SEG_B: tl.constexpr,
        VEC: tl.constexpr, PREFETCH: tl.constexpr, FAST: tl.constexpr,
        EVEN_N: tl.constexpr, EVEN_D: tl.constexpr, NUM_STAGES: tl.constexpr,
        GIVEN: tl.constexpr, NESTED: tl.constexpr, ACCUMULATE: tl.constexpr):
    """Backward of the HGRU core. Main walk R (MAIN_REV: 'forward', 'both') or L
    ('reverse'); quantities whose direction is the main one are carried by the main walk,
    the others by the pre-walk. Boundary slots: HF/HR 0, DF/DR 1. Summary slots: HF 0,
    HR 1, DF 2, DR 3. h0 seeds HF ('forward') or HR ('reverse'); dhN seeds DF / DR.

    Sequence b (grid axis 1) starts at b * sp_b in P (b * sg_b in G), time step sp_n (sg_n);
    dproj is contiguous (B, N, W + d). NESTED (the 2-D op's rows or columns of a patch
    grid): two batch levels, b = outer * n_inner + inner, sequence b at outer * s*_b +
    inner * s*_g with time step s*_n in P (sp_*), G (sg_*) and DP (sd_*). ACCUMULATE (not
    with GIVEN): dproj is added to what DP holds (the 2-D op's second axis onto the first's),
    read and written by the one program that owns it. The per-program partial sums (PTF,
    PTR, PLB) are rows b * n_seg + seg of whatever those pointers address.

    GIVEN (the scan API): P, V, LAM are u, v, lam and G, GI the gradients of Re h, Im h,
    (B, N, D) each; du, dv, dlam are written to DP, DV, DL. The state walks return h_{t-1}
    (h_{t+1} reverse) so that dlam = Re(D conj(e^{i theta} h_{t-1})) needs no division."""
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
        WP = D  # row width of the gradient output(s)
    else:
        WP = W + D
    if NESTED:
        outer = b // n_inner
        inner = b % n_inner
        pseq = outer * sp_b + inner * sp_g
        gseq = outer * sg_b + inner * sg_g
        dseq = outer * sd_b + inner * sd_g
        d_n = sd_n
    else:  # (the 1-D code as it was: dproj contiguous, its strides implied)
        pseq = b * sp_b
        gseq = b * sg_b
        dseq = b * N * WP
        d_n = WP
    pbase = P + pseq
    vbase = V + pseq
    lbase = LAM + pseq
    gbase = G + gseq
    gibase = GI + gseq
    dbase = DP + dseq
    dvbase = DV + dseq
    dlbase = DL + dseq
    roff = rows * sp_n + offs_d  # tile offsets from its first row
    goff = rows * sg_n + offs_d
    doff = rows * d_n + offs_d
    k_lo = seg * tps
    k_hi = tl.minimum(k_lo + tps, n_tiles)
    nk = k_hi - k_lo
    # quantity roles
    HF_MAIN: tl.constexpr = DO_F and not MAIN_REV
    HF_PRE: tl.constexpr = DO_F and MAIN_REV
    HR_MAIN: tl.constexpr = DO_R and MAIN_REV
    HR_PRE: tl.constexpr = DO_R and not MAIN_REV
    DF_MAIN: tl.constexpr = DO_F and MAIN_REV
    DF_PRE: tl.constexpr = DO_F and not MAIN_REV
    DR_MAIN: tl.constexpr = DO_R and not MAIN_REV
    DR_PRE: tl.constexpr = DO_R and MAIN_REV
    PRE_REV: tl.constexpr = not MAIN_REV
    BOTH: tl.constexpr = DO_F and DO_R
    # what the pre-walk / launch A has to compute
    W_HF: tl.constexpr = HF_PRE or (SEG_A and HF_MAIN)
    W_HR: tl.constexpr = HR_PRE or (SEG_A and HR_MAIN)
    W_DF: tl.constexpr = DF_PRE or (SEG_A and DF_MAIN)
    W_DR: tl.constexpr = DR_PRE or (SEG_A and DR_MAIN)
    W_G: tl.constexpr = W_DF or W_DR

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
    vidx = b * W + offs_d
    if HAS_H0:
        h0r, h0i = _load_pair(H0, vidx, md, D, REAL, ACC)
    else:
        h0r = zero
        h0i = zero
    if HAS_GN:
        gnr, gni = _load_pair(GN, vidx, md, D, REAL, ACC)
    else:
        gnr = zero
        gni = zero

    # ---- pre-walk: boundaries of the quantities walking against the main direction -------
    if PRE or SEG_A:
        # carries (state quantity slot 0, gradient quantity slot 1) and their cumulative
        # decays; launch A starts every segment from zero
        if SEG_A:
            c0r = zero
            c0i = zero
        else:
            c0r = h0r
            c0i = h0i
        c1r = zero
        c1i = zero
        q0r = one
        q0i = zero
        q1r = one
        q1i = zero
        # launch A: summaries of the main quantities (state: a*, gradient: g*)
        a_er = zero
        a_ei = zero
        a_gr = one
        a_gi = zero
        g_er = zero
        g_ei = zero
        g_gr = one
        g_gi = zero
        if PRE_REV:
            k0 = k_hi - 1
            kstep = -1
        else:
            k0 = k_lo
            kstep = 1
        for j in tl.range(0, nk, num_stages=NUM_STAGES):
            k = k0 + j * kstep
            t = k * BLOCK_T + rows
            if EVEN_N:
                mt = tl.full([BLOCK_T, 1], 1, tl.int1)
            else:
                mt = t < N
            bidx0 = (b * n_tiles + k) * W + offs_d
            bidx1 = ((B + b) * n_tiles + k) * W + offs_d
            if W_HF or W_HR:
                c_r, c_i, mu = _ld_proj(pbase, vbase, lbase, sp_n, roff, k, True, rows, md, N, D, W,
                                        BLOCK_T, REAL, EVEN_N, GIVEN)
                s, oms, lam, oml, xr, xi, c_r, c_i, sg_r, sg_i = _gates(c_r, c_i, mu, lb, ACC,
                                                                        REAL, FAST, GIVEN)
            if W_HF:
                ar, ai = _decay(lam, cf, sf, mt, False, REAL)
                if HF_PRE:
                    c0r, c0i, q0r, q0i = _pre_step(ar, ai, xr, xi, c0r, c0i, q0r, q0i, BND,
                                                   CUM, bidx0, rows, md, D, False, SEG_A, REAL,
                                                   BLOCK_T)
                else:
                    a_er, a_ei, a_gr, a_gi = _racc_step(ar, ai, xr, xi, a_er, a_ei, a_gr,
                                                        a_gi, rows, False, REAL, BLOCK_T)
            if W_HR:
                ar, ai = _decay(lam, cr_, sr_, mt, False, REAL)
                if HR_PRE:
                    c0r, c0i, q0r, q0i = _pre_step(ar, ai, xr, xi, c0r, c0i, q0r, q0i, BND,
                                                   CUM, bidx0, rows, md, D, True, SEG_A, REAL,
                                                   BLOCK_T)
                else:
                    a_er, a_ei, a_gr, a_gi = _racc_step(ar, ai, xr, xi, a_er, a_ei, a_gr,
                                                        a_gi, rows, True, REAL, BLOCK_T)
            if W_G:
                g_r, g_i = _ld_g(gbase, gibase, sg_n, goff, k, True, rows, md, N, D, BLOCK_T, REAL,
                                 EVEN_N, GIVEN)
                g_r = g_r.to(ACC)
                g_i = g_i.to(ACC)
            if W_DF:
                vn = t + 1 < N
                lamn = _lam_at(pbase, lbase, sp_n, roff, k, rows, md, N, W, lb, BLOCK_T, 1,
                               ACC, FAST, GIVEN)
                ar, ai = _decay(lamn, cf, sf, vn, True, REAL)
                if DF_PRE:
                    c1r, c1i, q1r, q1i = _pre_step(ar, ai, g_r, g_i, c1r, c1i, q1r, q1i, BND,
                                                   CUM, bidx1, rows, md, D, True, SEG_A, REAL,
                                                   BLOCK_T)
                else:
                    g_er, g_ei, g_gr, g_gi = _racc_step(ar, ai, g_r, g_i, g_er, g_ei, g_gr,
                                                        g_gi, rows, True, REAL, BLOCK_T)
            if W_DR:
                vp = (t >= 1) & (t < N)
                lamp = _lam_at(pbase, lbase, sp_n, roff, k, rows, md, N, W, lb, BLOCK_T, -1,
                               ACC, FAST, GIVEN)
                ar, ai = _decay(lamp, cr_, sr_, vp, True, REAL)
                if DR_PRE:
                    c1r, c1i, q1r, q1i = _pre_step(ar, ai, g_r, g_i, c1r, c1i, q1r, q1i, BND,
                                                   CUM, bidx1, rows, md, D, False, SEG_A, REAL,
                                                   BLOCK_T)
                else:
                    g_er, g_ei, g_gr, g_gi = _racc_step(ar, ai, g_r, g_i, g_er, g_ei, g_gr,
                                                        g_gi, rows, False, REAL, BLOCK_T)
        if SEG_A:
            for slot in tl.static_range(4):
                sidx = ((slot * B + b) * n_seg + seg) * W + offs_d
                if slot == 0:
                    if HF_PRE:
                        _store_pair(SE, sidx, c0r, c0i, md, D, REAL)
                        _store_pair(SP, sidx, q0r, q0i, md, D, REAL)
                    if HF_MAIN:
                        _store_pair(SE, sidx, a_er, a_ei, md, D, REAL)
                        _store_pair(SP, sidx, a_gr, a_gi, md, D, REAL)
                if slot == 1:
                    if HR_PRE:
                        _store_pair(SE, sidx, c0r, c0i, md, D, REAL)
                        _store_pair(SP, sidx, q0r, q0i, md, D, REAL)
                    if HR_MAIN:
                        _store_pair(SE, sidx, a_er, a_ei, md, D, REAL)
                        _store_pair(SP, sidx, a_gr, a_gi, md, D, REAL)
                if slot == 2:
                    if DF_PRE:
                        _store_pair(SE, sidx, c1r, c1i, md, D, REAL)
                        _store_pair(SP, sidx, q1r, q1i, md, D, REAL)
                    if DF_MAIN:
                        _store_pair(SE, sidx, g_er, g_ei, md, D, REAL)
                        _store_pair(SP, sidx, g_gr, g_gi, md, D, REAL)
                if slot == 3:
                    if DR_PRE:
                        _store_pair(SE, sidx, c1r, c1i, md, D, REAL)
                        _store_pair(SP, sidx, q1r, q1i, md, D, REAL)
                    if DR_MAIN:
                        _store_pair(SE, sidx, g_er, g_ei, md, D, REAL)
                        _store_pair(SP, sidx, g_gr, g_gi, md, D, REAL)

    # ---- main walk ---------------------------------------------------------------------
    if MAIN or SEG_B:
        if PRE:
            tl.debug_barrier()  # this program's boundary stores -> its own loads
        # main carries: state quantity (m*) and gradient quantity (n*); pre-walk segment
        # carries for launch B (p0* state, p1* gradient)
        mr = zero
        mi = zero
        nr = gnr
        ni = gni
        p0r = h0r
        p0i = h0i
        p1r = zero
        p1i = zero
        if SEG_B:
            if MAIN_REV:
                # main R: fold the segments to the right; pre L: those to the left
                cnt_m = n_seg - 1 - seg
                if HR_MAIN:
                    mr, mi = _fold(SE, SP, 1, b, B, n_seg, n_seg - 1, cnt_m, -1, offs_d, md, D,
                                   W, mr, mi, REAL, ACC)
                if DF_MAIN:
                    nr, ni = _fold(SE, SP, 2, b, B, n_seg, n_seg - 1, cnt_m, -1, offs_d, md, D,
                                   W, nr, ni, REAL, ACC)
                if HF_PRE:
                    p0r, p0i = _fold(SE, SP, 0, b, B, n_seg, 0, seg, 1, offs_d, md, D, W,
                                     p0r, p0i, REAL, ACC)
                if DR_PRE:
                    p1r, p1i = _fold(SE, SP, 3, b, B, n_seg, 0, seg, 1, offs_d, md, D, W,
                                     p1r, p1i, REAL, ACC)
            else:
                cnt_p = n_seg - 1 - seg
                if HF_MAIN:
                    mr, mi = _fold(SE, SP, 0, b, B, n_seg, 0, seg, 1, offs_d, md, D, W,
                                   mr, mi, REAL, ACC)
                if DR_MAIN:
                    nr, ni = _fold(SE, SP, 3, b, B, n_seg, 0, seg, 1, offs_d, md, D, W,
                                   nr, ni, REAL, ACC)
                if HR_PRE:
                    p0r, p0i = _fold(SE, SP, 1, b, B, n_seg, n_seg - 1, cnt_p, -1, offs_d, md,
                                     D, W, p0r, p0i, REAL, ACC)
                if DF_PRE:
                    p1r, p1i = _fold(SE, SP, 2, b, B, n_seg, n_seg - 1, cnt_p, -1, offs_d, md,
                                     D, W, p1r, p1i, REAL, ACC)
        acc_f = zero
        acc_r = zero
        acc_l = zero
        if MAIN_REV:
            k0 = k_hi - 1
            kstep = -1
        else:
            k0 = k_lo
            kstep = 1
        if PREFETCH:
            p_cr, p_ci, p_mu = _ld_proj(pbase, vbase, lbase, sp_n, roff, k0, nk > 0, rows, md, N, D,
                                        W, BLOCK_T, REAL, EVEN_N, GIVEN)
            p_gr, p_gi = _ld_g(gbase, gibase, sg_n, goff, k0, nk > 0, rows, md, N, D, BLOCK_T, REAL,
                               EVEN_N, GIVEN)
        for j in tl.range(0, nk, num_stages=NUM_STAGES):
            k = k0 + j * kstep
            if PREFETCH:
                c_r = p_cr
                c_i = p_ci
                mu = p_mu
                g_r = p_gr
                g_i = p_gi
                p_cr, p_ci, p_mu = _ld_proj(pbase, vbase, lbase, sp_n, roff, k + kstep, j + 1 < nk,
                                            rows, md, N, D, W, BLOCK_T, REAL, EVEN_N, GIVEN)
                p_gr, p_gi = _ld_g(gbase, gibase, sg_n, goff, k + kstep, j + 1 < nk, rows, md, N, D,
                                   BLOCK_T, REAL, EVEN_N, GIVEN)
            else:
                c_r, c_i, mu = _ld_proj(pbase, vbase, lbase, sp_n, roff, k, True, rows, md, N, D, W,
                                        BLOCK_T, REAL, EVEN_N, GIVEN)
                g_r, g_i = _ld_g(gbase, gibase, sg_n, goff, k, True, rows, md, N, D, BLOCK_T, REAL,
                                 EVEN_N, GIVEN)
            t = k * BLOCK_T + rows
            if EVEN_N:
                mt = tl.full([BLOCK_T, 1], 1, tl.int1)
            else:
                mt = t < N
            m2 = mt & md
            s, oms, lam, oml, xr, xi, c_r, c_i, sg_r, sg_i = _gates(c_r, c_i, mu, lb, ACC,
                                                                        REAL, FAST, GIVEN)
            g_r = g_r.to(ACC)
            g_i = g_i.to(ACC)
            bidx0 = (b * n_tiles + k) * W + offs_d
            bidx1 = ((B + b) * n_tiles + k) * W + offs_d
            dxr = tl.full([BLOCK_T, BLOCK_D], 0.0, ACC)
            dxi = tl.full([BLOCK_T, BLOCK_D], 0.0, ACC)
            q = tl.full([BLOCK_T, BLOCK_D], 0.0, ACC)
            if DO_F:
                # forward direction: state HF (L), gradient state DF (R)
                ar, ai = _decay(lam, cf, sf, mt, False, REAL)
                if HF_MAIN:
                    hr, hi, mr, mi, _, _ = _walk(ar, ai, xr, xi, mr, mi, rows, False, REAL,
                                                 BLOCK_T, False, GIVEN)
                else:
                    br, bi = _boundary(BND, CUM, bidx0, p0r, p0i, md, D, SEG_B, REAL, ACC)
                    hr, hi, _, _, _, _ = _walk(ar, ai, xr, xi, br, bi, rows, False, REAL,
                                               BLOCK_T, False, GIVEN)
                if GIVEN:  # (hr, hi) = the state entering each row
                    yr, yi, epr, epi = _prev_terms(ar, ai, hr, hi, cf, sf, REAL)
                vn = t + 1 < N
                lamn = _lam_at(pbase, lbase, sp_n, roff, k, rows, md, N, W, lb, BLOCK_T, 1,
                               ACC, FAST, GIVEN)
                ar, ai = _decay(lamn, cf, sf, vn, True, REAL)
                if DF_MAIN:
                    er, ei, nr, ni, _, _ = _walk(ar, ai, g_r, g_i, nr, ni, rows, True, REAL,
                                                 BLOCK_T, False)
                else:
                    br, bi = _boundary(BND, CUM, bidx1, p1r, p1i, md, D, SEG_B, REAL, ACC)
                    er, ei, _, _, _, _ = _walk(ar, ai, g_r, g_i, br, bi, rows, True, REAL,
                                               BLOCK_T, False)
                if not GIVEN:
                    yr = hr - xr
                dxr += er
                if REAL:
                    if GIVEN:
                        q += er * epr
                    else:
                        q += er * yr
                else:
                    if not GIVEN:
                        yi = hi - xi
                    dxi += ei
                    if GIVEN:
                        q += er * epr + ei * epi
                    else:
                        q += er * yr + ei * yi
                    acc_f += _rsum(tl.where(m2, ei * yr - er * yi, 0.0))
            if DO_R:
                # reverse direction: state HR (R), gradient state DR (L)
                ar, ai = _decay(lam, cr_, sr_, mt, False, REAL)
                if HR_MAIN:
                    hr, hi, mr, mi, _, _ = _walk(ar, ai, xr, xi, mr, mi, rows, True, REAL,
                                                 BLOCK_T, False, GIVEN)
                else:
                    br, bi = _boundary(BND, CUM, bidx0, p0r, p0i, md, D, SEG_B, REAL, ACC)
                    hr, hi, _, _, _, _ = _walk(ar, ai, xr, xi, br, bi, rows, True, REAL,
                                               BLOCK_T, False, GIVEN)
                if GIVEN:  # (hr, hi) = the state entering each row
                    yr, yi, epr, epi = _prev_terms(ar, ai, hr, hi, cr_, sr_, REAL)
                vp = (t >= 1) & (t < N)
                lamp = _lam_at(pbase, lbase, sp_n, roff, k, rows, md, N, W, lb, BLOCK_T, -1,
                               ACC, FAST, GIVEN)
                ar, ai = _decay(lamp, cr_, sr_, vp, True, REAL)
                if DR_MAIN:
                    er, ei, nr, ni, _, _ = _walk(ar, ai, g_r, g_i, nr, ni, rows, False, REAL,
                                                 BLOCK_T, False)
                else:
                    br, bi = _boundary(BND, CUM, bidx1, p1r, p1i, md, D, SEG_B, REAL, ACC)
                    er, ei, _, _, _, _ = _walk(ar, ai, g_r, g_i, br, bi, rows, False, REAL,
                                               BLOCK_T, False)
                if not GIVEN:
                    yr = hr - xr
                dxr += er
                if REAL:
                    if GIVEN:
                        q += er * epr
                    else:
                        q += er * yr
                else:
                    if not GIVEN:
                        yi = hi - xi
                    dxi += ei
                    if GIVEN:
                        q += er * epr + ei * epi
                    else:
                        q += er * yr + ei * yi
                    acc_r += _rsum(tl.where(m2, ei * yr - er * yi, 0.0))
            if GIVEN:
                # du = dx, dv = dxi, dlam = q = sum_dir Re(D conj(e^{i theta} h_prev))
                dps = (k * BLOCK_T).to(tl.int64) * d_n
                tl.store(dbase + dps + doff, dxr.to(DP.dtype.element_ty), mask=m2)
                if not REAL:
                    tl.store(dvbase + dps + doff, dxi.to(DP.dtype.element_ty), mask=m2)
                tl.store(dlbase + dps + doff, q.to(DP.dtype.element_ty), mask=m2)
            else:
                # gates' gradients
                olb = 1.0 - lb
                dlx = -(dxr * c_r * sg_r)
                if not REAL:
                    dlx -= dxi * c_i * sg_i
                pos = lam > 0
                rl = _fdiv(1.0, tl.where(pos, lam, 1.0), FAST)
                r = tl.where(pos, olb * s * rl, 1.0)
                dmu = (q * r + dlx * olb * s) * oms
                if HAS_LB:
                    acc_l += _rsum(tl.where(m2, (tl.where(pos, q * rl, 0.0) + dlx) * oms, 0.0))
                dcr = oml * dxr * sg_r * (1.0 + c_r * (1.0 - sg_r))
                dpp = dbase + (k * BLOCK_T).to(tl.int64) * d_n + doff
                if ACCUMULATE:  # in ACC, then rounded once
                    dcr += tl.load(dpp, mask=m2, other=0.0).to(ACC)
                tl.store(dpp, dcr.to(DP.dtype.element_ty), mask=m2)
                if not REAL:
                    dci = oml * dxi * sg_i * (1.0 + c_i * (1.0 - sg_i))
                    if ACCUMULATE:
                        dci += tl.load(dpp + D, mask=m2, other=0.0).to(ACC)
                    tl.store(dpp + D, dci.to(DP.dtype.element_ty), mask=m2)
                if ACCUMULATE:
                    dmu += tl.load(dpp + W, mask=m2, other=0.0).to(ACC)
                tl.store(dpp + W, dmu.to(DP.dtype.element_ty), mask=m2)

        # per-program partial sums
        pidx = (b * n_seg + seg) * D + offs_d
        if not REAL:
            if DO_F:
                tl.store(PTF + pidx, acc_f, mask=md)
            if DO_R:
                tl.store(PTR + pidx, acc_r, mask=md)
        if HAS_LB:
            tl.store(PLB + pidx, acc_l, mask=md)
        # dh0 = conj(A_edge) D_edge, by the program whose main walk ends at the edge
        if HAS_H0 and not BOTH:
            if MAIN_REV:
                is_end = seg == 0
                pe = pbase
                le = lbase
            else:
                is_end = seg == n_seg - 1
                pe = pbase + tl.cast(N - 1, tl.int64) * sp_n
                le = lbase + tl.cast(N - 1, tl.int64) * sp_n
            if is_end:
                if GIVEN:
                    lam_e = tl.load(le + offs_d, mask=md, other=0.0).to(ACC)
                else:
                    mu_e = tl.load(pe + W + offs_d, mask=md, other=0.0).to(ACC)
                    s_e, oms_e = _sig(mu_e, FAST)
                    lam_e = lb + (1.0 - lb) * s_e
                if REAL:
                    tl.store(DH0 + vidx, lam_e * nr, mask=md)
                else:
                    if MAIN_REV:
                        ce = cf
                        se = sf
                    else:
                        ce = cr_
                        se = sr_
                    tl.store(DH0 + vidx, lam_e * (ce * nr + se * ni), mask=md)
                    tl.store(DH0 + vidx + D, lam_e * (ce * ni - se * nr), mask=md)
