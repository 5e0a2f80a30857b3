"""What the compiled CPU loops (``numba_hgru``, ``numba_norm_gate``) share: bf16 / fp16
storage as raw 16-bit integers widened in registers, stores in the storage dtype, a
vectorisable fp32 ``exp``, sigmoid / SiLU without cancellation, fp64 flushing of partial
sums and cache-line prefetches.

Storage dtypes: fp32 / fp64 arrays as they are; bf16 as int16 bits, fp16 as uint16 bits
(``hgrn_core.backends.numba_cpu._storage``). Math runs in fp32 (fp64 for fp64 inputs).
"""
from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

FLUSH = 128         # terms summed in the compute dtype before the sums move into fp64
OPTS = dict(cache=True, nogil=True, error_model="numpy")


# ------------------------------------------------------------------- bit-level conversions
@intrinsic
def _bits_f32(typingctx, x):
    """The low 32 bits of an integer -> float32."""
    if isinstance(x, types.Integer) and x.bitwidth >= 32:
        def codegen(context, builder, sig, args):
            v = args[0]
            if x.bitwidth > 32:
                v = builder.trunc(v, ir.IntType(32))
            return builder.bitcast(v, ir.FloatType())
        return types.float32(x), codegen


@intrinsic
def _f32_bits(typingctx, x):
    """float32 -> its int32 bits."""
    if x == types.float32:
        def codegen(context, builder, sig, args):
            return builder.bitcast(args[0], ir.IntType(32))
        return types.int32(x), codegen


@intrinsic
def _bf16_f32(typingctx, x):
    """bf16 bits (int16) -> float32: the bits into the top half of a 32-bit word."""
    if x == types.int16:
        def codegen(context, builder, sig, args):
            wide = builder.zext(args[0], ir.IntType(32))
            return builder.bitcast(builder.shl(wide, ir.Constant(ir.IntType(32), 16)),
                                   ir.FloatType())
        return types.float32(x), codegen


@intrinsic
def _f32_bf16(typingctx, x):
    """float32 -> bf16 bits (int16), rounded to nearest even; NaN stays NaN."""
    if x == types.float32:
        def codegen(context, builder, sig, args):
            i32 = ir.IntType(32)
            u = builder.bitcast(args[0], i32)
            lsb = builder.and_(builder.lshr(u, ir.Constant(i32, 16)), ir.Constant(i32, 1))
            r = builder.add(builder.add(u, ir.Constant(i32, 0x7FFF)), lsb)
            hi = builder.lshr(r, ir.Constant(i32, 16))
            nan = builder.fcmp_unordered("uno", args[0], args[0])
            hi = builder.select(nan, ir.Constant(i32, 0x7FC0), hi)
            return builder.trunc(hi, ir.IntType(16))
        return types.int16(x), codegen


@intrinsic
def _f16_f32(typingctx, x):
    """fp16 bits (uint16) -> float32 (LLVM's fpext: one instruction with F16C)."""
    if x == types.uint16:
        def codegen(context, builder, sig, args):
            return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())
        return types.float32(x), codegen


@intrinsic
def _f32_f16(typingctx, x):
    """float32 -> fp16 bits (uint16), rounded to nearest even (LLVM's fptrunc)."""
    if x == types.float32:
        def codegen(context, builder, sig, args):
            return builder.bitcast(builder.fptrunc(args[0], ir.HalfType()), ir.IntType(16))
        return types.uint16(x), codegen


@intrinsic
def _prefetch(typingctx, a, i):
    """A hint to bring the cache line of ``a[i]`` in (``llvm.prefetch``: read, keep). It
    never faults; the walks still only ask for rows inside the sequence."""
    if isinstance(a, types.Array) and isinstance(i, types.Integer):
        def codegen(context, builder, sig, args):
            data = context.make_array(sig.args[0])(context, builder, args[0]).data
            ptr = builder.gep(data, [args[1]])
            i32 = ir.IntType(32)
            fn = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.VoidType(), [ptr.type, i32, i32, i32]),
                "llvm.prefetch.p0")
            builder.call(fn, [ptr, i32(0), i32(3), i32(1)])
            return context.get_dummy_value()
        return types.void(a, i), codegen


def _widen(x):
    """A stored value in the compute dtype (bf16 / fp16 bits -> fp32)."""


@overload(_widen)
def _ov_widen(x):
    if x == types.int16:
        return lambda x: _bf16_f32(x)
    if x == types.uint16:
        return lambda x: _f16_f32(x)
    if x in (types.float32, types.float64):
        return lambda x: x


