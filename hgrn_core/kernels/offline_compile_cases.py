"""The wrapper calls whose kernel launches ``offline_compile`` compiles for each GPU target.

A case is ``(label, group, fn)``: ``fn(device)`` calls a wrapper on (fake) CUDA tensors.
Groups: ``model`` -- the vision models' path (bidirectional HGRU, complex and real, with a
lower bound; norm_gate; the 2-D models' hgru2d) at the models' shapes and dtypes (bf16 /
fp16 autocast, fp32), where no kernel may spill; ``long`` -- the segmented long-sequence
path; ``features`` -- every option of the fused HGRU core; ``dtypes``; ``edges`` --
lengths and widths whose int arguments specialise differently on a GPU (N = 1 becomes a
constant) or leave partial tiles; ``norm_gate`` -- odd widths, every dtype; ``scan`` --
the older plain scan kernels (public scan API only). Identical specialisations are
compiled once, so overlapping cases cost nothing. ``full=True`` adds the whole cross
product of the HGRU options.
"""
from __future__ import annotations

import itertools
from typing import Callable, List, Tuple

import torch

Case = Tuple[str, str, Callable]

bf16, f16, f32, f64 = torch.bfloat16, torch.float16, torch.float32, torch.float64
SHORT = {bf16: "bf16", f16: "fp16", f32: "fp32", f64: "fp64"}
# patch 14: 224 px -> 16 x 16 = 256 tokens, 1248 px -> 89 x 89 = 7921; d: deit tiny / small;
# batch sizes as trained (224 px) and as run at high resolution
MODEL_DIMS = (192, 384)
MODEL_BN = ((256, 256), (64, 256), (8, 7921), (2, 7921))
# the 2-D models (hgrn2d_deit_tiny / _small): the same patch grids, 16 x 16 and 89 x 89
MODEL_GRIDS = ((256, 16), (8, 89))
DIRECTIONS = ("forward", "reverse", "both")


def _acc(dtype):
    return f64 if dtype == f64 else f32


def hgru_case(B, N, d, dtype=bf16, direction="both", real=False, lb=True, h0=False,
              bwd=False, dhN=False, group="features") -> Case:
    """``hgru_forward`` (or ``hgru_backward``) of one (B, N, d) configuration."""
    label = (f"hgru_{'bwd' if bwd else 'fwd'} ({B},{N},{d}) {SHORT[dtype]} {direction} "
             f"{'real' if real else 'complex'}" + " lb" * lb + " h0" * h0
             + " dhN" * (bwd and dhN))

    def fn(dev):
        from . import triton_hgru as k
        W = d if real else 2 * d
        acc = _acc(dtype)
        proj = torch.empty(B, N, W + d, device=dev, dtype=dtype)
        lbt = torch.empty(d, device=dev, dtype=acc) if lb else None
        thf = None if real else torch.empty(d, device=dev, dtype=acc)
        thr = None if real or direction == "forward" else torch.empty(d, device=dev, dtype=acc)
        h0t = torch.empty(B, W, device=dev, dtype=acc) if h0 else None
        if not bwd:
            k.hgru_forward(proj, lbt, thf, thr, h0t, direction)
            return
        dh = torch.empty(B, N, W, device=dev, dtype=dtype)
        gN = torch.empty(B, W, device=dev, dtype=acc) if dhN else None
        k.hgru_backward(dh, gN, proj, lbt, thf, thr, h0t, direction)
    return label, group, fn


def hgru2d_case(B, H, Wg, d, dtype=bf16, direction="both", real=False, lb=True, bwd=False,
                group="model") -> Case:
    """``hgru2d_forward`` (or ``hgru2d_backward``) over a (H, Wg) grid: the row launch and
    the column launch (NESTED; ACCUMULATE for the columns)."""
    label = (f"hgru2d_{'bwd' if bwd else 'fwd'} ({B},{H}x{Wg},{d}) {SHORT[dtype]} {direction} "
             f"{'real' if real else 'complex'}" + " lb" * lb)

    def fn(dev):
        from . import triton_hgru as k
        W = d if real else 2 * d
        acc = _acc(dtype)
        proj = torch.empty(B, H * Wg, W + d, device=dev, dtype=dtype)
        lbt = torch.empty(d, device=dev, dtype=acc) if lb else None
        thf = None if real else torch.empty(d, device=dev, dtype=acc)
        thr = None if real or direction == "forward" else torch.empty(d, device=dev, dtype=acc)
        if not bwd:
            k.hgru2d_forward(proj, lbt, thf, thr, Wg, direction)
            return
        dh = torch.empty(B, H * Wg, W, device=dev, dtype=dtype)
        k.hgru2d_backward(dh, proj, lbt, thf, thr, Wg, direction)
    return label, group, fn


