"""Fused Triton kernels for the whole recurrent core of the HGRU (op ``hgrn::hgru``).

    proj = [c (W) | mu (d)]  (B, N, W + d), W = 2d complex ([Re c | Im c]) or d real
    s = sigmoid(mu);  lam = lb + (1 - lb) s;  x = (1 - lam) * silu(c)
    forward:  h_t = lam_t e^{i theta_f} h_{t-1} + x_t      (h_0 = h0 or 0)
    reverse:  h_t = lam_t e^{i theta_r} h_{t+1} + x_t      (h_{N+1} = h0 or 0)
    both:     h = h_fwd + h_rev                             (no initial / final state)

Public functions (the Triton backend wires them into ``hgrn::hgru``):

    hgru_forward(proj, lower_bound, theta_f, theta_r, h0, direction) -> (h, hN)
    hgru_backward(dh, dhN, proj, lower_bound, theta_f, theta_r, h0, direction)
        -> (dproj, dlb, dtf, dtr, dh0)

Layout (docs/hgru_kernel_notes.md has the reasoning, the byte counts and the measurements).
A program owns one batch row and ``BLOCK_D`` channels and *walks* time in tiles of
``BLOCK_T`` rows with its state in registers: one 2-D load per input and tile (at a fixed
token the channels are contiguous, so rows coalesce), gates formed in registers in fp32 (fp64
for fp64 inputs). Each thread holds ``VEC`` channels and *all* ``BLOCK_T`` rows of them
(``_channels`` steers the compiler's layout so; ``BLOCK_D = 32 * VEC * num_warps``), so the
recurrence inside a tile is a plain unrolled chain of complex multiply-adds in registers
(``_walk``): no scan tree, no shuffles, the carry simply enters the first row.

Every recurrence involved is one of four *quantities*, each walked left-to-right (L) or
right-to-left (R):

    HF  forward state      L   decay A_f,t = lam_t e^{i theta_f}        input x_t
    HR  reverse state      R   decay A_r,t = lam_t e^{i theta_r}        input x_t
    DF  grad. state of HF  R   decay conj(A_f,t+1)  (1 past the end)    input G_t = dh_t
    DR  grad. state of HR  L   decay conj(A_r,t-1)  (1 before t = 0)    input G_t

A launch makes at most two walks over its tiles: a *pre-walk* against the main direction
that only carries its quantities and stores, per tile, the value entering the tile (a few
fp32 values per tile and channel, in a scratch buffer of the program's own), then the *main
walk*, which carries its own quantities in registers, restarts the pre-walk quantities of
each tile from the stored boundary, and writes the output once:

    forward op  'forward': main L {HF}        'reverse': main R {HR}
                'both':    pre R {HR}, main L {HF}
    backward    'forward': pre L {HF}, main R {DF}     'reverse': pre R {HR}, main L {DR}
                'both':    pre L {HF, DR}, main R {HR, DF}

Long sequences with few (batch, channel-block) programs are split into ``S`` segments of
whole tiles (grid axis 2) with two launches: launch A does the pre-walk of every segment from
a zero state, storing the boundaries, the cumulative decay from the segment edge to each
boundary, and a per-segment summary (end state from zero, total decay) of every quantity --
the main-walk quantities' summaries are accumulated while walking against them
(E = sum_k (decay after k) E_k); launch B folds the few summaries of the segments before it
(per quantity, in its own direction: multiplications only, never a division -- spec §6) into
its carries and does the main walk.

Gradients (spec §5), recomputed from ``proj``: nothing fp32 of size B*N*d is stored. With
``y = h - x = A h_prev`` (no shift needed) and D the gradient state of a direction:
``q = sum_dir Re(D conj(y))``, ``dtheta_dir = sum Im(D conj(y))``; with
``dx = sum_dir D`` and ``dlam_x = -Re(dx conj(silu c))``:

    dmu = [q r + dlam_x (1 - lb) s] (1 - s),   r = (1 - lb) s / lam in [0, 1] (lam = 0: r = 1)
    dlb = sum [q / lam + dlam_x] (1 - s)       (the one division; see the notes' caveat)
    dc  = (1 - lam) dx sigmoid(c) (1 + c (1 - sigmoid(c)))
    dh0 = conj(A_edge) D_edge

Per-channel sums (dlb, dtheta) are per-program partials reduced in torch (deterministic).
"""
from __future__ import annotations

import contextlib
import math
import os
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice
from triton.language.standard import _sum_combine

Tensor = torch.Tensor

DIRECTIONS = ("forward", "reverse", "both")


# ------------------------------------------------------------------------------ device helpers
@triton.jit
def _cplx_combine(ar1, ai1, xr1, xi1, ar2, ai2, xr2, xi2):
    # (A1, X1) then (A2, X2):  A = A2 A1,  X = A2 X1 + X2   (complex)
    return (ar2 * ar1 - ai2 * ai1, ar2 * ai1 + ai2 * ar1,
            ar2 * xr1 - ai2 * xi1 + xr2, ar2 * xi1 + ai2 * xr1 + xi2)


@triton.jit
def _real_combine(a1, x1, a2, x2):
    return a2 * a1, a2 * x1 + x2


@triton.jit
def _rsum(x):
    """Sum over the time axis (axis 0) keeping it, = tl.sum(x, 0, keep_dims=True); written with
    tl.reduce so that Triton's interpreter takes its numpy path (tl.sum is a jit function, and
    every jit-function call costs the interpreter a re-patch of triton.language)."""
    return tl.reduce(x, 0, _sum_combine, keep_dims=True)


@triton.jit
def _zeros_like(x):
    return tl.full(x.shape, 0.0, x.dtype)


