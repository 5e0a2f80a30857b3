"""Triton kernels for the HGRU's output path: ``y = LayerNorm_W(h; weight, bias) * SiLU(gate)``.

Layout: ``h``, ``gate`` and ``dy`` are ``(B, N, W)`` tensors read through their batch and
row strides with channel stride 1 (the wrappers copy only a tensor whose channel stride is
not 1), so ``gate`` can be a column slice of the wider ``in_proj`` output without a copy.
A row is one token; a program owns ``BLOCK_M`` rows times ``BLOCK_W`` (a power of two
>= W, masked) channels. Statistics are fp32 (fp64 for fp64 inputs, for gradcheck); ``y``,
``dh`` and ``dgate`` are stored contiguous in the input dtypes.

Forward, one kernel (``_norm_gate_fwd_kernel``): per row, mean and variance over W, xhat,
``* weight + bias``, ``* silu(gate)``; writes y and the row's mean and rstd (fp32, kept for
backward). Bytes per token: reads h and gate (2W values), writes y (W values) + 8 bytes.

Backward, one kernel (``_norm_gate_bwd_kernel``) plus a torch ``.sum(0)``: per row,
xhat is recomputed from h, mean and rstd; with s = silu(g), z = xhat * weight + bias:

    dgate = dy * z * silu'(g),        silu'(g) = sigmoid(g) (1 + g (1 - sigmoid(g)))
    dz    = dy * s                    (the LayerNorm's output gradient)
    dxhat = dz * weight
    dh    = rstd * (dxhat - mean_W(dxhat) - xhat * mean_W(dxhat * xhat))

A program walks ``rows_per_program`` rows (a multiple of BLOCK_M) and accumulates
``dweight = sum(dz * xhat)`` and ``dbias = sum(dz)`` over them in registers; it writes one
row of an ``(n_programs, W)`` fp32 partial buffer, which torch reduces with ``.sum(0)``
(deterministic: no atomics). Bytes per token: reads dy, h, gate (3W values) + 8 bytes,
writes dh and dgate (2W values).

Measured on one H200 (Triton 3.6, torch 2.11, bf16 activations, fp32 weight, gate a view
of a (B, N, 5W/2) projection; kernel time from CUDA-graph replays, as a share of the
4.25 TB/s device copy bandwidth, counting the bytes above):

    (B, N, W)          forward           backward (kernel + .sum)
    (256, 256, 384)    54 us   66%       126 us  47%
    (256, 256, 768)    100 us  71%       248 us  48%
    (64, 256, 1536)    55 us   65%       143 us  41%
    (8, 16384, 384)    103 us  69%       230 us  52%

(the torch composition, ``hgrn_core.norm_gate_op.norm_gate_reference_*``, takes 7-9x as
long at these shapes). The op's host-side cost (custom-op dispatch, autograd, two
launches) is of the order of the kernels' time at these shapes; see the op's module.
"""
from __future__ import annotations

import functools
from typing import Optional

import torch
import triton
import triton.language as tl

from .launch_overrides import LaunchOverrides, cdiv, next_pow2


# ---------------------------------------------------------------------------- kernels
@triton.jit
def _row_offsets(rows, N, s_b, s_n):
    """Element offset of the start of each row (token) of a strided (B, N, W) tensor."""
    b = rows // N
    n = rows - b * N
    return b * s_b + n * s_n