def norm_gate_case(B, N, W, dtype=bf16, weight=True, bias=True, bwd=False,
                   group="norm_gate") -> Case:
    label = (f"norm_gate_{'bwd' if bwd else 'fwd'} ({B},{N},{W}) {SHORT[dtype]}"
             + " weight" * weight + " bias" * bias)

    def fn(dev):
        from . import triton_norm_gate as k
        acc = _acc(dtype)
        h = torch.empty(B, N, W, device=dev, dtype=dtype)
        gate = torch.empty(B, N, W, device=dev, dtype=dtype)
        w = torch.empty(W, device=dev, dtype=acc) if weight else None
        b = torch.empty(W, device=dev, dtype=acc) if bias else None
        if not bwd:
            k.norm_gate_forward(h, gate, w, b, 1e-5)
            return
        mean = torch.empty(B, N, device=dev, dtype=acc)
        k.norm_gate_backward(torch.empty_like(h), h, gate, w, b, mean, torch.empty_like(mean),
                             1e-5)
    return label, group, fn


def scan_case(B, N, D, dtype=f32, direction="forward", real=False, h0=False,
              bwd=False, group="scan") -> Case:
    label = (f"scan_{'bwd' if bwd else 'fwd'} ({B},{N},{D}) {SHORT[dtype]} {direction} "
             f"{'real' if real else 'complex'}" + " h0" * h0)

    def fn(dev):
        from . import triton_scan_given as k  # the scan API: the walk kernels, GIVEN=True
        acc = _acc(dtype)
        seq = [torch.empty(B, N, D, device=dev, dtype=dtype) for _ in range(3)]
        u, v, lam = seq[0], None if real else seq[1], seq[2]
        th = None if real else torch.empty(D, device=dev, dtype=acc)
        W = D if real else 2 * D
        h0_ = torch.empty(B, W, device=dev, dtype=acc) if h0 else None
        tf = th if direction != "reverse" else None
        tr = th if direction != "forward" else None
        if not bwd:
            k.scan_forward(u, v, lam, tf, tr, h0_, direction)
            return
        g = torch.empty_like(u)
        k.scan_backward(g, None if real else g, None, u, v, lam, tf, tr, h0_, direction)
    return label, group, fn


def _fwd_bwd(states=("none", "both", "each"), **kw) -> List[Case]:
    """The forward and backward of one configuration. A single direction is also run with an
    initial state (h0) and a final-state gradient (dhN): ``states`` picks none, both
    together, and/or each alone."""
    out = []
    pairs = dict(none=[(False, False)], both=[(True, True)], each=[(True, False), (False, True)])
    single = kw.get("direction", "both") != "both"
    for name in (states if single else ("none",)):
        for h0, dhN in pairs[name]:
            if not dhN:
                out.append(hgru_case(h0=h0, **kw))
            out.append(hgru_case(bwd=True, h0=h0, dhN=dhN, **kw))
    return out