@triton.jit
def _walk(ar, ai, xr, xi, cr, ci, rows, REV: tl.constexpr, REAL: tl.constexpr,
          BLOCK_T: tl.constexpr, WANT_P: tl.constexpr):
    """The recurrence h = A h + x over the rows of a tile, entered with the carry (cr, ci)
    (REV: from the last row to the first). Returns the states (tiles), the carry leaving the
    tile and, with WANT_P, the tile's total decay (product of its A's, by multiplication).

    Written row by row (unrolled over the BLOCK_T rows): with the time axis inside each thread
    this is a plain chain of complex multiply-adds in registers -- no scan tree, no products
    of decays, no flips, no shuffles."""
    hr_t = tl.full(xr.shape, 0.0, xr.dtype)
    hi_t = tl.full(xr.shape, 0.0, xr.dtype)
    pr = tl.full(cr.shape, 1.0, cr.dtype)
    pi = tl.full(cr.shape, 0.0, cr.dtype)
    for tt in tl.static_range(BLOCK_T):
        if REV:
            t = BLOCK_T - 1 - tt
        else:
            t = tt
        # row t as [1, BLOCK_D]: the time axis lies inside each thread and `sel` is a
        # compile-time pattern, so this folds to picking registers (the -0.0 fill makes
        # the additions exact identities, which the compiler removes)
        sel = rows == t
        a_r = tl.reduce(tl.where(sel, ar, -0.0), 0, _sum_combine, keep_dims=True)
        x_r = tl.reduce(tl.where(sel, xr, -0.0), 0, _sum_combine, keep_dims=True)
        if REAL:
            cr = a_r * cr + x_r
            hr_t = tl.where(sel, cr, hr_t)
            if WANT_P:
                pr = a_r * pr
        else:
            a_i = tl.reduce(tl.where(sel, ai, -0.0), 0, _sum_combine, keep_dims=True)
            x_i = tl.reduce(tl.where(sel, xi, -0.0), 0, _sum_combine, keep_dims=True)
            cr, ci = a_r * cr - a_i * ci + x_r, a_r * ci + a_i * cr + x_i
            hr_t = tl.where(sel, cr, hr_t)
            hi_t = tl.where(sel, ci, hi_t)
            if WANT_P:
                pr, pi = a_r * pr - a_i * pi, a_r * pi + a_i * pr
    if REAL:
        hi_t = hr_t
        ci = cr
        pi = pr
    return hr_t, hi_t, cr, ci, pr, pi


@triton.jit
def _decay(lam, c, s, valid, CONJ: tl.constexpr, REAL: tl.constexpr):
    """(Re, Im) of lam e^{+-i theta} on valid rows, 1 elsewhere (carries pass through)."""
    if REAL:
        ar = tl.where(valid, lam, 1.0)
        ai = ar
    else:
        ar = tl.where(valid, lam * c, 1.0)
        if CONJ:
            ai = tl.where(valid, -lam * s, 0.0)
        else:
            ai = tl.where(valid, lam * s, 0.0)
    return ar, ai


@triton.jit
def _sig(z, FAST: tl.constexpr):
    """sigmoid(z) and 1 - sigmoid(z), both without cancellation or inf * 0. FAST (fp32 on
    the GPU): ex2.approx.ftz and rcp.approx.ftz (2 + 1 instructions, no denormal fix-ups).
    (The small helpers are written inline: every jit-function call costs the interpreter a
    re-patch of triton.language.)"""
    if FAST:
        e = libdevice.fast_expf(-z)
        s = libdevice.fast_dividef(1.0, 1.0 + e)
    else:
        e = tl.exp(-z)
        s = 1.0 / (1.0 + e)
    oms = tl.where(z > 0, e * s, 1.0 - s)
    return s, oms


@triton.jit
def _lam(mu, lb, FAST: tl.constexpr):
    s, oms = _sig(mu, FAST)
    return lb + (1.0 - lb) * s


@triton.jit
def _gates(c_r, c_i, mu, lb, ACC: tl.constexpr, REAL: tl.constexpr, FAST: tl.constexpr):
    """s = sigmoid(mu), 1 - s, lam, 1 - lam and x = (1 - lam) silu(c) from the raw tile;
    also sigmoid(c) (sg_r, sg_i) and c in ACC for the backward."""
    mu = mu.to(ACC)
    c_r = c_r.to(ACC)
    if REAL:
        c_i = c_r
    else:
        c_i = c_i.to(ACC)
    if FAST:
        e = libdevice.fast_expf(-mu)
        s = libdevice.fast_dividef(1.0, 1.0 + e)
        sg_r = libdevice.fast_dividef(1.0, 1.0 + libdevice.fast_expf(-c_r))
        if REAL:
            sg_i = sg_r
        else:
            sg_i = libdevice.fast_dividef(1.0, 1.0 + libdevice.fast_expf(-c_i))
    else:
        e = tl.exp(-mu)
        s = 1.0 / (1.0 + e)
        sg_r = 1.0 / (1.0 + tl.exp(-c_r))
        if REAL:
            sg_i = sg_r
        else:
            sg_i = 1.0 / (1.0 + tl.exp(-c_i))
    oms = tl.where(mu > 0, e * s, 1.0 - s)
    lam = lb + (1.0 - lb) * s
    oml = (1.0 - lb) * oms
    xr = oml * c_r * sg_r
    if REAL:
        xi = xr
    else:
        xi = oml * c_i * sg_i
    return s, oms, lam, oml, xr, xi, c_r, c_i, sg_r, sg_i


