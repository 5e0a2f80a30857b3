"""Fused Triton kernels for the whole recurrent core of the HGRU (op ``hgrn::hgru``).

    proj = [c (W) | mu (d)]  (B, N, W + d), W = 2d complex ([Re c | Im c]) or d real
    s = sigmoid(mu);  lam = lb + (1 - lb) s;  x = (1 - lam) * silu(c)
    forward:  h_t = lam_t e^{i theta_f} h_{t-1} + x_t      (h_0 = h0 or 0)
    reverse:  h_t = lam_t e^{i theta_r} h_{t+1} + x_t      (h_{N+1} = h0 or 0)
    both:     h = h_fwd + h_rev                             (no initial / final state)

The same kernels with the compile-time flag ``GIVEN`` read ``lam`` and ``x = u + i v`` as given
instead of forming them from ``proj``: the public scan API (``triton_scan_given``).

Public functions (the Triton backend wires them into ``hgrn::hgru``):

    hgru_forward(proj, lower_bound, theta_f, theta_r, h0, direction) -> (h, hN)
    hgru_backward(dh, dhN, proj, lower_bound, theta_f, theta_r, h0, direction)
        -> (dproj, dlb, dtf, dtr, dh0)

and the 2-D op over a patch grid (``hgrn::hgru2d``; the same kernels, rows then columns in
place: see "the 2-D op" below):

    hgru2d_forward(proj, lower_bound, theta_f, theta_r, grid_width, direction) -> h
    hgru2d_backward(dh, proj, lower_bound, theta_f, theta_r, grid_width, direction)
        -> (dproj, dlb, dtf, dtr)

Layout (docs/triton.md has the reasoning, the byte counts and the measurements).
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
(per quantity, in its own direction: multiplications only, never a division --
docs/spec.md §6) into its carries and does the main walk.

Gradients (docs/spec.md §5.2), recomputed from ``proj``: nothing fp32 of size B*N*d is
stored. With ``y = h - x = A h_prev`` (no shift needed) and D the gradient state of a direction:
``q = sum_dir Re(D conj(y))``, ``dtheta_dir = sum Im(D conj(y))``; with
``dx = sum_dir D`` and ``dlam_x = -Re(dx conj(silu c))``:

    dmu = [q r + dlam_x (1 - lb) s] (1 - s),   r = (1 - lb) s / lam in [0, 1] (lam = 0: r = 1)
    dlb = sum [q / lam + dlam_x] (1 - s)       (the one division; see the notes' caveat)
    dc  = (1 - lam) dx sigmoid(c) (1 + c (1 - sigmoid(c)))
    dh0 = conj(A_edge) D_edge

Per-channel sums (dlb, dtheta) are per-program partials reduced in torch (deterministic).
"""
from __future__ import annotations

import os
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from . import triton_hgru_configs
from .launch_overrides import LaunchOverrides, cdiv as _cdiv, next_pow2 as _pow2
from .triton_hgru_bwd import _hgru_bwd_kernel
from .triton_hgru_fwd import _hgru_fwd_kernel

Tensor = torch.Tensor

DIRECTIONS = ("forward", "reverse", "both")


# ------------------------------------------------------------------------------ launch config
_OVERRIDE = LaunchOverrides()


def override_config(**kwargs):
    """Force launch parameters (tests, tuning): ``block_t``, ``block_d``, ``num_warps``,
    ``vec``, ``prefetch``, ``num_stages`` (each also as ``fwd_*`` / ``bwd_*`` for one pass),
    ``fast`` (the interpreter's math: 2 / 3 the GPU's fast math emulated, 0 exact),
    ``segments`` (the number S of sequence segments; >1 runs the two-launch segmented
    scheme), ``target_programs`` (for the automatic choice of S)."""
    return _OVERRIDE.forcing(**kwargs)


