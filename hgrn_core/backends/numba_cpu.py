"""The ``numba`` backend: the HGRU ops (``hgrn::hgru``, ``hgrn::hgru2d``) and the output path
(``hgrn::norm_gate``) as compiled CPU loops.

The fused op's forward and backward run the loops of ``hgrn_core.kernels.numba_hgru``
(Numba, imported only when this backend is loaded): one task per (batch row, block of
channels), in parallel over ``torch.get_num_threads()`` threads, each walking time with its
state in a few local arrays and forming the gates from the projection on the fly. Nothing
of size B*N*d is made besides the outputs: ``proj`` is read in place through its strides and
in its own dtype (bf16 / fp16 as raw 16-bit words, widened in the loop). The 2-D op
(``hgrn::hgru2d``) runs the same compiled loops over the patch grid's rows and then, in place
through strides, its columns, adding into the same output (no transposed copies).

The norm-gate (``hgrn_core.kernels.numba_norm_gate``) runs a task per run of rows (tokens),
each row passed over while it sits in L1. The separate scans (``complex_forward`` ... , the
``hgrn_core.scan`` API) are the torch backend's: only the fused ops pay for a compiled loop.

Threads: ``numba.set_num_threads`` follows torch's thread count on every call; with one
thread (``torch.set_num_threads(1)``, DataLoader workers) a serial build of the same loop
runs and Numba's threading layer is never started. Calls from several Python threads at once
do not share the parallel region (Numba's default ``workqueue`` layer forbids it): a call
that finds it busy runs serially.
"""
from __future__ import annotations

import threading
from typing import Optional

import numba
import numpy as np
import torch
from torch import Tensor

from ..kernels import numba_hgru as K
from ..kernels import numba_norm_gate as KN
from ..precision import compute_dtype
from .torch_chunked import TorchBackend

_MODES = {"forward": 0, "reverse": 1, "both": 2}
_parallel = threading.Lock()

# per-task scratch (fp32 words): about 8 per channel and step in backward; keep a task's
# working set near a core's L2 cache
_SCRATCH_BYTES = 1 << 20
# the 1-D backward's bound: a few MiB (its tasks are wide; the scratch streams through L2 in
# order, and long contiguous rows matter more than a cache-sized task)
_SCRATCH_BYTES_1D = 8 << 20
# rows (tokens) per task of the norm-gate: enough to amortise a task, few partial sums
_ROWS_PER_TASK = 64


def _storage(t: Tensor) -> np.ndarray:
    """``t`` as a numpy array over the same memory; bf16 as int16 and fp16 as uint16 bits."""
    t = t.detach()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy()
    if t.dtype == torch.float16:
        return t.view(torch.int16).numpy().view(np.uint16)
    return t.numpy()


def _rows(t: Tensor):
    """A (B, N, P) tensor with unit channel stride as a flat array spanning it, and its batch
    and token strides (in elements): read in place, whatever the row stride."""
    B, N, P = t.shape
    sB, sN, sc = t.stride()
    if (sc != 1 and P > 1) or sB < 0 or sN < 0:
        t = t.contiguous()
        sB, sN, _ = t.stride()
    sB = sB if B > 1 else 0
    sN = sN if N > 1 else 0
    extent = (B - 1) * sB + (N - 1) * sN + P
    return _storage(t.as_strided((extent,), (1,))), sB, sN


def _vector(t: Optional[Tensor], n: int, dt: torch.dtype, fill: float) -> np.ndarray:
    if t is None:
        return np.full(n, fill, dtype=np.float64 if dt == torch.float64 else np.float32)
    return t.detach().to(dt).contiguous().numpy()


def _phases(theta: Optional[Tensor], d: int, dt: torch.dtype):
    if theta is None:
        return _vector(None, d, dt, 1.0), _vector(None, d, dt, 0.0)
    theta = theta.detach().to(dt)
    return _vector(torch.cos(theta), d, dt, 1.0), _vector(torch.sin(theta), d, dt, 0.0)


def _op_inputs(proj: Tensor, lower_bound, theta_f, theta_r):
    """What every walk takes from the op's inputs: complex or not, B, N, P, d, W, the compute
    dtype, proj's storage and strides (``_rows``), the lower bound and the phases' (cos, sin)
    as arrays."""
    complex_ = theta_f is not None or theta_r is not None
    B, N, P = proj.shape
    d = P // (3 if complex_ else 2)
    dt = compute_dtype(proj.dtype)
    return (complex_, B, N, P, d, P - d, dt, _rows(proj), _vector(lower_bound, d, dt, 0.0),
            _phases(theta_f, d, dt), _phases(theta_r, d, dt))