@triton.jit
def _channels(pid_d, BLOCK_D: tl.constexpr, VEC: tl.constexpr):
    """This program's channel indices. With VEC < BLOCK_D they are a permutation of the
    block that is contiguous only in groups of VEC: the compiler's coalescing pass then gives
    each thread VEC channels and spreads the channels over the warp's lanes (BLOCK_D =
    32 * VEC * num_warps), which leaves the time axis of a tile inside each thread: the
    recurrence along time needs no shuffles. Rows stay coalesced (with one warp, a warp
    reads 32 * VEC contiguous channels of a row)."""
    r = tl.arange(0, BLOCK_D)
    if VEC < BLOCK_D:
        # a permutation of the block: groups of VEC channels, the two halves interleaved
        g = r // VEC
        g = (g % 2) * (BLOCK_D // VEC // 2) + g // 2
        r = g * VEC + r % VEC
    return (pid_d * BLOCK_D + r)[None, :]


@triton.jit
def _ld_proj(pbase, sp_n, roff, k, ok, rows, md, N, D, W, BLOCK_T: tl.constexpr,
             REAL: tl.constexpr, EVEN_N: tl.constexpr):
    """Raw (c_r, c_i, mu) of tile k (all masked off unless ``ok``). ``roff`` = the tile's
    offsets from its first row (loop invariant); the row base is one int64 scalar."""
    t0 = k * BLOCK_T
    if EVEN_N:
        m2 = md & ok
    else:
        m2 = ((t0 + rows < N) & ok) & md
    rp = pbase + t0.to(tl.int64) * sp_n + roff
    c_r = tl.load(rp, mask=m2, other=0.0)
    mu = tl.load(rp + W, mask=m2, other=0.0)
    if REAL:
        c_i = c_r
    else:
        c_i = tl.load(rp + D, mask=m2, other=0.0)
    return c_r, c_i, mu


@triton.jit
def _ld_mu(pbase, sp_n, roff, k, ok, rows, md, N, W, BLOCK_T: tl.constexpr,
           SHIFT: tl.constexpr):
    """Raw mu at t + SHIFT for the rows t of tile k (masked outside [0, N))."""
    t0 = k * BLOCK_T + SHIFT
    t = t0 + rows
    m2 = ((t >= 0) & (t < N) & ok) & md
    rp = pbase + t0.to(tl.int64) * sp_n + roff + W
    return tl.load(rp, mask=m2, other=0.0)


@triton.jit
def _ld_g(gbase, sg_n, goff, k, ok, rows, md, N, D, BLOCK_T: tl.constexpr,
          REAL: tl.constexpr, EVEN_N: tl.constexpr):
    t0 = k * BLOCK_T
    if EVEN_N:
        m2 = md & ok
    else:
        m2 = ((t0 + rows < N) & ok) & md
    gp = gbase + t0.to(tl.int64) * sg_n + goff
    g_r = tl.load(gp, mask=m2, other=0.0)
    if REAL:
        g_i = g_r
    else:
        g_i = tl.load(gp + D, mask=m2, other=0.0)
    return g_r, g_i


@triton.jit
def _load_vec(ptr, mask, ACC: tl.constexpr, HAS: tl.constexpr, FILL: tl.constexpr,
              BLOCK_D: tl.constexpr):
    if HAS:
        v = tl.load(ptr, mask=mask, other=FILL).to(ACC)
    else:
        v = tl.full([1, BLOCK_D], FILL, ACC)
    return v


@triton.jit
def _fold(SE, SP, slot, b, B, n_seg, s_first, count, step, col, md, D, W, cr, ci,
          REAL: tl.constexpr, ACC: tl.constexpr):
    """Carry across ``count`` segment summaries (end state E from zero, total decay P),
    starting at segment ``s_first`` and stepping by ``step``:  c = E + P c."""
    for j in range(0, count):
        s2 = s_first + j * step
        idx = ((slot * B + b) * n_seg + s2) * W + col
        er = tl.load(SE + idx, mask=md, other=0.0).to(ACC)
        pr = tl.load(SP + idx, mask=md, other=0.0).to(ACC)
        if REAL:
            cr = er + pr * cr
        else:
            ei = tl.load(SE + idx + D, mask=md, other=0.0).to(ACC)
            pi = tl.load(SP + idx + D, mask=md, other=0.0).to(ACC)
            cr, ci = er + pr * cr - pi * ci, ei + pr * ci + pi * cr
    return cr, ci


@triton.jit
def _store_pair(ptr, idx, vr, vi, md, D, REAL: tl.constexpr):
    tl.store(ptr + idx, vr, mask=md)
    if not REAL:
        tl.store(ptr + idx + D, vi, mask=md)


@triton.jit
def _load_pair(ptr, idx, md, D, REAL: tl.constexpr, ACC: tl.constexpr):
    vr = tl.load(ptr + idx, mask=md, other=0.0).to(ACC)
    if REAL:
        vi = vr
    else:
        vi = tl.load(ptr + idx + D, mask=md, other=0.0).to(ACC)
    return vr, vi


@triton.jit
def _pre_step(ar, ai, xr, xi, cr, ci, qr, qi, BND, CUM, bidx, rows, md, D,
              REV: tl.constexpr, SEG_A: tl.constexpr, REAL: tl.constexpr,
              BLOCK_T: tl.constexpr):
    """Pre-walk step of one quantity over one tile: store the carry entering the tile (and,
    in launch A, the cumulative decay from the segment edge), then advance the carry (cr, ci)
    (and the cumulative decay (qr, qi)) over the tile."""
    _store_pair(BND, bidx, cr, ci, md, D, REAL)
    if SEG_A:
        _store_pair(CUM, bidx, qr, qi, md, D, REAL)
    _, _, cr, ci, pr, pi = _walk(ar, ai, xr, xi, cr, ci, rows, REV, REAL, BLOCK_T, SEG_A)
    if SEG_A:
        if REAL:
            qr = pr * qr
        else:
            qr, qi = pr * qr - pi * qi, pr * qi + pi * qr
    return cr, ci, qr, qi


@triton.jit
def _racc_step(ar, ai, xr, xi, er_, ei_, gr, gi, rows,
               MREV: tl.constexpr, REAL: tl.constexpr, BLOCK_T: tl.constexpr):
    """Launch A: accumulate the segment summary of a main-walk quantity while walking against
    it: E += G * E_tile, G *= P_tile (E_tile: the tile's end state from zero; G: product of
    the decays of the tiles already seen)."""
    _, _, er, ei, pr, pi = _walk(ar, ai, xr, xi, _zeros_like(er_), _zeros_like(er_), rows,
                                 MREV, REAL, BLOCK_T, True)
    if REAL:
        er_ = er_ + gr * er
        gr = gr * pr
    else:
        er_, ei_ = er_ + gr * er - gi * ei, ei_ + gr * ei + gi * er
        gr, gi = gr * pr - gi * pi, gr * pi + gi * pr
    return er_, ei_, gr, gi


@triton.jit
def _boundary(BND, CUM, bidx, pcr, pci, md, D, SEG_B: tl.constexpr, REAL: tl.constexpr,
              ACC: tl.constexpr):
    """Carry entering a tile for a pre-walk quantity: the stored boundary, plus (launch B)
    the cumulative decay from the segment edge times the segment's carry-in."""
    br, bi = _load_pair(BND, bidx, md, D, REAL, ACC)
    if SEG_B:
        qr, qi = _load_pair(CUM, bidx, md, D, REAL, ACC)
        if REAL:
            br = br + qr * pcr
        else:
            br, bi = br + qr * pcr - qi * pci, bi + qr * pci + qi * pcr
    return br, bi


# ------------------------------------------------------------------------------------ forward
@triton.jit
def _hgru_fwd_kernel(
        P, sp_b, sp_n, H, HN, H0, LB, THF, THR,
        BND, CUM, SE, SP,
        N, D, n_tiles, tps, n_seg,
        BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, REAL: tl.constexpr, ACC: tl.constexpr,
        HAS_LB: tl.constexpr, HAS_H0: tl.constexpr, DO_F: tl.constexpr, DO_R: tl.constexpr,
        PRE: tl.constexpr, MAIN: tl.constexpr, SEG_A: tl.constexpr, SEG_B: tl.constexpr,
        VEC: tl.constexpr, PREFETCH: tl.constexpr, FAST: tl.constexpr,
        EVEN_N: tl.constexpr, EVEN_D: tl.constexpr, NUM_STAGES: tl.constexpr):
    """Forward of the HGRU core. Main walk L for 'forward'/'both' (DO_F), R for 'reverse';
    'both' pre-walks R for HR. PRE+MAIN: one launch (S = 1); SEG_A / SEG_B: the two launches
    of the segmented scheme. Summary slots: HF 0, HR 1."""
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
    pbase = P + b * sp_b
    hbase = H + b * N * W
    roff = rows * sp_n + offs_d  # tile offsets from its first row
    hoff = rows * W + offs_d
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
            p_cr, p_ci, p_mu = _ld_proj(pbase, sp_n, roff, k0, nk > 0, rows, md, N, D, W,
                                        BLOCK_T, REAL, EVEN_N)
        for j in tl.range(0, nk, num_stages=NUM_STAGES):
            k = k0 + j * kstep
            if PREFETCH:
                c_r = p_cr
                c_i = p_ci
                mu = p_mu
                p_cr, p_ci, p_mu = _ld_proj(pbase, sp_n, roff, k + kstep, j + 1 < nk, rows,
                                            md, N, D, W, BLOCK_T, REAL, EVEN_N)
            else:
                c_r, c_i, mu = _ld_proj(pbase, sp_n, roff, k, True, rows, md, N, D, W,
                                        BLOCK_T, REAL, EVEN_N)
            if EVEN_N:
                mt = tl.full([BLOCK_T, 1], 1, tl.int1)
            else:
                mt = k * BLOCK_T + rows < N
            s, oms, lam, oml, xr, xi, c_r, c_i, sg_r, sg_i = _gates(c_r, c_i, mu, lb, ACC,
                                                                        REAL, FAST)
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
            p_cr, p_ci, p_mu = _ld_proj(pbase, sp_n, roff, k0, nk > 0, rows, md, N, D, W,
                                        BLOCK_T, REAL, EVEN_N)
        for j in tl.range(0, nk, num_stages=NUM_STAGES):
            k = k0 + j * kstep
            if PREFETCH:
                c_r = p_cr
                c_i = p_ci
                mu = p_mu
                p_cr, p_ci, p_mu = _ld_proj(pbase, sp_n, roff, k + kstep, j + 1 < nk, rows,
                                            md, N, D, W, BLOCK_T, REAL, EVEN_N)
            else:
                c_r, c_i, mu = _ld_proj(pbase, sp_n, roff, k, True, rows, md, N, D, W,
                                        BLOCK_T, REAL, EVEN_N)
            t = k * BLOCK_T + rows
            if EVEN_N:
                mt = tl.full([BLOCK_T, 1], 1, tl.int1)
            else:
                mt = t < N
            m2 = mt & md
            s, oms, lam, oml, xr, xi, c_r, c_i, sg_r, sg_i = _gates(c_r, c_i, mu, lb, ACC,
                                                                        REAL, FAST)
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
            hp = hbase + (k * BLOCK_T).to(tl.int64) * W + hoff
            tl.store(hp, hr.to(H.dtype.element_ty), mask=m2)
            if not REAL:
                tl.store(hp + D, hi.to(H.dtype.element_ty), mask=m2)
        if not BOTH:
            if DO_F:
                last = seg == n_seg - 1
            else:
                last = seg == 0
            if last:
                _store_pair(HN, b * W + offs_d, mr, mi, md, D, REAL)


# ----------------------------------------------------------------------------------- backward
@triton.jit
def _hgru_bwd_kernel(
        P, sp_b, sp_n, G, sg_b, sg_n, GN, H0, LB, THF, THR,
        DP, DH0, PTF, PTR, PLB,
        BND, CUM, SE, SP,
        N, D, n_tiles, tps, n_seg,
        BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, REAL: tl.constexpr, ACC: tl.constexpr,
        HAS_LB: tl.constexpr, HAS_H0: tl.constexpr, HAS_GN: tl.constexpr,
        DO_F: tl.constexpr, DO_R: tl.constexpr, MAIN_REV: tl.constexpr,
        PRE: tl.constexpr, MAIN: tl.constexpr, SEG_A: tl.constexpr, SEG_B: tl.constexpr,
        VEC: tl.constexpr, PREFETCH: tl.constexpr, FAST: tl.constexpr,
        EVEN_N: tl.constexpr, EVEN_D: tl.constexpr, NUM_STAGES: tl.constexpr):
    """Backward of the HGRU core. Main walk R (MAIN_REV: 'forward', 'both') or L
    ('reverse'); quantities whose direction is the main one are carried by the main walk,
    the others by the pre-walk. Boundary slots: HF/HR 0, DF/DR 1. Summary slots: HF 0,
    HR 1, DF 2, DR 3. h0 seeds HF ('forward') or HR ('reverse'); dhN seeds DF / DR."""
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
    WP = W + D
    pbase = P + b * sp_b
    gbase = G + b * sg_b
    dbase = DP + b * N * WP
    roff = rows * sp_n + offs_d  # tile offsets from its first row
    goff = rows * sg_n + offs_d
    doff = rows * WP + offs_d
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
                c_r, c_i, mu = _ld_proj(pbase, sp_n, roff, k, True, rows, md, N, D, W,
                                        BLOCK_T, REAL, EVEN_N)
                s, oms, lam, oml, xr, xi, c_r, c_i, sg_r, sg_i = _gates(c_r, c_i, mu, lb, ACC,
                                                                        REAL, FAST)
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
                g_r, g_i = _ld_g(gbase, sg_n, goff, k, True, rows, md, N, D, BLOCK_T, REAL, EVEN_N)
                g_r = g_r.to(ACC)
                g_i = g_i.to(ACC)
            if W_DF:
                vn = t + 1 < N
                lamn = _lam(_ld_mu(pbase, sp_n, roff, k, True, rows, md, N, W, BLOCK_T,
                                   1).to(ACC), lb, FAST)
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
                lamp = _lam(_ld_mu(pbase, sp_n, roff, k, True, rows, md, N, W, BLOCK_T,
                                   -1).to(ACC), lb, FAST)
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
            p_cr, p_ci, p_mu = _ld_proj(pbase, sp_n, roff, k0, nk > 0, rows, md, N, D, W,
                                        BLOCK_T, REAL, EVEN_N)
            p_gr, p_gi = _ld_g(gbase, sg_n, goff, k0, nk > 0, rows, md, N, D, BLOCK_T, REAL, EVEN_N)
        for j in tl.range(0, nk, num_stages=NUM_STAGES):
            k = k0 + j * kstep
            if PREFETCH:
                c_r = p_cr
                c_i = p_ci
                mu = p_mu
                g_r = p_gr
                g_i = p_gi
                p_cr, p_ci, p_mu = _ld_proj(pbase, sp_n, roff, k + kstep, j + 1 < nk, rows,
                                            md, N, D, W, BLOCK_T, REAL, EVEN_N)
                p_gr, p_gi = _ld_g(gbase, sg_n, goff, k + kstep, j + 1 < nk, rows, md, N, D,
                                   BLOCK_T, REAL, EVEN_N)
            else:
                c_r, c_i, mu = _ld_proj(pbase, sp_n, roff, k, True, rows, md, N, D, W,
                                        BLOCK_T, REAL, EVEN_N)
                g_r, g_i = _ld_g(gbase, sg_n, goff, k, True, rows, md, N, D, BLOCK_T, REAL, EVEN_N)
            t = k * BLOCK_T + rows
            if EVEN_N:
                mt = tl.full([BLOCK_T, 1], 1, tl.int1)
            else:
                mt = t < N
            m2 = mt & md
            s, oms, lam, oml, xr, xi, c_r, c_i, sg_r, sg_i = _gates(c_r, c_i, mu, lb, ACC,
                                                                        REAL, FAST)
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
                                                 BLOCK_T, False)
                else:
                    br, bi = _boundary(BND, CUM, bidx0, p0r, p0i, md, D, SEG_B, REAL, ACC)
                    hr, hi, _, _, _, _ = _walk(ar, ai, xr, xi, br, bi, rows, False, REAL,
                                               BLOCK_T, False)
                vn = t + 1 < N
                lamn = _lam(_ld_mu(pbase, sp_n, roff, k, True, rows, md, N, W, BLOCK_T,
                                   1).to(ACC), lb, FAST)
                ar, ai = _decay(lamn, cf, sf, vn, True, REAL)
                if DF_MAIN:
                    er, ei, nr, ni, _, _ = _walk(ar, ai, g_r, g_i, nr, ni, rows, True, REAL,
                                                 BLOCK_T, False)
                else:
                    br, bi = _boundary(BND, CUM, bidx1, p1r, p1i, md, D, SEG_B, REAL, ACC)
                    er, ei, _, _, _, _ = _walk(ar, ai, g_r, g_i, br, bi, rows, True, REAL,
                                               BLOCK_T, False)
                yr = hr - xr
                dxr += er
                if REAL:
                    q += er * yr
                else:
                    yi = hi - xi
                    dxi += ei
                    q += er * yr + ei * yi
                    acc_f += _rsum(tl.where(m2, ei * yr - er * yi, 0.0))
            if DO_R:
                # reverse direction: state HR (R), gradient state DR (L)
                ar, ai = _decay(lam, cr_, sr_, mt, False, REAL)
                if HR_MAIN:
                    hr, hi, mr, mi, _, _ = _walk(ar, ai, xr, xi, mr, mi, rows, True, REAL,
                                                 BLOCK_T, False)
                else:
                    br, bi = _boundary(BND, CUM, bidx0, p0r, p0i, md, D, SEG_B, REAL, ACC)
                    hr, hi, _, _, _, _ = _walk(ar, ai, xr, xi, br, bi, rows, True, REAL,
                                               BLOCK_T, False)
                vp = (t >= 1) & (t < N)
                lamp = _lam(_ld_mu(pbase, sp_n, roff, k, True, rows, md, N, W, BLOCK_T,
                                   -1).to(ACC), lb, FAST)
                ar, ai = _decay(lamp, cr_, sr_, vp, True, REAL)
                if DR_MAIN:
                    er, ei, nr, ni, _, _ = _walk(ar, ai, g_r, g_i, nr, ni, rows, False, REAL,
                                                 BLOCK_T, False)
                else:
                    br, bi = _boundary(BND, CUM, bidx1, p1r, p1i, md, D, SEG_B, REAL, ACC)
                    er, ei, _, _, _, _ = _walk(ar, ai, g_r, g_i, br, bi, rows, False, REAL,
                                               BLOCK_T, False)
                yr = hr - xr
                dxr += er
                if REAL:
                    q += er * yr
                else:
                    yi = hi - xi
                    dxi += ei
                    q += er * yr + ei * yi
                    acc_r += _rsum(tl.where(m2, ei * yr - er * yi, 0.0))
            # gates' gradients
            olb = 1.0 - lb
            dlx = -(dxr * c_r * sg_r)
            if not REAL:
                dlx -= dxi * c_i * sg_i
            pos = lam > 0
            if FAST:
                rl = libdevice.fast_dividef(1.0, tl.where(pos, lam, 1.0))
            else:
                rl = 1.0 / tl.where(pos, lam, 1.0)
            r = tl.where(pos, olb * s * rl, 1.0)
            dmu = (q * r + dlx * olb * s) * oms
            if HAS_LB:
                acc_l += _rsum(tl.where(m2, (tl.where(pos, q * rl, 0.0) + dlx) * oms, 0.0))
            dcr = oml * dxr * sg_r * (1.0 + c_r * (1.0 - sg_r))
            dpp = dbase + (k * BLOCK_T).to(tl.int64) * WP + doff
            tl.store(dpp, dcr.to(DP.dtype.element_ty), mask=m2)
            if not REAL:
                dci = oml * dxi * sg_i * (1.0 + c_i * (1.0 - sg_i))
                tl.store(dpp + D, dci.to(DP.dtype.element_ty), mask=m2)
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
            else:
                is_end = seg == n_seg - 1
                pe = pbase + (N - 1).to(tl.int64) * sp_n
            if is_end:
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