# GPU launch configurations per pass and architecture: triton_hgru_configs (a table keyed by
# compute capability; HGRN_HGRU_CONFIG=tune_hgru.json overrides it). VEC channels per thread
# and BLOCK_D = 32 * VEC * num_warps put the time axis of a tile inside each thread.
# the interpreter: its layout is irrelevant; the row-by-row walk costs it O(BLOCK_T) tile
# operations per tile, so short tiles and wide blocks are fastest there
INTERP = dict(block_t=8, block_d=64, num_warps=1, vec=64, prefetch=True, num_stages=1)
MIN_TILES_PER_SEG = 8    # segments shorter than this many tiles are not worth a launch
WARPS_PER_SM = 8         # resident warps per SM wanted before sequences are split


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def gpu_config(device: torch.device, bwd: bool) -> dict:
    """The launch configuration of one pass on a CUDA ``device`` (before test overrides)."""
    cap = tuple(torch.cuda.get_device_capability(device))
    return triton_hgru_configs.gpu_config("backward" if bwd else "forward", cap)


class _Cfg:
    def __init__(self, B: int, N: int, d: int, device: torch.device, bwd: bool,
                 segmented: bool = True):
        # B: the sequences of the launch; segmented=False: always one walk per sequence
        on_gpu = device.type == "cuda" and not _interpreting()
        c = gpu_config(device, bwd) if on_gpu else dict(INTERP)
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
        self.n_dblk = _cdiv(d, self.block_d)
        self.n_tiles = _cdiv(N, self.block_t)
        S = _OVERRIDE.get("segments") if segmented else 1
        if S is None:
            S = 1
            target = _OVERRIDE.get("target_programs")
            if target is None and on_gpu:
                sms = torch.cuda.get_device_properties(device).multi_processor_count
                target = WARPS_PER_SM * sms // self.num_warps
            programs = B * self.n_dblk
            if target and programs < target:
                S = max(1, min(_cdiv(target, programs),
                               self.n_tiles // MIN_TILES_PER_SEG))
        S = max(1, min(int(S), self.n_tiles))
        self.tps = _cdiv(self.n_tiles, S)
        self.n_seg = _cdiv(self.n_tiles, self.tps)  # no empty segment


# The wrappers' launch configurations, kept per key: the wrappers ask on every call, and a
# _Cfg (table lookup, the GPU's capability and SM count, the segment choice) costs tens of us
# of host time. A configuration is a function of the key, the device's properties and the
# configuration file (in the key, with its mtime); with parameters forced (override_config:
# tests, tuning) it is computed afresh. The cached objects are never modified.
# offline_compile's fake GPUs, whose properties change within a process, clear the cache.
_CONFIGS: dict = {}
MAX_CONFIGS = 1024  # distinct shapes kept; past that the cache starts over


def clear_launch_configs() -> None:
    _CONFIGS.clear()


def _config_file():
    path = os.environ.get(triton_hgru_configs.ENV_VAR, "").strip()
    return (path, os.path.getmtime(path)) if path else None


def _launch_config(B: int, N: int, d: int, device: torch.device, bwd: bool,
                   segmented: bool = True) -> _Cfg:
    """``_Cfg(B, N, d, device, bwd, segmented)``, computed once per key."""
    if _OVERRIDE:
        return _Cfg(B, N, d, device, bwd, segmented)
    on_gpu = device.type == "cuda" and not _interpreting()
    key = (B, N, d, device, bwd, segmented, on_gpu, _config_file() if on_gpu else None)
    cfg = _CONFIGS.get(key)
    if cfg is None:
        if len(_CONFIGS) >= MAX_CONFIGS:
            _CONFIGS.clear()
        cfg = _CONFIGS[key] = _Cfg(B, N, d, device, bwd, segmented)
    return cfg


def _acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _acc_torch(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check(proj: Tensor, theta_f, theta_r, h0, direction: str):
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    if proj.dim() != 3:
        raise ValueError(f"proj must be (B, N, W + d), got shape {tuple(proj.shape)}")
    real = theta_f is None and theta_r is None  # 'reverse' of a complex HGRU has theta_r only
    C = proj.shape[-1]
    if real:
        if C % 2:
            raise ValueError(f"real HGRU: proj width must be 2d, got {C}")
        d = C // 2
    else:
        d = (theta_f if theta_f is not None else theta_r).numel()
        if C != 3 * d:
            raise ValueError(f"complex HGRU: proj width must be 3d = {3 * d}, got {C}")
        if direction != "reverse" and (theta_f is None or theta_f.numel() != d):
            raise ValueError(f"direction {direction!r} needs theta_f of size {d}")
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


def walks(direction: str) -> Tuple[bool, bool, bool]:
    """(forward walk, reverse walk, both) of ``direction``."""
    do_f = direction in ("forward", "both")
    do_r = direction in ("reverse", "both")
    return do_f, do_r, do_f and do_r


def _vec(x: Optional[Tensor]) -> Optional[Tensor]:
    return None if x is None else x.contiguous()


def _grid(cfg: _Cfg, B: int):
    return (cfg.n_dblk, B, cfg.n_seg)


def _fast_math(cfg, dtype: torch.dtype) -> int:
    """The kernels' FAST flag (triton_hgru_device): 0 exact for fp64; on the GPU 1, its fast
    exp and division; in the interpreter 2, their emulation at the documented error bound
    (``override_config(fast=3)`` for the bound's other side, ``fast=0`` for exact math)."""
    if dtype == torch.float64:
        return 0
    if cfg.on_gpu:
        return 1
    return int(_OVERRIDE.get("fast", 2))


def _shape_args(cfg, N: int, d: int, proj: Tensor, real: bool, lb, h0c,
                given: bool = False, n_inner: Optional[int] = None,
                accumulate: bool = False) -> dict:
    """The launch arguments the forward and backward kernels share: sizes, tiling and the
    compile-time flags for the dtype, the optional inputs and even shapes (``given``: the
    scan API's decays and inputs, triton_scan_given; ``n_inner``: two batch levels, the 2-D
    op's NESTED launches, ``accumulate`` onto the output)."""
    return dict(N=N, D=d, n_tiles=cfg.n_tiles, tps=cfg.tps, n_seg=cfg.n_seg,
                n_inner=n_inner or 1, NESTED=n_inner is not None, ACCUMULATE=accumulate,
                BLOCK_T=cfg.block_t, BLOCK_D=cfg.block_d, REAL=real, ACC=_acc(proj.dtype),
                HAS_LB=lb is not None, HAS_H0=h0c is not None,
                VEC=cfg.vec, PREFETCH=cfg.prefetch, NUM_STAGES=cfg.num_stages,
                FAST=_fast_math(cfg, proj.dtype),
                EVEN_N=N % cfg.block_t == 0, EVEN_D=d % cfg.block_d == 0, GIVEN=given,
                num_warps=cfg.num_warps)


def _seq_strides(t: Tensor, tag: str, inner: int = 0, step: int = 1) -> dict:
    """The kernels' strides ``s<tag>_b``, ``s<tag>_g``, ``s<tag>_n`` of ``t`` (B, N, C): batch,
    inner sequence and time step. One batch level (the 1-D op): rows are time steps and the
    inner stride unused; the 2-D op (NESTED): ``inner`` and ``step`` in token rows."""
    return {f"s{tag}_b": t.stride(0), f"s{tag}_g": inner * t.stride(1),
            f"s{tag}_n": step * t.stride(1)}


def _scratch(cfg, B: int, W: int, acc_t: torch.dtype, pre: bool, dummy: Tensor, bwd: bool
             ) -> dict:
    """The scratch buffers of one pass: per-tile boundaries of the pre-walk quantities (and
    their cumulative decays for S > 1), per-segment summaries (S > 1); ``dummy`` where
    unused. Forward: 1 pre-walk quantity, 2 summary slots; backward: 2 and 4."""
    dev = dummy.device
    seg = cfg.n_seg > 1
    bnd = cum = se = sp = dummy
    if pre:
        shape = (2, B, cfg.n_tiles, W) if bwd else (B, cfg.n_tiles, W)
        bnd = torch.empty(shape, device=dev, dtype=acc_t)
        cum = torch.empty_like(bnd) if seg else bnd
    if seg:
        se = torch.empty(4 if bwd else 2, B, cfg.n_seg, W, device=dev, dtype=acc_t)
        sp = torch.empty_like(se)
    return dict(BND=bnd, CUM=cum, SE=se, SP=sp)


def _launch(kernel, cfg, B: int, pre: bool, args: dict) -> None:
    """One launch (pre-walk + main walk) for one segment per sequence; else launch A (the
    segments' pre-walks and summaries) then launch B (carries folded in, main walk)."""
    grid = _grid(cfg, B)
    if cfg.n_seg == 1:
        kernel[grid](PRE=pre, MAIN=True, SEG_A=False, SEG_B=False, **args)
    else:
        kernel[grid](PRE=False, MAIN=False, SEG_A=True, SEG_B=False, **args)
        kernel[grid](PRE=False, MAIN=False, SEG_A=False, SEG_B=True, **args)


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
    do_f, do_r, both = walks(direction)
    cfg = _launch_config(B, N, d, dev, bwd=False)
    h = torch.empty(B, N, W, device=dev, dtype=proj.dtype)
    hN = torch.zeros(B, W, device=dev, dtype=acc_t)
    lb, thf, thr, h0c = _vec(lower_bound), _vec(theta_f), _vec(theta_r), _vec(h0)
    args = dict(
        P=proj, **_seq_strides(proj, "p"), H=h, **_seq_strides(h, "h"), HN=hN,
        H0=h0c if h0c is not None else h, LB=lb if lb is not None else h,
        THF=thf if (thf is not None and do_f) else h,
        THR=thr if (thr is not None and do_r) else h,
        DO_F=do_f, DO_R=do_r, V=proj, LAM=proj, HI=h,
        **_scratch(cfg, B, W, acc_t, both, h, bwd=False),
        **_shape_args(cfg, N, d, proj, real, lb, h0c))
    _launch(_hgru_fwd_kernel, cfg, B, pre=both, args=args)
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
    do_f, do_r, both = walks(direction)
    main_rev = direction != "reverse"
    if both:
        dhN = None  # hN is zeros for 'both': it does not depend on the inputs
    cfg = _launch_config(B, N, d, dev, bwd=True)
    S = cfg.n_seg
    dproj = torch.empty(B, N, W + d, device=dev, dtype=proj.dtype)
    lb, thf, thr, h0c, gN = (_vec(lower_bound), _vec(theta_f), _vec(theta_r), _vec(h0),
                             _vec(dhN))
    need_tf = do_f and not real
    need_tr = do_r and not real
    ptf = torch.empty(B * S, d, device=dev, dtype=acc_t) if need_tf else dproj
    ptr = torch.empty(B * S, d, device=dev, dtype=acc_t) if need_tr else dproj
    plb = torch.empty(B * S, d, device=dev, dtype=acc_t) if lb is not None else dproj
    dh0 = torch.empty(B, W, device=dev, dtype=acc_t) if h0c is not None else None
    args = dict(
        P=proj, **_seq_strides(proj, "p"), G=dh, **_seq_strides(dh, "g"),
        GN=gN if gN is not None else dproj, H0=h0c if h0c is not None else dproj,
        LB=lb if lb is not None else dproj,
        THF=thf if (thf is not None and do_f) else dproj,
        THR=thr if (thr is not None and do_r) else dproj,
        DP=dproj, **_seq_strides(dproj, "d"), DH0=dh0 if dh0 is not None else dproj,
        PTF=ptf, PTR=ptr, PLB=plb,
        HAS_GN=gN is not None, **_scratch(cfg, B, W, acc_t, True, dproj, bwd=True),
        DO_F=do_f, DO_R=do_r, MAIN_REV=main_rev,
        V=proj, LAM=proj, GI=dh, DV=dproj, DL=dproj,
        **_shape_args(cfg, N, d, proj, real, lb, h0c))
    _launch(_hgru_bwd_kernel, cfg, B, pre=True, args=args)
    dtf = ptf.sum(0) if need_tf else None
    dtr = ptr.sum(0) if need_tr else None
    dlb = plb.sum(0) if lb is not None else None
    return dproj, dlb, dtf, dtr, dh0


# ------------------------------------------------------------------- the 2-D op over a grid
# hgrn::hgru2d runs the same kernels twice, NESTED: along the rows of the patch grid, then
# along its columns with ACCUMULATE (onto the rows' h / dproj), every sequence read and
# written in place through its strides -- no transposed copy of anything. A grid's axes are
# short (a few hundred tokens at most) and its rows / columns many (B * H and B * Wg
# sequences), so the 2-D op always takes the single-launch scheme (no segments: S = 1).
MAX_SEQS = 65535  # CUDA's limit on grid axis 1, the sequences of one launch


def grid_fits(n_tokens: int, width: int, grid_width: int) -> bool:
    """Whether the fused 2-D op takes a (B, n_tokens, width) grid of ``grid_width`` columns:
    the column pass's time step (``grid_width`` rows of a contiguous tensor) within the
    kernels' int32 in-tile offsets, and one image's rows / columns within a launch."""
    return (grid_width * width < 2 ** 24
            and max(grid_width, n_tokens // grid_width) <= MAX_SEQS)


def _grid_layout(t: Tensor, grid_width: int) -> Tensor:
    """``t`` as the 2-D launches read it: unit channel stride and a column time step
    (``grid_width`` rows) < 2^24; else a contiguous copy (same layout, not transposed)."""
    if t.stride(-1) != 1 or grid_width * t.stride(1) >= 2 ** 24:
        t = t.contiguous()
    return t


def _grid_passes(B: int, N: int, grid_width: int):
    """The 2-D op's launches: the row pass, then the column pass (``accumulate``), each in
    batch chunks [b0, b1) of at most MAX_SEQS sequences. Yields (accumulate, b0, b1, G, L,
    inner, step): G sequences of L tokens per image, the inner sequence stride and the time
    step in token rows."""
    H = N // grid_width
    for accumulate, (G, L, inner, step) in enumerate(((H, grid_width, grid_width, 1),
                                                      (grid_width, H, 1, grid_width))):
        per = MAX_SEQS // G
        for b0 in range(0, B, per):
            yield bool(accumulate), b0, min(B, b0 + per), G, L, inner, step


def hgru2d_forward(proj: Tensor, lower_bound: Optional[Tensor], theta_f: Optional[Tensor],
                   theta_r: Optional[Tensor], grid_width: int, direction: str) -> Tensor:
    """The 2-D HGRU core (hgrn::hgru2d, direction 'forward' or 'both'): the scans along every
    row and every column of the grid, summed. Returns ``h`` (B, N, W) contiguous in
    ``proj.dtype``. Needs :func:`grid_fits`."""
    proj, real, d, W = _check(proj, theta_f, theta_r, None, direction)
    proj = _grid_layout(proj, grid_width)
    B, N, _ = proj.shape
    dev = proj.device
    acc_t = _acc_torch(proj.dtype)
    do_f, do_r, both = walks(direction)
    h = torch.empty(B, N, W, device=dev, dtype=proj.dtype)
    lb, thf, thr = _vec(lower_bound), _vec(theta_f), _vec(theta_r)
    for accumulate, b0, b1, G, L, inner, step in _grid_passes(B, N, grid_width):
        p, hc = proj[b0:b1], h[b0:b1]
        seqs = (b1 - b0) * G
        cfg = _launch_config(seqs, L, d, dev, bwd=False, segmented=False)
        args = dict(
            P=p, **_seq_strides(p, "p", inner, step), H=hc, **_seq_strides(hc, "h", inner, step),
            HN=hc, H0=hc, LB=lb if lb is not None else hc,
            THF=thf if (thf is not None and do_f) else hc,
            THR=thr if (thr is not None and do_r) else hc,
            DO_F=do_f, DO_R=do_r, V=p, LAM=p, HI=hc,
            **_scratch(cfg, seqs, W, acc_t, both, hc, bwd=False),
            **_shape_args(cfg, L, d, p, real, lb, None, n_inner=G, accumulate=accumulate))
        _launch(_hgru_fwd_kernel, cfg, seqs, pre=both, args=args)
    return h


def hgru2d_backward(dh: Tensor, proj: Tensor, lower_bound: Optional[Tensor],
                    theta_f: Optional[Tensor], theta_r: Optional[Tensor], grid_width: int,
                    direction: str
                    ) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
    """Gradients of :func:`hgru2d_forward`: ``dproj`` (B, N, W + d) contiguous in
    ``proj.dtype``; ``dlb``, ``dtf``, ``dtr`` (d,) in fp32 (fp64 for fp64 proj), None where
    the input is None or unused. Both passes see the same ``dh`` (h is their sum)."""
    proj, real, d, W = _check(proj, theta_f, theta_r, None, direction)
    proj = _grid_layout(proj, grid_width)
    dh = _grid_layout(dh, grid_width)
    B, N, _ = proj.shape
    dev = proj.device
    acc_t = _acc_torch(proj.dtype)
    do_f, do_r, _ = walks(direction)
    dproj = torch.empty(B, N, W + d, device=dev, dtype=proj.dtype)
    lb, thf, thr = _vec(lower_bound), _vec(theta_f), _vec(theta_r)
    need_tf = do_f and not real
    need_tr = do_r and not real
    # per-sequence partial sums of both passes (S = 1: one row per sequence), summed once
    rows = B * (N // grid_width + grid_width)
    ptf = torch.empty(rows, d, device=dev, dtype=acc_t) if need_tf else None
    ptr = torch.empty(rows, d, device=dev, dtype=acc_t) if need_tr else None
    plb = torch.empty(rows, d, device=dev, dtype=acc_t) if lb is not None else None
    r0 = 0
    for accumulate, b0, b1, G, L, inner, step in _grid_passes(B, N, grid_width):
        p, g, dp = proj[b0:b1], dh[b0:b1], dproj[b0:b1]
        seqs = (b1 - b0) * G
        cfg = _launch_config(seqs, L, d, dev, bwd=True, segmented=False)

        def part(t):
            return dp if t is None else t[r0:r0 + seqs]

        args = dict(
            P=p, **_seq_strides(p, "p", inner, step), G=g, **_seq_strides(g, "g", inner, step),
            GN=dp, H0=dp, LB=lb if lb is not None else dp,
            THF=thf if (thf is not None and do_f) else dp,
            THR=thr if (thr is not None and do_r) else dp,
            DP=dp, **_seq_strides(dp, "d", inner, step), DH0=dp,
            PTF=part(ptf), PTR=part(ptr), PLB=part(plb),
            HAS_GN=False, **_scratch(cfg, seqs, W, acc_t, True, dp, bwd=True),
            DO_F=do_f, DO_R=do_r, MAIN_REV=True, V=p, LAM=p, GI=g, DV=dp, DL=dp,
            **_shape_args(cfg, L, d, p, real, lb, None, n_inner=G, accumulate=accumulate))
        _launch(_hgru_bwd_kernel, cfg, seqs, pre=True, args=args)
        r0 += seqs
    return (dproj, None if plb is None else plb.sum(0), None if ptf is None else ptf.sum(0),
            None if ptr is None else ptr.sum(0))