def _put(a, i, v):
    """``a[i] = v`` in ``a``'s storage dtype (int16 = bf16 bits, uint16 = fp16 bits)."""


@overload(_put)
def _ov_put(a, i, v):
    if a.dtype == types.int16:
        def impl(a, i, v):
            a[i] = _f32_bf16(np.float32(v))
    elif a.dtype == types.uint16:
        def impl(a, i, v):
            a[i] = _f32_f16(np.float32(v))
    else:
        def impl(a, i, v):
            a[i] = v
    return impl


def _store(a, i, v, add):
    """``a[i] = v``, or ``a[i] += v`` when ``add`` (the 2-D op's column pass adds to what its
    row pass wrote), in ``a``'s storage dtype."""


@overload(_store)
def _ov_store(a, i, v, add):
    # branch-free, so the loops vectorise: the old value is loaded and the sum selected (with
    # add False the stored value is v itself; with add a literal False the load folds away)
    if a.dtype in (types.int16, types.uint16):
        def impl(a, i, v, add):
            old = _widen(a[i])
            _put(a, i, (old + v) if add else v)
    else:
        def impl(a, i, v, add):
            old = a[i]
            a[i] = (old + v) if add else v
    return impl


def _exp(x):
    """exp in the compute dtype: libm's for fp64; for fp32 a polynomial that vectorises."""


# contract: the polynomial's multiply-adds become FMAs (one rounding each, so no less
# accurate; the range reduction stays exact). The gates' three exps a channel and step are most
# of a walk's arithmetic: the forward walk runs ~1.3x faster with them fused.
@overload(_exp, jit_options={"fastmath": {"contract"}})
def _ov_exp(x):
    if x == types.float64:
        return lambda x: math.exp(x)
    if x == types.float32:
        def impl(x):
            # Cody-Waite reduction x = n ln2 + r, |r| <= ln2 / 2, and Cephes' expf polynomial
            # (about 1 ulp); n rounded with the 1.5 * 2^23 trick (no libm call: vectorises)
            y = min(max(x, np.float32(-87.0)), np.float32(88.0))
            t = y * np.float32(1.44269504) + np.float32(12582912.0)
            n = t - np.float32(12582912.0)
            r = y - n * np.float32(0.693359375) - n * np.float32(-2.12194440e-4)
            p = np.float32(1.9875691500e-4)
            p = p * r + np.float32(1.3981999507e-3)
            p = p * r + np.float32(8.3334519073e-3)
            p = p * r + np.float32(4.1665795894e-2)
            p = p * r + np.float32(1.6666665459e-1)
            p = p * r + np.float32(5.0000001201e-1)
            p = p * (r * r) + r + np.float32(1.0)
            scale = _bits_f32(((_f32_bits(t) - np.int32(0x4B400000)) + np.int32(127))
                              << np.int32(23))
            e = p * scale
            return np.float32(0.0) if x < np.float32(-87.0) else e
        return impl


def _cast(ref, v):
    """``v`` in the type of ``ref`` (numba would widen float32 op Python float to float64)."""


@overload(_cast)
def _ov_cast(ref, v):
    if ref == types.float32:
        return lambda ref, v: np.float32(v)
    if ref == types.float64:
        return lambda ref, v: np.float64(v)


@njit(**OPTS)
def _sig2(mu, one):
    """(sigmoid(mu), sigmoid(-mu)), each without cancellation."""
    e = _exp(-abs(mu))
    r = one / (one + e)
    er = e * r
    pos = mu >= 0
    return (r if pos else er), (er if pos else r)


@njit(**OPTS)
def _flush(acc, acc64):
    """Move a run of partial sums into fp64 ones (long sequences sum accurately)."""
    for k in range(acc.shape[0]):
        acc64[k] += acc[k]
        acc[k] = 0


@njit(**OPTS)
def _silu(c, one):
    return c / (one + _exp(-c))


@njit(**OPTS)
def _fetch(a, i, n):
    """Prefetch the cache lines of ``a[i:i + n]``. The HGRU's walks ask for the rows they
    read a few steps later: their steps are a token row apart (kilobytes, often the next
    page), where the hardware prefetchers stop, so without this every step waits on
    memory."""
    for o in range(0, n, max(1, 64 // a.itemsize)):
        _prefetch(a, i + o)
    _prefetch(a, i + n - 1)