# ------------------------------------------------------------------------------ launch config
_OVERRIDE: dict = {}


@contextlib.contextmanager
def override_config(**kwargs):
    """Force launch parameters (tests, tuning): ``block_t``, ``block_d``, ``num_warps``,
    ``vec``, ``prefetch``, ``num_stages`` (each also as ``fwd_*`` / ``bwd_*`` for one pass),
    ``segments`` (the number S of sequence segments; >1 runs the two-launch segmented
    scheme), ``target_programs`` (for the automatic choice of S)."""
    old = dict(_OVERRIDE)
    _OVERRIDE.update(kwargs)
    try:
        yield
    finally:
        _OVERRIDE.clear()
        _OVERRIDE.update(old)


# Defaults per pass. VEC channels per thread and BLOCK_D = 32 * VEC * num_warps put the time
# axis of a tile inside each thread (see _channels). Chosen from an H200 sweep of an earlier
# version of these kernels and from instruction / register counts of this one:
# docs/hgru_kernel_notes.md.
GPU_FWD = dict(block_t=8, block_d=64, num_warps=1, vec=2, prefetch=True, num_stages=1)
GPU_BWD = dict(block_t=4, block_d=64, num_warps=1, vec=2, prefetch=False, num_stages=1)
# the interpreter: its layout is irrelevant; the row-by-row walk costs it O(BLOCK_T) tile
# operations per tile, so short tiles and wide blocks are fastest there
INTERP = dict(block_t=8, block_d=64, num_warps=1, vec=64, prefetch=True, num_stages=1)
MIN_TILES_PER_SEG = 8    # segments shorter than this many tiles are not worth a launch
WARPS_PER_SM = 8         # resident warps per SM wanted before sequences are split


