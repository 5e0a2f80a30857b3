"""Compiled CPU loops for the whole recurrent core of the HGRU (op ``hgrn::hgru``), with Numba.

    proj = [c (W) | mu (d)]  (B, N, W + d), W = 2d complex ([Re c | Im c]) or d real
    s = sigmoid(mu);  lam = lb + (1 - lb) s;  1 - lam = (1 - lb) sigmoid(-mu);  x = (1 - lam) silu(c)
    forward:  h_t = lam_t e^{i theta_f} h_{t-1} + x_t      (h_{-1} = h0 or 0)
    reverse:  h_t = lam_t e^{i theta_r} h_{t+1} + x_t      (h_N = h0 or 0)
    both:     h = h_fwd + h_rev                             (no initial / final state)

The same algorithm as the Triton kernels (``triton_hgru``), laid out for a CPU. A *task*
owns one batch row and a block of ``nb`` channels (chosen by the backend: wide in the
forward, narrower where the backward's scratch must stay in cache); tasks run in parallel
(``prange``; a serial driver for one thread). A task walks time with its state in small
local arrays, forming the gates on the fly from ``proj`` and prefetching the rows it will
read ``AHEAD`` steps later; the inner loop runs over the task's channels, contiguous in
memory, so LLVM vectorises it (the fp32 ``exp`` of ``numba_common`` is a polynomial, not a
libm call, for that reason). ``proj`` is read through its row strides (a column slice of a
wider tensor is fine) in its own dtype: bf16 and fp16 arrive as raw 16-bit integers (int16 =
bf16, uint16 = fp16) and are widened in registers; no fp32 copy is made.
Math runs in fp32 (fp64 for fp64 inputs); outputs are written in ``proj``'s dtype.

Walks (L: t ascending, R: descending); H = a state, D = its gradient state (docs/spec.md §5.1)

    forward op   'forward': L {HF}           'reverse': R {HR}
                 'both':    L {HF -> out}, R {HR, out += HR}  (both form their gates)
    backward     'forward': L {HF -> scratch}, R {DF, gates' backward}
                 'reverse': R {HR -> scratch}, L {DR, gates' backward}
                 'both':    L {HF -> S1, gates -> G}, R {HR -> S2, DF -> S1, dlam_f -> G},
                            L {DR, dx = DF + DR, gates' backward}

Gradients (docs/spec.md §5.1, §5.2), with p_t the state before step t (read from the
recomputed states, so nothing divides by lam):

    D_t = dh_t + conj(A_prev) D_prev  (+ dhN at the first step of the walk)
    dA_t = D_t conj(p_t);  dlam_t = Re(dA_t e^{-i theta});  dtheta += lam_t Im(dA_t e^{-i theta})
    dh0 = conj(A_last) D_last
    then the gates (as ``gates.hgru_gates_backward``), with dx = sum_dir D:
    dlam -= Re(dx conj silu(c));  dc = (1 - lam) dx silu'(c);  dmu = dlam (1 - lb) s (1 - s)
    dlb += dlam (1 - s)

Per-channel sums (dlb, dtheta) are per-task partials, (B, d) each, summed in torch
(deterministic); inside a task, runs of 128 steps are summed in the compute dtype and then
added up in fp64.

The 2-D op (``hgrn::hgru2d``) runs the same compiled drivers twice, with no copies: a walk
finds its sequence i of B * G through two batch levels and a time stride (``_at``: image
i // G, line i % G), for proj, out, dh and dproj alike. The 1-D op is G = 1; a patch grid's
rows are G = H lines of Wg tokens one token apart, its columns G = Wg lines of H tokens one
grid row apart, each step still reading contiguous runs of a block's channels. The row pass
writes out (dproj), then the column pass adds to it (``add``); within a pass tasks own
disjoint elements, so nothing races; the per-task partial sums (dlb, dtheta) of both passes
are summed by the backend. ``ends`` (1-D only) reads h0 / dhN, writes hN / dh0.

Accuracy: the walk is sequential, so in fp32 a rotating state near lam = 1 collects its
roundings over the ~1 / (1 - lam) steps it remembers: at N = 65,536, lam ~ 0.9998, the state
is within 4e-5 and the phase gradients within 3e-4 of fp64 (the torch backend's chunked scan,
whose carries use cos(theta C) directly, is within 1e-5 and 3e-5 there). Compiled with ``cache=True``: the machine code is kept on disk next to this
file (or in ``NUMBA_CACHE_DIR``), so only the first call of a process tree on a machine pays
the compile.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .numba_common import FLUSH as _FLUSH, OPTS as _OPTS
from .numba_common import _cast, _exp, _fetch, _flush, _sig2, _silu, _store, _widen

AHEAD = 4           # steps between prefetching a row and reading it


@njit(**_OPTS)
def _gate(mu, lb, one):
    """s = sigmoid(mu), 1 - s, lam = lb + (1 - lb) s and 1 - lam = (1 - lb)(1 - s), the last
    without cancellation (docs/spec.md §1.1), from a widened mu."""
    s, oms = _sig2(mu, one)
    omg = one - lb
    return s, oms, lb + omg * s, omg * oms


@njit(**_OPTS)
def _at(b, G, st):
    """Where sequence b starts in an array with strides ``st`` = (outer, inner, time): b is
    (b // G, b % G) of two batch levels (the 1-D op: G = 1; a grid's rows: G = H, columns:
    G = Wg)."""
    return (b // G) * st[0] + (b % G) * st[1]


# ---------------------------------------------------------------------------- forward
@njit(**_OPTS)
def _state_walk(b, j0, nb, proj, p0, pT, N, d, W, cplx, lbv, cs, sn, h0, use_h0, rev, S):
    """A state walk with gates from ``proj`` (sequence b at p0, step pT): S[t] = [h_re, h_im,
    lam, x_re, x_im]."""
    one = _cast(lbv[0], 1.0)
    hr = np.zeros(nb, lbv.dtype)
    hi = np.zeros(nb, lbv.dtype)
    if use_h0:
        hr[:] = h0[b, j0:j0 + nb]
        if cplx:
            hi[:] = h0[b, d + j0:d + j0 + nb]
    for step in range(N):
        t = N - 1 - step if rev else step
        pb = p0 + t * pT
        _fetch_ahead(proj, p0, pT, step, N, rev, j0, nb, d, cplx, W)
        mu = proj[pb + W + j0:pb + W + j0 + nb]
        cre = proj[pb + j0:pb + j0 + nb]
        cim = proj[pb + d + j0:pb + d + j0 + nb] if cplx else cre
        shr = S[t, 0]
        shi = S[t, 1]
        sl = S[t, 2]
        sxr = S[t, 3]
        sxi = S[t, 4]
        if cplx:
            for k in range(nb):
                s, oms, lam, oml = _gate(_widen(mu[k]), lbv[k], one)
                xr = oml * _silu(_widen(cre[k]), one)
                xi = oml * _silu(_widen(cim[k]), one)
                a = lam * cs[k]
                bb = lam * sn[k]
                nr = a * hr[k] - bb * hi[k] + xr
                ni = a * hi[k] + bb * hr[k] + xi
                hr[k] = nr
                hi[k] = ni
                shr[k] = nr
                shi[k] = ni
                sl[k] = lam
                sxr[k] = xr
                sxi[k] = xi
        else:
            for k in range(nb):
                s, oms, lam, oml = _gate(_widen(mu[k]), lbv[k], one)
                x = oml * _silu(_widen(cre[k]), one)
                nr = lam * hr[k] + x
                hr[k] = nr
                shr[k] = nr
                sl[k] = lam
                sxr[k] = x


@njit(**_OPTS)
def _fetch_ahead(a, a0, aT, step, N, rev, j0, nb, d, cplx, W):
    """At ``step`` of a walk, prefetch the row it reads ``AHEAD`` steps later in ``a`` (the
    sequence at a0, steps aT apart): channels j0 .. j0 + nb of the real plane, of the
    imaginary one (``cplx``) and, with W > 0, of mu (at W)."""
    if step + AHEAD < N:
        t = N - 1 - step - AHEAD if rev else step + AHEAD
        q = a0 + t * aT + j0
        _fetch(a, q, nb)
        if cplx:
            _fetch(a, q + d, nb)
        if W > 0:
            _fetch(a, q + W, nb)


@njit(**_OPTS)
def _fwd_task(b, j0, nb, proj, ps, out, os_, G, N, d, W, cplx, lb, cf, sf, cr_, sr_, h0, ends,
              mode, add, hN):
    """One task of the forward op: sequence b (addressed by ``_at``), channels j0 .. j0 + nb
    of each plane. mode 0 forward, 1 reverse, 2 both; ``ends``: read h0 and write hN (1-D);
    ``add``: add to ``out`` instead of writing it. 'both' is the forward walk writing (or
    adding) h_fwd and the reverse walk adding h_rev, each forming its gates from ``proj``:
    reading the projection again costs the same bytes as keeping the gates in a scratch
    (three values a channel and step) and none of its writes; the reverse walk starts on
    the rows the forward walk read last, still in cache. The walks are called with ``add``
    a literal: Numba compiles one copy of each for True and one for False, and the writing
    copy never loads ``out`` (with a variable flag, that load cost the 1-D forward ~10%)."""
    lbv = lb[j0:j0 + nb]
    p0 = _at(b, G, ps)
    o0 = _at(b, G, os_)
    hr = np.zeros(nb, lb.dtype)
    hi = np.zeros(nb, lb.dtype)
    if mode == 2:
        cs = cf[j0:j0 + nb]
        sn = sf[j0:j0 + nb]
        if add:
            _one_way(proj, p0, ps[2], out, o0, os_[2], N, d, W, cplx, j0, nb, lbv, cs, sn, hr,
                     hi, False, True)
        else:
            _one_way(proj, p0, ps[2], out, o0, os_[2], N, d, W, cplx, j0, nb, lbv, cs, sn, hr,
                     hi, False, False)
        hr[:] = 0
        hi[:] = 0
        _one_way(proj, p0, ps[2], out, o0, os_[2], N, d, W, cplx, j0, nb, lbv, cr_[j0:j0 + nb],
                 sr_[j0:j0 + nb], hr, hi, True, True)
        return
    rev = mode == 1
    cs = (cr_ if rev else cf)[j0:j0 + nb]
    sn = (sr_ if rev else sf)[j0:j0 + nb]
    if ends:
        hr[:] = h0[b, j0:j0 + nb]
        if cplx:
            hi[:] = h0[b, d + j0:d + j0 + nb]
    if add:
        _one_way(proj, p0, ps[2], out, o0, os_[2], N, d, W, cplx, j0, nb, lbv, cs, sn, hr, hi,
                 rev, True)
    else:
        _one_way(proj, p0, ps[2], out, o0, os_[2], N, d, W, cplx, j0, nb, lbv, cs, sn, hr, hi,
                 rev, False)
    if ends:
        hN[b, j0:j0 + nb] = hr
        if cplx:
            hN[b, d + j0:d + j0 + nb] = hi


@njit(**_OPTS)
def _one_way(proj, p0, pT, out, o0, oT, N, d, W, cplx, j0, nb, lbv, cs, sn, hr, hi, rev, add):
    """The walk of one direction from the state (hr, hi), writing (or adding) h."""
    one = _cast(lbv[0], 1.0)
    for step in range(N):
        t = N - 1 - step if rev else step
        pb = p0 + t * pT
        ob = o0 + t * oT
        _fetch_ahead(proj, p0, pT, step, N, rev, j0, nb, d, cplx, W)
        if add:
            _fetch_ahead(out, o0, oT, step, N, rev, j0, nb, d, cplx, 0)
        mu = proj[pb + W + j0:pb + W + j0 + nb]
        cre = proj[pb + j0:pb + j0 + nb]
        ore = out[ob + j0:ob + j0 + nb]
        if cplx:
            cim = proj[pb + d + j0:pb + d + j0 + nb]
            oim = out[ob + d + j0:ob + d + j0 + nb]
            for k in range(nb):
                s, oms, lam, oml = _gate(_widen(mu[k]), lbv[k], one)
                xr = oml * _silu(_widen(cre[k]), one)
                xi = oml * _silu(_widen(cim[k]), one)
                a = lam * cs[k]
                bb = lam * sn[k]
                nr = a * hr[k] - bb * hi[k] + xr
                ni = a * hi[k] + bb * hr[k] + xi
                hr[k] = nr
                hi[k] = ni
                _store(ore, k, nr, add)
                _store(oim, k, ni, add)
        else:
            for k in range(nb):
                s, oms, lam, oml = _gate(_widen(mu[k]), lbv[k], one)
                x = oml * _silu(_widen(cre[k]), one)
                nr = lam * hr[k] + x
                hr[k] = nr
                _store(ore, k, nr, add)


@njit(parallel=True, **_OPTS)
def hgru_fwd_parallel(proj, ps, out, os_, G, nseq, N, d, W, cplx, lb, cf, sf, cr, sr, h0, ends,
                      mode, add, hN, nb):
    nblk = (d + nb - 1) // nb
    for i in prange(nseq * nblk):
        b = i // nblk
        j0 = (i % nblk) * nb
        _fwd_task(b, j0, min(nb, d - j0), proj, ps, out, os_, G, N, d, W, cplx, lb, cf, sf,
                  cr, sr, h0, ends, mode, add, hN)


@njit(**_OPTS)
def hgru_fwd_serial(proj, ps, out, os_, G, nseq, N, d, W, cplx, lb, cf, sf, cr, sr, h0, ends,
                    mode, add, hN, nb):
    nblk = (d + nb - 1) // nb
    for i in range(nseq * nblk):
        b = i // nblk
        j0 = (i % nblk) * nb
        _fwd_task(b, j0, min(nb, d - j0), proj, ps, out, os_, G, N, d, W, cplx, lb, cf, sf,
                  cr, sr, h0, ends, mode, add, hN)


# ---------------------------------------------------------------------------- backward
@njit(**_OPTS)
def _bwd_task(b, j0, nb, proj, ps, dh, gs, dproj, ds, G, N, d, W, cplx, lb, cf, sf, cr_, sr_,
              h0, use_h0, dhN, ends, mode, add, dlb, dtf, dtr, dh0):
    """One task of the backward op (sequence b, channels j0 .. j0 + nb; as ``_fwd_task``:
    ``ends`` reads dhN and writes dh0, ``add`` adds to ``dproj``). dlb, dtf, dtr get the
    task's partial sums at [b, j0:j0 + nb]. Unlike the forward's, the final walk here is
    compiled once, ``add`` a variable: its load of dproj costs within 1% in this
    compute-heavy walk, a second copy ~35% more compile time."""
    one = _cast(lb[0], 1.0)
    p0 = _at(b, G, ps)
    g0 = _at(b, G, gs)
    q0 = _at(b, G, ds)
    both = mode == 2
    lbv = lb[j0:j0 + nb]
    zr = np.zeros(nb, lb.dtype)
    # the first state walk: HF ('forward', 'both') or HR ('reverse'), with the gates
    S = np.empty((N, 5, nb), lb.dtype)
    rev1 = mode == 1
    _state_walk(b, j0, nb, proj, p0, ps[2], N, d, W, cplx, lbv,
                (cr_ if rev1 else cf)[j0:j0 + nb], (sr_ if rev1 else sf)[j0:j0 + nb],
                h0, use_h0, rev1, S)
    # Dr, Di carry conj(A_prev) D_prev of the D walk under way
    Dr = np.zeros(nb, lb.dtype)
    Di = np.zeros(nb, lb.dtype)
    if both:
        # R: HR from the stored gates (into S2) and DF (into S[t, 0:2], dlam_f into S[t, 2])
        S2 = np.empty((N, 2, nb), lb.dtype)
        hr = np.zeros(nb, lb.dtype)
        hi = np.zeros(nb, lb.dtype)
        accf = np.zeros(nb, lb.dtype)
        accf64 = np.zeros(nb, np.float64)
        csr = cr_[j0:j0 + nb]
        snr = sr_[j0:j0 + nb]
        cs = cf[j0:j0 + nb]
        sn = sf[j0:j0 + nb]
        for step in range(N):
            if step % _FLUSH == 0:
                _flush(accf, accf64)
            t = N - 1 - step
            gb = g0 + t * gs[2]
            _fetch_ahead(dh, g0, gs[2], step, N, True, j0, nb, d, cplx, 0)
            sl = S[t, 2]
            sxr = S[t, 3]
            sxi = S[t, 4]
            s2r = S2[t, 0]
            s2i = S2[t, 1]
            pr_ = S[t - 1, 0] if t > 0 else zr
            pi_ = S[t - 1, 1] if t > 0 else zr
            dxr_ = S[t, 0]         # written: DF_t (S[t, 0:2] was read as p at t + 1)
            dxi_ = S[t, 1]
            gre = dh[gb + j0:gb + j0 + nb]
            if cplx:
                gim = dh[gb + d + j0:gb + d + j0 + nb]
                for k in range(nb):
                    lam = sl[k]
                    a = lam * csr[k]
                    bb = lam * snr[k]
                    nr = a * hr[k] - bb * hi[k] + sxr[k]
                    ni = a * hi[k] + bb * hr[k] + sxi[k]
                    hr[k] = nr
                    hi[k] = ni
                    s2r[k] = nr
                    s2i[k] = ni
                    dr = _widen(gre[k]) + Dr[k]
                    di = _widen(gim[k]) + Di[k]
                    pr = pr_[k]
                    pi = pi_[k]
                    dar = dr * pr + di * pi
                    dai = di * pr - dr * pi
                    c = cs[k]
                    sv = sn[k]
                    dxr_[k] = dr
                    dxi_[k] = di
                    sl[k] = dar * c + dai * sv
                    accf[k] += lam * (dai * c - dar * sv)
                    Dr[k] = lam * (c * dr + sv * di)
                    Di[k] = lam * (c * di - sv * dr)
            else:
                for k in range(nb):
                    lam = sl[k]
                    nr = lam * hr[k] + sxr[k]
                    hr[k] = nr
                    s2r[k] = nr
                    dr = _widen(gre[k]) + Dr[k]
                    dxr_[k] = dr
                    sl[k] = dr * pr_[k]
                    Dr[k] = lam * dr
        _flush(accf, accf64)
        dtf[b, j0:j0 + nb] = accf64
        Dr[:] = 0
        Di[:] = 0
    else:
        S2 = S  # the states the final walk reads (its p_t)
        # the final state's gradient enters at the first step of the D walk
        if ends:
            Dr[:] = dhN[b, j0:j0 + nb]
            if cplx:
                Di[:] = dhN[b, d + j0:d + j0 + nb]
    h0r = np.zeros(nb, lb.dtype)
    h0i = np.zeros(nb, lb.dtype)
    if use_h0:
        h0r[:] = h0[b, j0:j0 + nb]
        if cplx:
            h0i[:] = h0[b, d + j0:d + j0 + nb]
    # the final walk: D of the last direction (R for 'forward', L otherwise), the gates'
    # backward
    rev_f = mode == 0
    cs = (cf if mode == 0 else cr_)[j0:j0 + nb]
    sn = (sf if mode == 0 else sr_)[j0:j0 + nb]
    acc = np.zeros(nb, lb.dtype)        # dtheta of this walk's direction
    lbacc = np.zeros(nb, lb.dtype)
    acc64 = np.zeros(nb, np.float64)
    lbacc64 = np.zeros(nb, np.float64)
    for step in range(N):
        if step % _FLUSH == 0:
            _flush(acc, acc64)
            _flush(lbacc, lbacc64)
        t = N - 1 - step if rev_f else step
        tp = t - 1 if rev_f else t + 1          # where p_t lives
        has_p = tp >= 0 and tp < N
        pr_ = S2[tp, 0] if has_p else h0r
        pi_ = S2[tp, 1] if has_p else h0i
        ex_r = S[t, 0] if both else zr           # DF, dlam_f of 'both'
        ex_i = S[t, 1] if both else zr
        ex_l = S[t, 2] if both else zr
        pb = p0 + t * ps[2]
        gb = g0 + t * gs[2]
        ob = q0 + t * ds[2]
        _fetch_ahead(proj, p0, ps[2], step, N, rev_f, j0, nb, d, cplx, W)
        _fetch_ahead(dh, g0, gs[2], step, N, rev_f, j0, nb, d, cplx, 0)
        if add:
            _fetch_ahead(dproj, q0, ds[2], step, N, rev_f, j0, nb, d, cplx, W)
        mu = proj[pb + W + j0:pb + W + j0 + nb]
        cre = proj[pb + j0:pb + j0 + nb]
        gre = dh[gb + j0:gb + j0 + nb]
        ore = dproj[ob + j0:ob + j0 + nb]
        omu = dproj[ob + W + j0:ob + W + j0 + nb]
        if cplx:
            cim = proj[pb + d + j0:pb + d + j0 + nb]
            gim = dh[gb + d + j0:gb + d + j0 + nb]
            oim = dproj[ob + d + j0:ob + d + j0 + nb]
            for k in range(nb):
                s, oms, lam, oml = _gate(_widen(mu[k]), lbv[k], one)
                omg = one - lbv[k]
                c = cs[k]
                sv = sn[k]
                dr = _widen(gre[k]) + Dr[k]
                di = _widen(gim[k]) + Di[k]
                Dr[k] = lam * (c * dr + sv * di)
                Di[k] = lam * (c * di - sv * dr)
                pr = pr_[k]
                pi = pi_[k]
                dar = dr * pr + di * pi
                dai = di * pr - dr * pi
                acc[k] += lam * (dai * c - dar * sv)
                dxr = dr + ex_r[k]
                dxi = di + ex_i[k]
                cr = _widen(cre[k])
                ci = _widen(cim[k])
                er = _exp(-cr)
                ei = _exp(-ci)
                sgr = one / (one + er)
                sgi = one / (one + ei)
                dlam = dar * c + dai * sv + ex_l[k] - (cr * sgr * dxr + ci * sgi * dxi)
                # silu'(c) = sig(c) (1 + c (1 - sig(c))), 1 - sig(c) = e sig(c)
                _store(ore, k, dxr * oml * sgr * (one + cr * er * sgr), add)
                _store(oim, k, dxi * oml * sgi * (one + ci * ei * sgi), add)
                _store(omu, k, dlam * omg * s * oms, add)
                lbacc[k] += dlam * oms
        else:
            for k in range(nb):
                s, oms, lam, oml = _gate(_widen(mu[k]), lbv[k], one)
                omg = one - lbv[k]
                dr = _widen(gre[k]) + Dr[k]
                Dr[k] = lam * dr
                dxr = dr + ex_r[k]
                cr = _widen(cre[k])
                er = _exp(-cr)
                sgr = one / (one + er)
                dlam = dr * pr_[k] + ex_l[k] - cr * sgr * dxr
                _store(ore, k, dxr * oml * sgr * (one + cr * er * sgr), add)
                _store(omu, k, dlam * omg * s * oms, add)
                lbacc[k] += dlam * oms
    _flush(acc, acc64)
    _flush(lbacc, lbacc64)
    dlb[b, j0:j0 + nb] = lbacc64
    if mode == 0:
        dtf[b, j0:j0 + nb] = acc64
    else:
        dtr[b, j0:j0 + nb] = acc64
    if ends and not both:  # dh0 = conj(A at the walk's last step) D there: the carry
        dh0[b, j0:j0 + nb] = Dr
        if cplx:
            dh0[b, d + j0:d + j0 + nb] = Di


@njit(parallel=True, **_OPTS)
def hgru_bwd_parallel(proj, ps, dh, gs, dproj, ds, G, nseq, N, d, W, cplx, lb, cf, sf, cr, sr,
                      h0, use_h0, dhN, ends, mode, add, dlb, dtf, dtr, dh0, nb):
    nblk = (d + nb - 1) // nb
    for i in prange(nseq * nblk):
        b = i // nblk
        j0 = (i % nblk) * nb
        _bwd_task(b, j0, min(nb, d - j0), proj, ps, dh, gs, dproj, ds, G, N, d, W, cplx, lb,
                  cf, sf, cr, sr, h0, use_h0, dhN, ends, mode, add, dlb, dtf, dtr, dh0)


@njit(**_OPTS)
def hgru_bwd_serial(proj, ps, dh, gs, dproj, ds, G, nseq, N, d, W, cplx, lb, cf, sf, cr, sr,
                    h0, use_h0, dhN, ends, mode, add, dlb, dtf, dtr, dh0, nb):
    nblk = (d + nb - 1) // nb
    for i in range(nseq * nblk):
        b = i // nblk
        j0 = (i % nblk) * nb
        _bwd_task(b, j0, min(nb, d - j0), proj, ps, dh, gs, dproj, ds, G, N, d, W, cplx, lb,
                  cf, sf, cr, sr, h0, use_h0, dhN, ends, mode, add, dlb, dtf, dtr, dh0)
