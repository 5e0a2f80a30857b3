"""Device helpers of the fused HGRU kernels (``triton_hgru``): gates in registers, the
in-register walk of a tile, loads of the projection / gradient tiles, the per-tile
boundaries and per-segment summaries. The design is in docs/triton.md."""
from __future__ import annotations

import triton
import triton.language as tl
from triton.language.extra import libdevice
try:  # Triton's own: its interpreter recognises it and sums with numpy (tests run fast)
    from triton.language.standard import _sum_combine
except ImportError:  # a private name: a Triton without it gets the same function
    @triton.jit
    def _sum_combine(a, b):
        return a + b


# ------------------------------------------------------------------------------ device helpers
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
          BLOCK_T: tl.constexpr, WANT_P: tl.constexpr, PREV: tl.constexpr = False):
    """The recurrence h = A h + x over the rows of a tile, entered with the carry (cr, ci)
    (REV: from the last row to the first). Returns the states (tiles), the carry leaving the
    tile and, with WANT_P, the tile's total decay (product of its A's, by multiplication).
    PREV: the states returned are those entering each row (h_{t-1}; reverse: h_{t+1}).

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
            if PREV:
                hr_t = tl.where(sel, cr, hr_t)
            cr = a_r * cr + x_r
            if not PREV:
                hr_t = tl.where(sel, cr, hr_t)
            if WANT_P:
                pr = a_r * pr
        else:
            a_i = tl.reduce(tl.where(sel, ai, -0.0), 0, _sum_combine, keep_dims=True)
            x_i = tl.reduce(tl.where(sel, xi, -0.0), 0, _sum_combine, keep_dims=True)
            if PREV:
                hr_t = tl.where(sel, cr, hr_t)
                hi_t = tl.where(sel, ci, hi_t)
            cr, ci = a_r * cr - a_i * ci + x_r, a_r * ci + a_i * cr + x_i
            if not PREV:
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
def _prev_terms(ar, ai, pr, pi, c, s, REAL: tl.constexpr):
    """The scan API's backward, from the state entering each row p = h_{t-1} (reverse:
    h_{t+1}) and its decay A = lam e^{i theta} = (ar, ai): y = A p (for dtheta =
    Im(D conj y)) and e^{i theta} p (for dlam = Re(D conj(e^{i theta} p)): no division by
    lam, which may be 0)."""
    if REAL:
        yr = ar * pr
        yi = yr
        er = pr
        ei = pr
    else:
        yr = ar * pr - ai * pi
        yi = ar * pi + ai * pr
        er = c * pr - s * pi
        ei = c * pi + s * pr
    return yr, yi, er, ei


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


# FAST (a compile-time int): 0 exact exp and division (fp64, and fp32 off the GPU); 1 the
# GPU's fast math, libdevice fast_expf / fast_dividef (ex2.approx.ftz of the fp32 x*log2(e),
# div.approx.ftz); 2 / 3 the interpreter's stand-in for 1 (the interpreter has no libdevice),
# so the tests check the numerics the GPU runs: the same fp32 rounding of x*log2(e), every
# result moved by CUDA's documented bound (2 ulp for ex2.approx and for __fdividef with
# |b| < 2^126) upwards (2) or downwards (3), flushed to zero below 2^-126, and a / b = 0 for
# |b| >= 2^126 as div.approx.ftz gives; a / 1 stays exact (the reciprocal of 1 is exact, so
# the emulation never makes a decay exceed 1 where the GPU does not).
FAST_ULPS = tl.constexpr(2.0 ** -22)      # 2 ulp of fp32, relative
TINY = tl.constexpr(2.0 ** -126)          # the smallest normal fp32


@triton.jit
def _fexp(x, FAST: tl.constexpr):
    """exp(x) as FAST says (see above)."""
    if FAST == 1:
        e = libdevice.fast_expf(x)
    elif FAST >= 2:
        e = tl.exp2((x * 1.4426950408889634).to(tl.float32))
        e = e * (1.0 + FAST_ULPS if FAST == 2 else 1.0 - FAST_ULPS)
        e = tl.where(e < TINY, 0.0, e)
    else:
        e = tl.exp(x)
    return e


@triton.jit
def _fdiv(a, b, FAST: tl.constexpr):
    """a / b as FAST says (see above)."""
    if FAST == 1:
        q = libdevice.fast_dividef(a, b)
    elif FAST >= 2:
        q = a / b * (1.0 + FAST_ULPS if FAST == 2 else 1.0 - FAST_ULPS)
        q = tl.where((tl.abs(b) >= 1.0 / TINY) | (tl.abs(q) < TINY), 0.0, q)
        q = tl.where(b == 1.0, a, q)  # rcp.approx(1) is 1: a saturated sigmoid stays 1
    else:
        q = a / b
    return q


@triton.jit
def _sig_refined(e, FAST: tl.constexpr):
    """1 / (1 + e) for the decay's sigmoid. The fast reciprocal's error (up to 2 ulp) would
    enter every decay and compound along a sequence near lam = 1 (N x 2.4e-7 relative), so
    one Newton step (two FMAs) takes it back to about fp32 rounding."""
    b = 1.0 + e
    s = _fdiv(1.0, b, FAST)
    if FAST != 0:
        s = s + s * (1.0 - b * s)
    return s


@triton.jit
def _sig(z, FAST: tl.constexpr):
    """sigmoid(z) and 1 - sigmoid(z), both without cancellation or inf * 0. FAST (fp32 on
    the GPU): ex2.approx.ftz and rcp.approx.ftz (2 + 1 instructions, no denormal fix-ups)."""
    e = _fexp(-z, FAST)
    s = _sig_refined(e, FAST)
    oms = tl.where(z > 0, e * s, 1.0 - s)
    return s, oms


@triton.jit
def _lam(mu, lb, FAST: tl.constexpr):
    s, oms = _sig(mu, FAST)
    return lb + (1.0 - lb) * s


@triton.jit
def _gates(c_r, c_i, mu, lb, ACC: tl.constexpr, REAL: tl.constexpr, FAST: tl.constexpr,
           GIVEN: tl.constexpr):
    """s = sigmoid(mu), 1 - s, lam, 1 - lam and x = (1 - lam) silu(c) from the raw tile;
    also sigmoid(c) (sg_r, sg_i) and c in ACC for the backward. GIVEN (the scan API): the
    tile is (u, v, lam) itself: lam and x = u + i v in ACC, the other results unused."""
    if GIVEN:
        lam = mu.to(ACC)
        xr = c_r.to(ACC)
        if REAL:
            xi = xr
        else:
            xi = c_i.to(ACC)
        return lam, lam, lam, lam, xr, xi, xr, xi, xr, xi
    mu = mu.to(ACC)
    c_r = c_r.to(ACC)
    if REAL:
        c_i = c_r
    else:
        c_i = c_i.to(ACC)
    e = _fexp(-mu, FAST)
    s = _sig_refined(e, FAST)
    sg_r = _fdiv(1.0, 1.0 + _fexp(-c_r, FAST), FAST)
    if REAL:
        sg_i = sg_r
    else:
        sg_i = _fdiv(1.0, 1.0 + _fexp(-c_i, FAST), FAST)
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
def _ld_proj(pbase, vbase, lbase, sp_n, roff, k, ok, rows, md, N, D, W, BLOCK_T: tl.constexpr,
             REAL: tl.constexpr, EVEN_N: tl.constexpr, GIVEN: tl.constexpr):
    """Raw (c_r, c_i, mu) of tile k (all masked off unless ``ok``). ``roff`` = the tile's
    offsets from its first row (loop invariant); the row base is one int64 scalar. GIVEN:
    (u, v, lam) from the row bases of three tensors with the same strides."""
    t0 = k * BLOCK_T
    if EVEN_N:
        m2 = md & ok
    else:
        m2 = ((t0 + rows < N) & ok) & md
    rs = t0.to(tl.int64) * sp_n  # the tile's first row, one int64 scalar
    rp = pbase + rs + roff
    c_r = tl.load(rp, mask=m2, other=0.0)
    if GIVEN:
        mu = tl.load(lbase + rs + roff, mask=m2, other=0.0)
        if REAL:
            c_i = c_r
        else:
            c_i = tl.load(vbase + rs + roff, mask=m2, other=0.0)
    else:
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
def _ld_g(gbase, gibase, sg_n, goff, k, ok, rows, md, N, D, BLOCK_T: tl.constexpr,
          REAL: tl.constexpr, EVEN_N: tl.constexpr, GIVEN: tl.constexpr):
    """The output gradient of tile k: [Re | Im] rows of one tensor, or (GIVEN) two tensors
    with the same strides."""
    t0 = k * BLOCK_T
    if EVEN_N:
        m2 = md & ok
    else:
        m2 = ((t0 + rows < N) & ok) & md
    gs = t0.to(tl.int64) * sg_n
    gp = gbase + gs + goff
    g_r = tl.load(gp, mask=m2, other=0.0)
    if REAL:
        g_i = g_r
    elif GIVEN:
        g_i = tl.load(gibase + gs + goff, mask=m2, other=0.0)
    else:
        g_i = tl.load(gp + D, mask=m2, other=0.0)
    return g_r, g_i


@triton.jit
def _lam_at(pbase, lbase, sp_n, roff, k, rows, md, N, W, lb, BLOCK_T: tl.constexpr,
            SHIFT: tl.constexpr, ACC: tl.constexpr, FAST: tl.constexpr, GIVEN: tl.constexpr):
    """lam at t + SHIFT for the rows t of tile k (0 outside [0, N)): formed from mu, or
    (GIVEN) loaded."""
    if GIVEN:
        lam = _ld_mu(lbase, sp_n, roff, k, True, rows, md, N, 0, BLOCK_T, SHIFT).to(ACC)
    else:
        lam = _lam(_ld_mu(pbase, sp_n, roff, k, True, rows, md, N, W, BLOCK_T,
                          SHIFT).to(ACC), lb, FAST)
    return lam


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