def _pow2(n: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(n, 1))))


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


class _Cfg:
    def __init__(self, B: int, N: int, d: int, device: torch.device, bwd: bool):
        on_gpu = device.type == "cuda" and not _interpreting()
        c = dict((GPU_BWD if bwd else GPU_FWD) if on_gpu else INTERP)
        c.update({k: v for k, v in _OVERRIDE.items() if k in c})
        if bwd:
            c.update({k[4:]: v for k, v in _OVERRIDE.items() if k.startswith("bwd_")})
        else:
            c.update({k[4:]: v for k, v in _OVERRIDE.items() if k.startswith("fwd_")})
        self.block_t = max(2, min(c["block_t"], _pow2(N)))
        self.block_d = max(2, min(c["block_d"], _pow2(d)))
        self.num_warps = c["num_warps"]
        self.num_stages = c["num_stages"]
        self.vec = min(c["vec"], self.block_d)
        self.on_gpu = on_gpu
        self.prefetch = bool(c["prefetch"])
        self.n_dblk = triton.cdiv(d, self.block_d)
        self.n_tiles = triton.cdiv(N, self.block_t)
        S = _OVERRIDE.get("segments")
        if S is None:
            S = 1
            target = _OVERRIDE.get("target_programs")
            if target is None and on_gpu:
                sms = torch.cuda.get_device_properties(device).multi_processor_count
                target = WARPS_PER_SM * sms // self.num_warps
            programs = B * self.n_dblk
            if target and programs < target:
                S = max(1, min(triton.cdiv(target, programs),
                               self.n_tiles // MIN_TILES_PER_SEG))
        S = max(1, min(int(S), self.n_tiles))
        self.tps = triton.cdiv(self.n_tiles, S)
        self.n_seg = triton.cdiv(self.n_tiles, self.tps)  # no empty segment


def _acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _acc_torch(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check(proj: Tensor, theta_f, theta_r, h0, direction: str):
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    if proj.dim() != 3:
        raise ValueError(f"proj must be (B, N, W + d), got shape {tuple(proj.shape)}")
    real = theta_f is None
    C = proj.shape[-1]
    if real:
        if theta_r is not None:
            raise ValueError("theta_r given without theta_f (real-valued HGRU takes neither)")
        if C % 2:
            raise ValueError(f"real HGRU: proj width must be 2d, got {C}")
        d = C // 2
    else:
        d = theta_f.numel()
        if C != 3 * d:
            raise ValueError(f"complex HGRU: proj width must be 3d = {3 * d}, got {C}")
        if direction != "forward" and (theta_r is None or theta_r.numel() != d):
            raise ValueError(f"direction {direction!r} needs theta_r of size {d}")
    if h0 is not None and direction == "both":
        raise ValueError("h0 is not allowed for direction 'both'")
    W = d if real else 2 * d
    if h0 is not None and tuple(h0.shape) != (proj.shape[0], W):
        raise ValueError(f"h0 must be {(proj.shape[0], W)}, got {tuple(h0.shape)}")
    if proj.shape[1] == 0:
        raise ValueError("proj has no tokens (N = 0)")
    if proj.stride(-1) != 1 or proj.stride(1) >= 2 ** 24:
        # unit channel stride needed; the in-tile row offsets are int32 (row stride * 64 rows
        # < 2^31); any other batch / row stride is read in place
        proj = proj.contiguous()
    return proj, real, d, W


def _vec(x: Optional[Tensor]) -> Optional[Tensor]:
    return None if x is None else x.contiguous()


def _grid(cfg: _Cfg, B: int):
    return (cfg.n_dblk, B, cfg.n_seg)


# ------------------------------------------------------------------------------------ forward
def hgru_forward(proj: Tensor, lower_bound: Optional[Tensor], theta_f: Optional[Tensor],
                 theta_r: Optional[Tensor], h0: Optional[Tensor], direction: str
                 ) -> Tuple[Tensor, Tensor]:
    """The HGRU core forward. Returns ``h`` (B, N, W) contiguous in ``proj.dtype`` and the
    final state ``hN`` (B, W) in fp32 (fp64 for fp64 proj; zeros for 'both')."""
    proj, real, d, W = _check(proj, theta_f, theta_r, h0, direction)
    B, N, _ = proj.shape
    dev = proj.device
    acc_t = _acc_torch(proj.dtype)
    do_f = direction in ("forward", "both")
    do_r = direction in ("reverse", "both")
    both = do_f and do_r
    cfg = _Cfg(B, N, d, dev, bwd=False)
    h = torch.empty(B, N, W, device=dev, dtype=proj.dtype)
    hN = torch.zeros(B, W, device=dev, dtype=acc_t)
    lb, thf, thr, h0c = _vec(lower_bound), _vec(theta_f), _vec(theta_r), _vec(h0)
    seg = cfg.n_seg > 1
    bnd = cum = h
    if both:
        bnd = torch.empty(B, cfg.n_tiles, W, device=dev, dtype=acc_t)
        cum = torch.empty_like(bnd) if seg else bnd
    se = sp = h
    if seg:
        se = torch.empty(2, B, cfg.n_seg, W, device=dev, dtype=acc_t)
        sp = torch.empty_like(se)
    args = dict(
        P=proj, sp_b=proj.stride(0), sp_n=proj.stride(1), H=h, HN=hN,
        H0=h0c if h0c is not None else h, LB=lb if lb is not None else h,
        THF=thf if (thf is not None and do_f) else h,
        THR=thr if (thr is not None and do_r) else h,
        BND=bnd, CUM=cum, SE=se, SP=sp,
        N=N, D=d, n_tiles=cfg.n_tiles, tps=cfg.tps, n_seg=cfg.n_seg,
        BLOCK_T=cfg.block_t, BLOCK_D=cfg.block_d, REAL=real, ACC=_acc(proj.dtype),
        HAS_LB=lb is not None, HAS_H0=h0c is not None, DO_F=do_f, DO_R=do_r,
        VEC=cfg.vec, PREFETCH=cfg.prefetch, NUM_STAGES=cfg.num_stages,
        FAST=cfg.on_gpu and proj.dtype != torch.float64,
        EVEN_N=N % cfg.block_t == 0, EVEN_D=d % cfg.block_d == 0,
        num_warps=cfg.num_warps)
    grid = _grid(cfg, B)
    if not seg:
        _hgru_fwd_kernel[grid](PRE=both, MAIN=True, SEG_A=False, SEG_B=False, **args)
    else:
        _hgru_fwd_kernel[grid](PRE=False, MAIN=False, SEG_A=True, SEG_B=False, **args)
        _hgru_fwd_kernel[grid](PRE=False, MAIN=False, SEG_A=False, SEG_B=True, **args)
    return h, hN


# ----------------------------------------------------------------------------------- backward
def hgru_backward(dh: Tensor, dhN: Optional[Tensor], proj: Tensor,
                  lower_bound: Optional[Tensor], theta_f: Optional[Tensor],
                  theta_r: Optional[Tensor], h0: Optional[Tensor], direction: str
                  ) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor], Optional[Tensor],
                             Optional[Tensor]]:
    """Gradients of :func:`hgru_forward`: ``dproj`` (B, N, W + d) contiguous in
    ``proj.dtype``; ``dlb`` (d,), ``dtf`` / ``dtr`` (d,), ``dh0`` (B, W) in fp32 (fp64 for
    fp64 proj), each None where the input is None or unused by ``direction``."""
    proj, real, d, W = _check(proj, theta_f, theta_r, h0, direction)
    B, N, _ = proj.shape
    if tuple(dh.shape) != (B, N, W):
        raise ValueError(f"dh must be {(B, N, W)}, got {tuple(dh.shape)}")
    if dh.stride(-1) != 1 or dh.stride(1) >= 2 ** 24:
        dh = dh.contiguous()
    dev = proj.device
    acc_t = _acc_torch(proj.dtype)
    do_f = direction in ("forward", "both")
    do_r = direction in ("reverse", "both")
    both = do_f and do_r
    main_rev = direction != "reverse"
    if both:
        dhN = None  # hN is zeros for 'both': it does not depend on the inputs
    cfg = _Cfg(B, N, d, dev, bwd=True)
    S = cfg.n_seg
    seg = S > 1
    dproj = torch.empty(B, N, W + d, device=dev, dtype=proj.dtype)
    lb, thf, thr, h0c, gN = (_vec(lower_bound), _vec(theta_f), _vec(theta_r), _vec(h0),
                             _vec(dhN))
    need_tf = do_f and not real
    need_tr = do_r and not real
    ptf = torch.empty(B * S, d, device=dev, dtype=acc_t) if need_tf else dproj
    ptr = torch.empty(B * S, d, device=dev, dtype=acc_t) if need_tr else dproj
    plb = torch.empty(B * S, d, device=dev, dtype=acc_t) if lb is not None else dproj
    dh0 = torch.empty(B, W, device=dev, dtype=acc_t) if h0c is not None else None
    bnd = torch.empty(2, B, cfg.n_tiles, W, device=dev, dtype=acc_t)
    cum = torch.empty_like(bnd) if seg else bnd
    se = sp = dproj
    if seg:
        se = torch.empty(4, B, S, W, device=dev, dtype=acc_t)
        sp = torch.empty_like(se)
    args = dict(
        P=proj, sp_b=proj.stride(0), sp_n=proj.stride(1),
        G=dh, sg_b=dh.stride(0), sg_n=dh.stride(1),
        GN=gN if gN is not None else dproj, H0=h0c if h0c is not None else dproj,
        LB=lb if lb is not None else dproj,
        THF=thf if (thf is not None and do_f) else dproj,
        THR=thr if (thr is not None and do_r) else dproj,
        DP=dproj, DH0=dh0 if dh0 is not None else dproj, PTF=ptf, PTR=ptr, PLB=plb,
        BND=bnd, CUM=cum, SE=se, SP=sp,
        N=N, D=d, n_tiles=cfg.n_tiles, tps=cfg.tps, n_seg=S,
        BLOCK_T=cfg.block_t, BLOCK_D=cfg.block_d, REAL=real, ACC=_acc(proj.dtype),
        HAS_LB=lb is not None, HAS_H0=h0c is not None, HAS_GN=gN is not None,
        DO_F=do_f, DO_R=do_r, MAIN_REV=main_rev,
        VEC=cfg.vec, PREFETCH=cfg.prefetch, NUM_STAGES=cfg.num_stages,
        FAST=cfg.on_gpu and proj.dtype != torch.float64,
        EVEN_N=N % cfg.block_t == 0, EVEN_D=d % cfg.block_d == 0,
        num_warps=cfg.num_warps)
    grid = _grid(cfg, B)
    if not seg:
        _hgru_bwd_kernel[grid](PRE=True, MAIN=True, SEG_A=False, SEG_B=False, **args)
    else:
        _hgru_bwd_kernel[grid](PRE=False, MAIN=False, SEG_A=True, SEG_B=False, **args)
        _hgru_bwd_kernel[grid](PRE=False, MAIN=False, SEG_A=False, SEG_B=True, **args)
    dtf = ptf.sum(0) if need_tf else None
    dtr = ptr.sum(0) if need_tr else None
    dlb = plb.sum(0) if lb is not None else None
    return dproj, dlb, dtf, dtr, dh0
