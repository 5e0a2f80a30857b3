"""Compiled CPU loops for the HGRU's output path (op ``hgrn::norm_gate``), with Numba.

    y = (xhat w + b) silu(g),   xhat = (h - mean) rstd,   rstd = 1 / sqrt(var + eps)
    (mean and the biased variance over a row's W channels, as LayerNorm)

    backward, per row, with dz = dy silu(g) and dxhat = dz w:
        dgate = dy (xhat w + b) silu'(g),     silu'(g) = s (1 + g (1 - s)),  s = sigmoid(g)
        dh    = rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat))
        dw   += dz xhat,   db += dz           (summed over rows)

The plain torch composition (``hgrn_core.norm_gate_torch``) is the reference. In torch the
output path is five kernels (LayerNorm, SiLU, a product, casts), each reading and writing
whole (B, N, W) tensors; here a task owns a run of rows and passes over each row while it
sits in L1: the forward reads h and gate once and writes y, the backward reads dy, h and
gate once and writes dh and dgate.

Rows are read through their strides (``gate`` is a column slice of ``in_proj``'s output) in
their own dtype (bf16 / fp16 as raw bits, ``numba_common``); math runs in fp32 (fp64 for fp64
inputs). The statistics are two-pass (mean, then the mean square about it). The row sums are
compiled with reassociation allowed so that LLVM vectorises them (their order then depends on
the vector width, not on the data); every other loop keeps IEEE order. dw / db are per-task
partials (ntask, W) in fp64, summed by the backend (deterministic for a given thread count).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .numba_common import FLUSH, OPTS, _cast, _fetch, _flush, _put, _sig2, _silu, _widen

# reductions may be reordered (vectorised); nothing else in them is approximated
_SUMS = dict(OPTS, fastmath={"reassoc", "nsz"})


@njit(**_SUMS)
def _mean_var(row, one):
    """Mean and biased variance of a row (widened), two passes."""
    n = row.shape[0]
    s = one - one
    for k in range(n):
        s += _widen(row[k])
    m = s / _cast(one, n)
    q = one - one
    for k in range(n):
        v = _widen(row[k]) - m
        q += v * v
    return m, q / _cast(one, n)


@njit(**_SUMS)
def _sums(dx, xh):
    """sum(dx) and sum(dx * xh) over a row."""
    a = dx[0] - dx[0]
    c = a
    for k in range(dx.shape[0]):
        a += dx[k]
        c += dx[k] * xh[k]
    return a, c


@njit(**OPTS)
def _row(r, N, st):
    """Where row r (token r % N of image r // N) starts in an array with strides st."""
    return (r // N) * st[0] + (r % N) * st[1]


@njit(**OPTS)
def _fwd_rows(r0, r1, h, hs, g, gs, y, N, W, w, b, eps, mean, rstd):
    one = _cast(w[0], 1.0)
    for r in range(r0, r1):
        hb = _row(r, N, hs)
        gb = _row(r, N, gs)
        if r + 2 < r1:
            _fetch(h, _row(r + 2, N, hs), W)
            _fetch(g, _row(r + 2, N, gs), W)
        # rows as views, indexed from 0: the loops vectorise (indices computed from an
        # offset would each be checked for wraparound, ~10x slower)
        hr = h[hb:hb + W]
        gr = g[gb:gb + W]
        yr = y[r * W:(r + 1) * W]
        m, v = _mean_var(hr, one)
        rs = one / np.sqrt(v + eps)
        mean[r] = m
        rstd[r] = rs
        for k in range(W):
            xh = (_widen(hr[k]) - m) * rs
            _put(yr, k, (xh * w[k] + b[k]) * _silu(_widen(gr[k]), one))


@njit(parallel=True, **OPTS)
def norm_gate_fwd_parallel(h, hs, g, gs, y, R, N, W, w, b, eps, mean, rstd, ntask):
    """Forward over R = B * N rows in ``ntask`` runs of rows, in parallel. h / g: flat
    storage with row strides hs / gs = (batch, token); y: flat (R * W) in h's dtype; mean,
    rstd: (R,) in the compute dtype (w's)."""
    per = (R + ntask - 1) // ntask
    for i in prange(ntask):
        _fwd_rows(i * per, min(R, (i + 1) * per), h, hs, g, gs, y, N, W, w, b, eps, mean, rstd)


@njit(**OPTS)
def norm_gate_fwd_serial(h, hs, g, gs, y, R, N, W, w, b, eps, mean, rstd, ntask):
    per = (R + ntask - 1) // ntask
    for i in range(ntask):
        _fwd_rows(i * per, min(R, (i + 1) * per), h, hs, g, gs, y, N, W, w, b, eps, mean, rstd)


@njit(**OPTS)
def _bwd_rows(task, r0, r1, dy, ds, h, hs, g, gs, dh, dg, N, W, w, b, mean, rstd, dwp, dbp):
    one = _cast(w[0], 1.0)
    inv_w = one / _cast(one, W)
    xh = np.empty(W, w.dtype)        # the row's xhat and dxhat, kept for the second pass
    dx = np.empty(W, w.dtype)
    accw = np.zeros(W, w.dtype)
    accb = np.zeros(W, w.dtype)
    accw64 = np.zeros(W, np.float64)
    accb64 = np.zeros(W, np.float64)
    for r in range(r0, r1):
        if (r - r0) % FLUSH == 0:
            _flush(accw, accw64)
            _flush(accb, accb64)
        yb = _row(r, N, ds)
        hb = _row(r, N, hs)
        gb = _row(r, N, gs)
        if r + 2 < r1:
            _fetch(dy, _row(r + 2, N, ds), W)
            _fetch(h, _row(r + 2, N, hs), W)
            _fetch(g, _row(r + 2, N, gs), W)
        m = mean[r]
        rs = rstd[r]
        hr = h[hb:hb + W]
        gr = g[gb:gb + W]
        dyr = dy[yb:yb + W]
        dhr = dh[r * W:(r + 1) * W]
        dgr = dg[r * W:(r + 1) * W]
        for k in range(W):
            x = (_widen(hr[k]) - m) * rs
            gv = _widen(gr[k])
            s, oms = _sig2(gv, one)
            d = _widen(dyr[k])
            dz = d * gv * s
            xh[k] = x
            dx[k] = dz * w[k]
            _put(dgr, k, d * (x * w[k] + b[k]) * s * (one + gv * oms))
            accw[k] += dz * x
            accb[k] += dz
        a, c = _sums(dx, xh)
        a *= inv_w
        c *= inv_w
        for k in range(W):
            _put(dhr, k, rs * (dx[k] - a - xh[k] * c))
    _flush(accw, accw64)
    _flush(accb, accb64)
    dwp[task] = accw64
    dbp[task] = accb64


@njit(parallel=True, **OPTS)
def norm_gate_bwd_parallel(dy, ds, h, hs, g, gs, dh, dg, R, N, W, w, b, mean, rstd, dwp, dbp,
                           ntask):
    """Backward over R rows in ``ntask`` runs of rows, in parallel. dh / dg: flat (R * W) in
    h's / g's dtype; dwp / dbp: (ntask, W) fp64, each task's partial sums."""
    per = (R + ntask - 1) // ntask
    for i in prange(ntask):
        _bwd_rows(i, i * per, min(R, (i + 1) * per), dy, ds, h, hs, g, gs, dh, dg, N, W, w, b,
                  mean, rstd, dwp, dbp)


@njit(**OPTS)
def norm_gate_bwd_serial(dy, ds, h, hs, g, gs, dh, dg, R, N, W, w, b, mean, rstd, dwp, dbp,
                         ntask):
    per = (R + ntask - 1) // ntask
    for i in range(ntask):
        _bwd_rows(i, i * per, min(R, (i + 1) * per), dy, ds, h, hs, g, gs, dh, dg, N, W, w, b,
                  mean, rstd, dwp, dbp)