@triton.jit
def _norm_gate_fwd_kernel(H, G, WEIGHT, BIAS, Y, MEAN, RSTD,
                          M, N, W, h_sb, h_sn, g_sb, g_sn, eps,
                          BLOCK_M: tl.constexpr, BLOCK_W: tl.constexpr,
                          HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
                          ACC: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    cols = tl.arange(0, BLOCK_W)
    mr = rows < M
    mc = cols < W
    m2 = mr[:, None] & mc[None, :]

    h_off = _row_offsets(rows, N, h_sb, h_sn)
    g_off = _row_offsets(rows, N, g_sb, g_sn)
    x = tl.load(H + h_off[:, None] + cols[None, :], mask=m2, other=0.0).to(ACC)
    g = tl.load(G + g_off[:, None] + cols[None, :], mask=m2, other=0.0).to(ACC)

    mean = tl.sum(x, axis=1) / W
    xc = tl.where(m2, x - mean[:, None], 0.0)
    var = tl.sum(xc * xc, axis=1) / W
    rstd = 1.0 / tl.sqrt(var + eps)
    z = xc * rstd[:, None]
    if HAS_WEIGHT:
        w = tl.load(WEIGHT + cols, mask=mc, other=0.0).to(ACC)
        z = z * w[None, :]
    if HAS_BIAS:
        bias = tl.load(BIAS + cols, mask=mc, other=0.0).to(ACC)
        z = z + bias[None, :]
    y = z * (g * tl.sigmoid(g))

    tl.store(Y + rows[:, None] * W + cols[None, :], y.to(Y.dtype.element_ty), mask=m2)
    tl.store(MEAN + rows, mean.to(MEAN.dtype.element_ty), mask=mr)
    tl.store(RSTD + rows, rstd.to(RSTD.dtype.element_ty), mask=mr)


@triton.jit
def _norm_gate_bwd_kernel(DY, H, G, WEIGHT, BIAS, MEAN, RSTD, DH, DG, DW_PART, DB_PART,
                          M, N, W, dy_sb, dy_sn, h_sb, h_sn, g_sb, g_sn, rows_per_program,
                          BLOCK_M: tl.constexpr, BLOCK_W: tl.constexpr,
                          HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
                          ACC: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_W)
    mc = cols < W
    if HAS_WEIGHT:
        w = tl.load(WEIGHT + cols, mask=mc, other=0.0).to(ACC)
    if HAS_BIAS:
        bias = tl.load(BIAS + cols, mask=mc, other=0.0).to(ACC)
    acc_dw = tl.zeros([BLOCK_M, BLOCK_W], ACC)
    acc_db = tl.zeros([BLOCK_M, BLOCK_W], ACC)
    first = pid * rows_per_program

    for start in range(0, rows_per_program, BLOCK_M):
        rows = first + start + tl.arange(0, BLOCK_M).to(tl.int64)
        mr = rows < M
        m2 = mr[:, None] & mc[None, :]
        dy_off = _row_offsets(rows, N, dy_sb, dy_sn)
        h_off = _row_offsets(rows, N, h_sb, h_sn)
        g_off = _row_offsets(rows, N, g_sb, g_sn)
        dy = tl.load(DY + dy_off[:, None] + cols[None, :], mask=m2, other=0.0).to(ACC)
        x = tl.load(H + h_off[:, None] + cols[None, :], mask=m2, other=0.0).to(ACC)
        g = tl.load(G + g_off[:, None] + cols[None, :], mask=m2, other=0.0).to(ACC)
        mean = tl.load(MEAN + rows, mask=mr, other=0.0).to(ACC)
        rstd = tl.load(RSTD + rows, mask=mr, other=0.0).to(ACC)

        xhat = tl.where(m2, (x - mean[:, None]) * rstd[:, None], 0.0)
        sig = tl.sigmoid(g)
        dz = dy * (g * sig)                      # gradient of the LayerNorm output
        z = xhat
        dxhat = dz
        if HAS_WEIGHT:
            z = z * w[None, :]
            dxhat = dz * w[None, :]
        if HAS_BIAS:
            z = z + bias[None, :]
        dg = dy * z * (sig * (1.0 + g * (1.0 - sig)))
        c1 = tl.sum(dxhat * xhat, axis=1) / W
        c2 = tl.sum(dxhat, axis=1) / W
        dx = (dxhat - (xhat * c1[:, None] + c2[:, None])) * rstd[:, None]

        out = rows[:, None] * W + cols[None, :]
        tl.store(DH + out, dx.to(DH.dtype.element_ty), mask=m2)
        tl.store(DG + out, dg.to(DG.dtype.element_ty), mask=m2)
        if HAS_WEIGHT:
            acc_dw += dz * xhat
        if HAS_BIAS:
            acc_db += dz

    if HAS_WEIGHT:
        tl.store(DW_PART + pid * W + cols, tl.sum(acc_dw, axis=0), mask=mc)
    if HAS_BIAS:
        tl.store(DB_PART + pid * W + cols, tl.sum(acc_db, axis=0), mask=mc)


# ------------------------------------------------------------------------------ launch config
_OVERRIDE = LaunchOverrides()


def override_config(**kwargs):
    """Force launch parameters (for tests and tuning): ``block_m`` (rows per tile, a power
    of two), ``rows_per_program`` (backward; rounded up to a multiple of block_m),
    ``num_warps``."""
    return _OVERRIDE.forcing(**kwargs)


# Launch heuristics, from a sweep on an H200 (bf16, W = 384 / 768 / 1536, 1e5-6.5e4 rows,
# CUDA-graph timings): the forward is fastest with tiles of >= 2 rows and ~32 elements
# per thread (65-71% of the copy bandwidth), the backward (more live values) with one row
# per tile, ~8 elements per thread and 8 programs per SM (41-48%); larger tiles per thread
# spill registers in the backward.
FWD_ELEMS_PER_THREAD = 32
BWD_ELEMS_PER_THREAD = 8
TILE_ELEMS_FWD = 2048
TILE_ELEMS_BWD = 512
FWD_MIN_BLOCK_M = 2
# backward programs per SM: enough to fill the GPU, few enough that the (programs, W)
# partial buffer and its reduction stay small
BWD_PROGRAMS_PER_SM = 8


def _acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _acc_torch(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _unit_channel_stride(x: torch.Tensor) -> torch.Tensor:
    """The kernels read (B, N, W) tensors through any batch/row strides; only a channel
    stride other than 1 costs a copy."""
    return x if x.shape[-1] <= 1 or x.stride(-1) == 1 else x.contiguous()


def _vec(x: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if x is None else x.contiguous()


def _block_m(M: int, block_w: int, elems: int, least: int = 1) -> int:
    bm = _OVERRIDE.get("block_m") or max(least, elems // block_w)
    return max(1, min(bm, next_pow2(max(M, 1))))


def _num_warps(block_m: int, block_w: int, per_thread: int) -> int:
    n = _OVERRIDE.get("num_warps")
    if n:
        return n
    return max(1, min(16, block_m * block_w // (32 * per_thread)))


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _bwd_programs(device: torch.device) -> int:
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return BWD_PROGRAMS_PER_SM * _sm_count(index)
    return 1  # the interpreter: parallelism buys nothing


# ------------------------------------------------------------------------------- wrappers
def norm_gate_forward(h: torch.Tensor, gate: torch.Tensor, weight: Optional[torch.Tensor],
                      bias: Optional[torch.Tensor], eps: float):
    """``y, mean, rstd`` for (B, N, W) ``h`` and ``gate`` (any batch/row strides).
    y is contiguous in h.dtype; mean and rstd are (B, N) fp32 (fp64 for fp64 h)."""
    h, gate = _unit_channel_stride(h), _unit_channel_stride(gate)
    weight, bias = _vec(weight), _vec(bias)
    B, N, W = h.shape
    M = B * N
    acc = _acc_torch(h.dtype)
    y = torch.empty((B, N, W), device=h.device, dtype=h.dtype)
    mean = torch.empty((B, N), device=h.device, dtype=acc)
    rstd = torch.empty((B, N), device=h.device, dtype=acc)
    if M == 0:
        return y, mean, rstd
    block_w = next_pow2(W)
    bm = _block_m(M, block_w, TILE_ELEMS_FWD, FWD_MIN_BLOCK_M)
    _norm_gate_fwd_kernel[(cdiv(M, bm),)](
        H=h, G=gate,
        WEIGHT=weight if weight is not None else h,
        BIAS=bias if bias is not None else h,
        Y=y, MEAN=mean, RSTD=rstd,
        M=M, N=N, W=W, h_sb=h.stride(0), h_sn=h.stride(1),
        g_sb=gate.stride(0), g_sn=gate.stride(1), eps=float(eps),
        BLOCK_M=bm, BLOCK_W=block_w,
        HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None, ACC=_acc(h.dtype),
        num_warps=_num_warps(bm, block_w, FWD_ELEMS_PER_THREAD))
    return y, mean, rstd


def norm_gate_backward(dy: torch.Tensor, h: torch.Tensor, gate: torch.Tensor,
                       weight: Optional[torch.Tensor], bias: Optional[torch.Tensor],
                       mean: torch.Tensor, rstd: torch.Tensor, eps: float):
    """``dh, dgate, dweight, dbias``: dh and dgate contiguous in h's and gate's dtypes;
    dweight and dbias (W,) fp32 (fp64 for fp64 h), None where weight / bias is None.
    ``eps`` is unused: rstd already holds it (kept for the backend interface)."""
    dy, h, gate = _unit_channel_stride(dy), _unit_channel_stride(h), _unit_channel_stride(gate)
    weight, bias = _vec(weight), _vec(bias)
    mean, rstd = mean.contiguous(), rstd.contiguous()
    B, N, W = h.shape
    M = B * N
    acc = _acc_torch(h.dtype)
    dh = torch.empty((B, N, W), device=h.device, dtype=h.dtype)
    dg = torch.empty((B, N, W), device=h.device, dtype=gate.dtype)
    has_w, has_b = weight is not None, bias is not None
    if M == 0:
        z = torch.zeros(W, device=h.device, dtype=acc)
        return dh, dg, (z if has_w else None), (z.clone() if has_b else None)
    block_w = next_pow2(W)
    bm = _block_m(M, block_w, TILE_ELEMS_BWD)
    rpp = _OVERRIDE.get("rows_per_program") or cdiv(M, _bwd_programs(h.device))
    rpp = cdiv(max(rpp, 1), bm) * bm
    n_prog = cdiv(M, rpp)
    dw_part = torch.empty((n_prog, W), device=h.device, dtype=acc) if has_w else None
    db_part = torch.empty((n_prog, W), device=h.device, dtype=acc) if has_b else None
    _norm_gate_bwd_kernel[(n_prog,)](
        DY=dy, H=h, G=gate,
        WEIGHT=weight if has_w else h, BIAS=bias if has_b else h,
        MEAN=mean, RSTD=rstd, DH=dh, DG=dg,
        DW_PART=dw_part if has_w else dh, DB_PART=db_part if has_b else dh,
        M=M, N=N, W=W, dy_sb=dy.stride(0), dy_sn=dy.stride(1),
        h_sb=h.stride(0), h_sn=h.stride(1), g_sb=gate.stride(0), g_sn=gate.stride(1),
        rows_per_program=rpp,
        BLOCK_M=bm, BLOCK_W=block_w, HAS_WEIGHT=has_w, HAS_BIAS=has_b, ACC=_acc(h.dtype),
        num_warps=_num_warps(bm, block_w, BWD_ELEMS_PER_THREAD))
    dweight = dw_part.sum(0) if has_w else None
    dbias = db_part.sum(0) if has_b else None
    return dh, dg, dweight, dbias


__all__ = ["norm_gate_forward", "norm_gate_backward", "override_config"]