def _block(B: int, N: int, d: int, threads: int, widest: int = 64) -> int:
    """Channels per task of the 2-D op's backward passes (``_block_2d``): ``widest``, halved
    (not below 16) while a task's scratch exceeds ``_SCRATCH_BYTES`` or there are fewer than
    four tasks a thread."""
    nb = widest
    while nb // 2 >= 16 and (N * 8 * 4 * nb > _SCRATCH_BYTES or
                             B * -(-d // nb) < 4 * threads):
        nb //= 2
    return min(nb, d)


def _block_forward(B: int, d: int, threads: int, widest: int = 256) -> int:
    """Channels per task of the forward (no scratch): ``d`` split evenly into the fewest
    blocks (a multiple of 16, at most ``widest``) that give every thread a task and the
    threads even shares (or at least two tasks each). Wide tasks read each step's rows as long
    contiguous runs, which the memory system serves far better than a few cache lines a
    row: at (32, 256, 192) one task per batch row runs the 'both' forward ~1.5x faster than
    blocks of 64, at (2, 4096, 192) ~1.9x faster than blocks of 16."""
    k = -(-d // widest)
    while True:
        nb = -(-(-(-d // k)) // 16) * 16
        tasks = B * -(-d // nb)
        if nb <= 16 or (tasks >= threads and (tasks % threads == 0 or tasks >= 2 * threads)):
            return min(nb, d)
        k += 1


def _block_backward(B: int, N: int, d: int, threads: int) -> int:
    """Channels per task of the 1-D backward: as the forward's, at most as wide as keeps a
    task's scratch (about 32 bytes a channel and step) within ``_SCRATCH_BYTES_1D``. Wide
    tasks read long runs of each row: at (8, 196, 192) blocks of 192 against 64 run ~1.2x
    faster, at (2, 3136, 192) blocks of 64 against 16 ~1.5x (2 threads, this project's VM);
    at 16,384 tokens the scratch bound keeps them 16 wide."""
    widest = max(16, min(256, _SCRATCH_BYTES_1D // (32 * max(N, 1)) // 16 * 16))
    return _block_forward(B, d, threads, widest)


def _block_2d(B: int, N: int, d: int, threads: int) -> int:
    """Channels per task of the 2-D op's backward passes: ``d`` split evenly into the fewest
    blocks of at most 256 (a multiple of 16), then as ``_block``. Its walks are short (a grid
    line), so wide tasks fit the scratch; each step has a fixed cost (its rows' views, the
    vectorised loop's checks) that wider tasks share: at (32, 16 x 16, 192) blocks of 192
    against 64 run the backward ~17% faster. A column step reads a contiguous run of that
    many channels of each plane."""
    per = -(-d // -(-d // 256))
    return _block(B, N, d, threads, -(-per // 16) * 16)


def _row_tasks(R: int) -> int:
    """Tasks of the norm-gate: runs of ``_ROWS_PER_TASK`` rows (whatever the thread count, so
    that dweight / dbias are summed in the same order on any machine), at least one."""
    return max(1, -(-R // _ROWS_PER_TASK))


def _grid_axes(H: int, Wg: int):
    """The 2-D op's two passes over a row-major (H, Wg) grid of tokens, as (G, length, inner,
    step): sequence i is grid line i % G of image i // G, starting ``inner`` tokens after the
    previous line, its steps ``step`` tokens apart. First the rows (H lines of Wg tokens),
    then the columns (Wg lines of H tokens, a grid row apart), which add to the rows'
    outputs."""
    return ((H, Wg, Wg, 1), (Wg, H, 1, Wg))


def _run(parallel, serial, *args):
    """The parallel loop on torch's thread count, or the serial one (one thread; or another
    Python thread is inside the parallel region)."""
    threads = min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)
    if threads > 1 and _parallel.acquire(blocking=False):
        try:
            if numba.get_num_threads() != threads:
                numba.set_num_threads(threads)
            return parallel(*args)
        finally:
            _parallel.release()
    return serial(*args)


class NumbaBackend(TorchBackend):
    name = "numba"
    description = ("compiled CPU loops (Numba) for the fused HGRU and norm-gate ops; torch's "
                   "chunked scans")

    def is_available(self, device):
        return torch.device(device).type == "cpu"

    def hgru_forward(self, proj, lower_bound, theta_f, theta_r, h0, direction):
        complex_, B, N, P, d, W, dt, (flat, sB, sN), lb, (cf, sf), (cr, sr) = _op_inputs(
            proj, lower_bound, theta_f, theta_r)
        mode = _MODES[direction]
        state = torch.zeros(B, W, dtype=dt)
        h0n = _storage(h0.detach().to(dt).contiguous()) if (h0 is not None and mode != 2) \
            else state.numpy()
        out = torch.empty(B, N, W, dtype=proj.dtype)
        hN = torch.zeros(B, W, dtype=dt)
        nb = _block_forward(B, d, torch.get_num_threads())
        _run(K.hgru_fwd_parallel, K.hgru_fwd_serial, flat, (sB, 0, sN),
             _storage(out).reshape(-1), (N * W, 0, W), 1, B, N, d, W, complex_, lb, cf, sf, cr,
             sr, h0n, True, mode, False, hN.numpy(), nb)
        return out, (None if mode == 2 else hN)

    def hgru_backward(self, dh, dhN, proj, lower_bound, theta_f, theta_r, h0, direction):
        complex_, B, N, P, d, W, dt, (flat, sB, sN), lb, (cf, sf), (cr, sr) = _op_inputs(
            proj, lower_bound, theta_f, theta_r)
        mode = _MODES[direction]
        gflat, gB, gN = _rows(dh)
        use_h0 = h0 is not None and mode != 2
        h0n = (h0.detach().to(dt).contiguous() if use_h0 else torch.zeros(B, W, dtype=dt))
        dhNn = (dhN.detach().to(dt).contiguous() if (dhN is not None and mode != 2)
                else torch.zeros(B, W, dtype=dt))
        dproj = torch.empty(B, N, P, dtype=proj.dtype)
        dlb = torch.empty(B, d, dtype=dt)
        dtf = torch.zeros(B, d, dtype=dt)
        dtr = torch.zeros(B, d, dtype=dt)
        dh0 = torch.zeros(B, W, dtype=dt)
        nb = _block_backward(B, N, d, torch.get_num_threads())
        _run(K.hgru_bwd_parallel, K.hgru_bwd_serial, flat, (sB, 0, sN), gflat, (gB, 0, gN),
             _storage(dproj).reshape(-1), (N * P, 0, P), 1, B, N, d, W, complex_, lb, cf, sf,
             cr, sr, h0n.numpy(), use_h0, dhNn.numpy(), True, mode, False, dlb.numpy(),
             dtf.numpy(), dtr.numpy(), dh0.numpy(), nb)
        return (dproj,
                None if lower_bound is None else dlb.sum(0),
                None if theta_f is None else dtf.sum(0),
                None if theta_r is None else dtr.sum(0),
                dh0 if use_h0 else None)

    # --- the 2-D op: the same compiled walks, run over the grid's rows and then, in place
    # through strides, its columns (no transposed copies). The column pass adds to what the
    # row pass wrote; each pass's tasks write disjoint elements, so neither races. Outputs
    # are in proj's dtype as in 1-D (the same compiled loops): in bf16 / fp16 the row pass's
    # result is rounded before the column pass adds to it (one more rounding).
    def hgru2d_forward(self, proj, lower_bound, theta_f, theta_r, grid_width, direction):
        complex_, B, N, P, d, W, dt, (flat, sB, sN), lb, (cf, sf), (cr, sr) = _op_inputs(
            proj, lower_bound, theta_f, theta_r)
        unused = torch.zeros(1, W, dtype=dt).numpy()    # h0, hN: no initial or final state
        out = torch.empty(B, N, W, dtype=proj.dtype)
        on = _storage(out).reshape(-1)
        threads = torch.get_num_threads()
        for add, (G, n, inner, step) in enumerate(_grid_axes(N // grid_width, grid_width)):
            nb = _block_forward(B * G, d, threads)
            _run(K.hgru_fwd_parallel, K.hgru_fwd_serial, flat, (sB, inner * sN, step * sN), on,
                 (N * W, inner * W, step * W), G, B * G, n, d, W, complex_, lb, cf, sf, cr, sr,
                 unused, False, _MODES[direction], add == 1, unused, nb)
        return out

    def hgru2d_backward(self, dh, proj, lower_bound, theta_f, theta_r, grid_width, direction):
        complex_, B, N, P, d, W, dt, (flat, sB, sN), lb, (cf, sf), (cr, sr) = _op_inputs(
            proj, lower_bound, theta_f, theta_r)
        H = N // grid_width
        gflat, gB, gN = _rows(dh)
        unused = torch.zeros(1, W, dtype=dt).numpy()    # h0, dhN, dh0
        dproj = torch.empty(B, N, P, dtype=proj.dtype)
        dn = _storage(dproj).reshape(-1)
        # the tasks' partial sums of dlb, dtheta_f, dtheta_r: the row pass's sequences first,
        # then the column pass's
        parts = torch.zeros(3, B * (H + grid_width), d, dtype=dt)
        threads = torch.get_num_threads()
        first = 0
        for add, (G, n, inner, step) in enumerate(_grid_axes(H, grid_width)):
            nb = _block_2d(B * G, n, d, threads)
            dlb, dtf, dtr = (p[first:first + B * G].numpy() for p in parts)
            _run(K.hgru_bwd_parallel, K.hgru_bwd_serial, flat, (sB, inner * sN, step * sN),
                 gflat, (gB, inner * gN, step * gN), dn, (N * P, inner * P, step * P), G, B * G,
                 n, d, W, complex_, lb, cf, sf, cr, sr, unused, False, unused, False,
                 _MODES[direction], add == 1, dlb, dtf, dtr, unused, nb)
            first += B * G
        # summed in fp64 by numpy: the same order whatever the thread count
        sums = torch.from_numpy(parts.numpy().sum(1, dtype=np.float64)).to(dt)
        return (dproj,
                None if lower_bound is None else sums[0],
                None if theta_f is None else sums[1],
                None if theta_r is None else sums[2])

    # --- the output path: a task per run of rows; dweight / dbias as per-task partials
    def norm_gate_forward(self, h, gate, weight, bias, eps):
        B, N, W = h.shape
        dt = compute_dtype(h.dtype)
        y = torch.empty(B, N, W, dtype=h.dtype)
        mean = torch.empty(B, N, dtype=dt)
        rstd = torch.empty(B, N, dtype=dt)
        R = B * N
        if R:
            hf, hB, hN = _rows(h)
            gf, gB, gN = _rows(gate)
            w, b = _vector(weight, W, dt, 1.0), _vector(bias, W, dt, 0.0)
            _run(KN.norm_gate_fwd_parallel, KN.norm_gate_fwd_serial, hf, (hB, hN), gf, (gB, gN),
                 _storage(y).reshape(-1), R, N, W, w, b, w.dtype.type(eps),
                 mean.numpy().reshape(-1), rstd.numpy().reshape(-1), _row_tasks(R))
        return y, mean, rstd

    def norm_gate_backward(self, dy, h, gate, weight, bias, mean, rstd, eps):
        B, N, W = h.shape
        dt = compute_dtype(h.dtype)
        dh = torch.empty(B, N, W, dtype=h.dtype)
        dgate = torch.empty(B, N, W, dtype=gate.dtype)
        R = B * N
        ntask = _row_tasks(R)
        parts = torch.zeros(2, ntask, W, dtype=torch.float64)
        if R:
            yf, yB, yN = _rows(dy)
            hf, hB, hN = _rows(h)
            gf, gB, gN = _rows(gate)
            w, b = _vector(weight, W, dt, 1.0), _vector(bias, W, dt, 0.0)
            stat = [t.detach().to(dt).contiguous().reshape(-1).numpy() for t in (mean, rstd)]
            _run(KN.norm_gate_bwd_parallel, KN.norm_gate_bwd_serial, yf, (yB, yN), hf, (hB, hN),
                 gf, (gB, gN), _storage(dh).reshape(-1), _storage(dgate).reshape(-1), R, N, W,
                 w, b, *stat, parts[0].numpy(), parts[1].numpy(), ntask)
        # summed in fp64 by numpy: the same order whatever the thread count
        dw, db = torch.from_numpy(parts.numpy().sum(1, dtype=np.float64))
        return (dh, dgate, None if weight is None else dw.to(weight.dtype),
                None if bias is None else db.to(bias.dtype))