def cases(full: bool, arch: int) -> List[Case]:
    """The cases for a GPU of capability ``arch``. Unless ``full``, the edge lengths, most
    option combinations and the small-shape dtypes only for sm_90: which int arguments and
    flags specialise does not depend on the target, and the models' shapes (three dtypes),
    the segmented path, norm_gate and the scan cover sm_80."""
    out: List[Case] = []
    # the models' path: bidirectional complex HGRU with a lower bound, then norm_gate
    for d, (B, N), dtype in itertools.product(MODEL_DIMS, MODEL_BN, (bf16, f16, f32)):
        out += _fwd_bwd(B=B, N=N, d=d, dtype=dtype, group="model")
        for bwd in (False, True):
            out.append(norm_gate_case(B, N, 2 * d, dtype, bwd=bwd, group="model"))
    for d, (B, N) in itertools.product(MODEL_DIMS, MODEL_BN):  # real-valued HGRU models
        out += _fwd_bwd(B=B, N=N, d=d, real=True, group="model")
    # the 2-D models' hgru2d (row launch + accumulating column launch; d only changes int
    # values, not the specialisation): bf16 'both' at 1248 px and fp32 'forward' at 224 px
    # for both targets (a diagonal of grid x dtype x direction, a few specialisations)
    pairs = [((8, 89), 384, bf16, "both"), ((256, 16), 192, f32, "forward")]
    if full:
        pairs = itertools.product(MODEL_GRIDS, MODEL_DIMS, (bf16, f16, f32), ("both", "forward"))
    for (B, H), d, dtype, direction in pairs:
        for bwd in (False, True):
            out.append(hgru2d_case(B, H, H, d, dtype, direction, bwd=bwd))
            if full:
                out.append(hgru2d_case(B, H, H, d, dtype, direction, real=True, bwd=bwd))
    # the segmented long-sequence path (few programs: S > 1, launches A and B)
    for direction in DIRECTIONS:
        out += _fwd_bwd(B=8, N=16384, d=384, direction=direction, states=("both",),
                        group="long")
    out += _fwd_bwd(B=8, N=16384, d=384, real=True, group="long")
    # every option at a shape with partial tiles (N odd, d not a multiple of BLOCK_D)
    for direction, real, lb in itertools.product(DIRECTIONS, (False, True), (True, False)):
        if full or arch == 90 or (direction == "both" and lb):
            out += _fwd_bwd(B=3, N=45, d=40, direction=direction, real=real, lb=lb,
                            states=("none", "each") if lb else ("both",))
    if full or arch == 90:  # sm_80 compiles fp16 / fp32 at the models' shapes
        for dtype, direction in itertools.product((f16, f32, f64), DIRECTIONS):
            out += _fwd_bwd(B=3, N=45, d=40, dtype=dtype, direction=direction,
                            states=("both",), group="dtypes")
    # edge lengths / widths: N = 1 (a constant on the GPU), 2, odd, not a multiple of
    # BLOCK_T; d = 1, d not a multiple of BLOCK_D
    if full or arch == 90:
        for (N, d), direction in itertools.product(
                ((1, 40), (2, 40), (7, 40), (9, 64), (1, 1), (45, 1)), DIRECTIONS):
            out += _fwd_bwd(B=2, N=N, d=d, direction=direction, states=("none", "both"),
                            group="edges")
            if N == 1:
                out += _fwd_bwd(B=1, N=N, d=d, direction=direction, real=True,
                                states=("both",), group="edges")
    # norm_gate: odd widths, every dtype, without weight / bias
    for W, dtype in itertools.product((75, 97, 1), (bf16, f16, f32, f64)):
        for bwd in (False, True):
            out.append(norm_gate_case(4, 33, W, dtype, bwd=bwd))
            if dtype == bf16:
                out.append(norm_gate_case(1, 1, W, dtype, weight=False, bias=False, bwd=bwd))
    # the plain scan kernels (public scan API): a smaller set; (2, 4096, 64) takes the
    # chunked three-pass scheme (summaries, carries, outputs)
    for bwd in (False, True):
        out.append(scan_case(2, 4096, 64, f32, "both", bwd=bwd))
        if full or arch == 90:
            out.append(scan_case(2, 4096, 64, f32, "forward", bwd=bwd))
            out.append(scan_case(2, 4096, 64, f32, "reverse", real=True, bwd=bwd))
            out.append(scan_case(1, 1, 1, f32, "forward", bwd=bwd))
            out.append(scan_case(3, 45, 40, bf16, "reverse", h0=True, bwd=bwd))
    if full:
        for B, N, d in ((3, 45, 40), (2, 64, 64), (1, 1, 40), (2, 7921, 384)):
            for direction, real, lb, dtype in itertools.product(
                    DIRECTIONS, (False, True), (True, False), (bf16, f16, f32, f64)):
                out += _fwd_bwd(B=B, N=N, d=d, direction=direction, real=real, lb=lb,
                                dtype=dtype, group="full")
    return out
