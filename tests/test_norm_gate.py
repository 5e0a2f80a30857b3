"""The fused output path ``hgrn_core.norm_gate`` (op ``hgrn::norm_gate``): LayerNorm(h) * SiLU(gate).

Every backend (``triton`` in Triton's interpreter without CUDA, ``numba`` on the CPU,
``torch``, ``reference``) against an independent expression, ``F.layer_norm(h) * F.silu(gate)`` differentiated by
autograd in fp64 from the same (rounded) inputs: the output and the gradients of h, gate,
weight and bias. Shapes are tiny; the Triton tiling is shrunk with
``triton_norm_gate.override_config``, and numba's rows per task, so that rows spill over
tiles, programs and tasks.
"""
import contextlib
import importlib.util
import os

import pytest
import torch
import torch.nn.functional as F

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import hgrn_core  # noqa: E402
from hgrn_core import norm_gate  # noqa: E402
from hgrn_core.norm_gate_op import (norm_gate_backward_op, norm_gate_op,  # noqa: E402
                                    norm_gate_reference_backward, norm_gate_reference_forward)

HAS_TRITON = hgrn_core.backends.triton_usable()
if HAS_TRITON:
    from hgrn_core.kernels import triton_norm_gate

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
gpu_only = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="needs triton")
needs_numba = pytest.mark.skipif(CUDA or importlib.util.find_spec("numba") is None,
                                 reason="needs numba and CPU tensors")

BACKENDS = [pytest.param("triton", marks=needs_triton), pytest.param("numba", marks=needs_numba),
            "torch", "reference"]
EPS = 1e-5
# rows per tile / per backward program: B*N = 21 rows spill over both
SMALL_TILES = dict(block_m=2, rows_per_program=6)

# (activation dtype, parameter dtype, tolerance relative to the largest expected value)
DTYPES = {
    "fp32": (torch.float32, torch.float32, 2e-5),
    "fp64": (torch.float64, torch.float64, 1e-12),
    "bf16-autocast": (torch.bfloat16, torch.float32, 2e-2),
    "fp16-autocast": (torch.float16, torch.float32, 3e-3),
    "bf16-model": (torch.bfloat16, torch.bfloat16, 2e-2),
}


def _tiles(backend, **cfg):
    if backend == "triton":
        return triton_norm_gate.override_config(**(cfg or SMALL_TILES))
    if backend == "numba":
        return _numba_rows_per_task(cfg.get("rows_per_program", SMALL_TILES["rows_per_program"]))
    return contextlib.nullcontext()


@contextlib.contextmanager
def _numba_rows_per_task(rows):
    from hgrn_core.backends import numba_cpu
    old, numba_cpu._ROWS_PER_TASK = numba_cpu._ROWS_PER_TASK, rows
    try:
        yield
    finally:
        numba_cpu._ROWS_PER_TASK = old


def _make(B, N, W, act, par, seed=0, gate_view=True, weight=True, bias=True):
    """h (B, N, W), gate a column slice of a wider (B, N, 5W/2) projection, weight, bias."""
    g = torch.Generator().manual_seed(seed)
    h = (torch.randn(B, N, W, generator=g) * 2 + 0.5).to(act)
    if gate_view:
        proj = (torch.randn(B, N, W + (3 * W + 1) // 2, generator=g) * 2).to(act)
        gate = proj[:, :, -W:]
    else:
        proj = None
        gate = (torch.randn(B, N, W, generator=g) * 2).to(act)
    w = (1 + 0.5 * torch.randn(W, generator=g)).to(par) if weight else None
    b = (0.5 * torch.randn(W, generator=g)).to(par) if bias else None
    dy = torch.randn(B, N, W, generator=g).to(act)
    mv = lambda t: None if t is None else t.to(DEVICE)  # noqa: E731
    return mv(h), mv(proj), mv(gate) if proj is None else mv(proj)[:, :, -W:], mv(w), mv(b), mv(dy)


def _expected(h, gate, w, b, dy, eps=EPS):
    """fp64 F.layer_norm * F.silu and its autograd gradients (None for None inputs)."""
    leaves = [None if t is None else t.detach().double().requires_grad_() for t in (h, gate, w, b)]
    hh, gg, ww, bb = leaves
    y = F.layer_norm(hh, (hh.shape[-1],), ww, bb, eps) * F.silu(gg)
    y.backward(dy.double())
    return y.detach(), [None if t is None else t.grad for t in leaves]


def _close(actual, expected, tol, what):
    assert actual is not None, what
    scale = max(expected.abs().max().item(), 1.0)
    torch.testing.assert_close(actual.double(), expected.double(), rtol=tol, atol=tol * scale,
                               msg=lambda m: f"{what}: {m}")


def _run(backend, h, gate, w, b, dy, eps=EPS, proj=None):
    """norm_gate through ``backend`` and the gradients of its leaves."""
    leaves = [t for t in (h, proj if proj is not None else gate, w, b) if t is not None]
    for t in leaves:
        t.requires_grad_()
    if proj is not None:
        gate = proj[:, :, -h.shape[-1]:]
    y = norm_gate(h, gate, w, b, eps, backend=backend)
    y.backward(dy)
    return y


# ------------------------------------------------------------------------ against the expression
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("W", [6, 10, 34])
@pytest.mark.parametrize("dtypes", list(DTYPES))
def test_outputs_and_gradients(backend, W, dtypes):
    act, par, tol = DTYPES[dtypes]
    B, N = 3, 7  # 21 rows: not a multiple of the tile (2) nor of the rows per program (6)
    h, proj, gate, w, b, dy = _make(B, N, W, act, par, seed=W)
    y_exp, (dh_e, dg_e, dw_e, db_e) = _expected(h, gate, w, b, dy)
    with _tiles(backend):
        y = _run(backend, h, gate, w, b, dy, proj=proj)
    assert y.dtype == act and y.shape == (B, N, W) and y.is_contiguous()
    _close(y, y_exp, tol, "y")
    _close(h.grad, dh_e, tol, "dh")
    assert h.grad.dtype == act
    # the gate's gradient lands in its columns of the projection, zeros elsewhere
    assert proj.grad.dtype == act
    _close(proj.grad[:, :, -W:], dg_e, tol, "dgate")
    assert proj.grad[:, :, :-W].abs().max().item() == 0
    _close(w.grad, dw_e, tol, "dweight")
    _close(b.grad, db_e, tol, "dbias")
    assert w.grad.dtype == par and b.grad.dtype == par


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("which", ["none", "weight-only", "bias-only"])
def test_weight_bias_none(backend, which):
    W = 10
    h, _, gate, w, b, dy = _make(2, 5, W, torch.float32, torch.float32, seed=3, gate_view=False,
                                 weight=which == "weight-only", bias=which == "bias-only")
    eps = 0.1  # a large epsilon, so that it shows
    y_exp, grads_e = _expected(h, gate, w, b, dy, eps=eps)
    with _tiles(backend):
        y = _run(backend, h, gate, w, b, dy, eps=eps)
    _close(y, y_exp, 2e-5, "y")
    for t, e, name in zip((h, gate, w, b), grads_e, ("dh", "dgate", "dweight", "dbias")):
        if t is None:
            assert e is None
        else:
            _close(t.grad, e, 2e-5, name)


@needs_triton
@pytest.mark.parametrize("cfg", [{}, dict(block_m=1, rows_per_program=1),
                                 dict(block_m=4, rows_per_program=4),
                                 dict(block_m=8, rows_per_program=64)],
                         ids=["default", "row-per-program", "tile-per-program", "one-program"])
def test_triton_tilings(cfg):
    """Default launch configuration and extreme tilings, bf16 activations, W = 34."""
    W = 34
    h, proj, gate, w, b, dy = _make(3, 7, W, torch.bfloat16, torch.float32, seed=5)
    y_exp, (dh_e, dg_e, dw_e, db_e) = _expected(h, gate, w, b, dy)
    with triton_norm_gate.override_config(**cfg):
        _run("triton", h, gate, w, b, dy, proj=proj)
    _close(h.grad, dh_e, 2e-2, "dh")
    _close(proj.grad[:, :, -W:], dg_e, 2e-2, "dgate")
    _close(w.grad, dw_e, 2e-2, "dweight")
    _close(b.grad, db_e, 2e-2, "dbias")


@pytest.mark.parametrize("backend", BACKENDS)
def test_strided_inputs_and_output_gradients(backend):
    """h with batch/row strides (a transposed buffer), gate with channel stride != 1 (copied),
    output gradients broadcast with zero strides (y.sum(), an expanded (W,) vector)."""
    B, N, W = 2, 5, 6
    g = torch.Generator().manual_seed(7)
    h = torch.randn(N, B, W, generator=g).to(DEVICE).transpose(0, 1)       # strides (W, B*W, 1)
    gate = torch.randn(B, W, N, generator=g).to(DEVICE).transpose(1, 2)    # channel stride N
    w = torch.randn(W, generator=g).to(DEVICE)
    b = torch.randn(W, generator=g).to(DEVICE)
    assert not h.is_contiguous() and gate.stride(-1) != 1
    for use_sum, dy in ((True, torch.ones(B, N, W, device=DEVICE)),
                        (False, torch.randn(W, generator=g).to(DEVICE).expand(B, N, W))):
        hs, gs, ws, bs = (t.detach().clone().requires_grad_() for t in (h, gate, w, b))
        with _tiles(backend):
            y = norm_gate(hs, gs, ws, bs, backend=backend)
            if use_sum:
                y.sum().backward()  # autograd passes an expanded, all-zero-stride gradient
            else:
                y.backward(dy)      # strides (0, 0, 1)
        y_exp, grads_e = _expected(h, gate, w, b, dy)
        _close(y, y_exp, 2e-5, "y")
        for t, e, name in zip((hs, gs, ws, bs), grads_e, ("dh", "dgate", "dweight", "dbias")):
            _close(t.grad, e, 2e-5, name)


@needs_triton
def test_triton_reads_gate_view_in_place():
    """A column slice with channel stride 1 reaches the kernel as it is (no copy)."""
    proj = torch.randn(2, 3, 25)
    gate = proj[:, :, 15:]
    assert triton_norm_gate._unit_channel_stride(gate) is gate
    batch_row = gate.transpose(0, 1)  # other batch/row strides: still read in place
    assert triton_norm_gate._unit_channel_stride(batch_row) is batch_row
    assert triton_norm_gate._unit_channel_stride(proj.transpose(1, 2)).stride(-1) == 1


# ------------------------------------------------------------------------- the op itself
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("act", [torch.bfloat16, torch.float64], ids=["bf16", "fp64"])
def test_op_statistics(backend, act):
    """The op returns y and the (B, N) statistics in fp32 (fp64 for fp64 h)."""
    h, _, gate, w, b, _ = _make(2, 3, 10, act, torch.float32, seed=11)
    h.requires_grad_()
    with _tiles(backend):
        y, mean, rstd = norm_gate_op(h, gate, w, b, EPS, backend)
    assert y.requires_grad and not mean.requires_grad and not rstd.requires_grad
    acc = torch.float64 if act == torch.float64 else torch.float32
    assert y.dtype == act and mean.dtype == acc and rstd.dtype == acc
    assert mean.shape == (2, 3) and rstd.shape == (2, 3)
    hd = h.double()
    tol = 1e-12 if act == torch.float64 else 1e-5
    torch.testing.assert_close(mean.double(), hd.mean(-1), rtol=tol, atol=tol)
    torch.testing.assert_close(rstd.double(), (hd.var(-1, unbiased=False) + EPS).rsqrt(),
                               rtol=tol, atol=tol)


@pytest.mark.parametrize("backend", BACKENDS)
def test_saves_only_inputs_and_statistics(backend):
    """Autograd keeps h, gate (the projection view, not a copy), weight, bias, mean, rstd."""
    B, N, W = 2, 3, 10
    h, proj, gate, w, b, _ = _make(B, N, W, torch.bfloat16, torch.float32, seed=2)
    for t in (h, proj, w, b):
        t.requires_grad_()
    gate = proj[:, :, -W:]
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), _tiles(backend):
        y = norm_gate(h, gate, w, b, backend=backend)
    shapes = sorted((tuple(t.shape), t.dtype) for t in saved)
    assert shapes == sorted([((B, N, W), torch.bfloat16)] * 2 + [((W,), torch.float32)] * 2
                            + [((B, N), torch.float32)] * 2), shapes
    ptrs = {t.untyped_storage().data_ptr() for t in saved}
    assert proj.untyped_storage().data_ptr() in ptrs and h.untyped_storage().data_ptr() in ptrs
    y.sum().backward()
    assert proj.grad is not None


@pytest.mark.parametrize("backend", BACKENDS)
def test_channel_strided_inputs_copied_once(backend):
    """h / gate with channel stride != 1 are made contiguous by norm_gate, before the op:
    the copies are what autograd saves, so backward does not copy them again."""
    B, N, W = 2, 3, 6
    h = torch.randn(B, W, N, device=DEVICE).transpose(1, 2).requires_grad_()
    gate = torch.randn(W, B, N, device=DEVICE).permute(1, 2, 0).requires_grad_()
    assert h.stride(-1) != 1 and gate.stride(-1) != 1
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t), \
            _tiles(backend):
        norm_gate(h, gate, None, None, backend=backend)
    big = [t for t in saved if t.dim() == 3]
    assert len(big) == 2 and all(t.stride(-1) == 1 for t in big), [t.stride() for t in big]


def test_opcheck():
    """Schema, fake implementations and autograd registration (torch.library.opcheck)."""
    h, _, gate, w, b, dy = _make(2, 3, 6, torch.float32, torch.float32, seed=4)
    for t in (h, gate, w, b):
        t.requires_grad_()
    torch.library.opcheck(norm_gate_op, (h, gate, w, b, EPS, "torch"))
    torch.library.opcheck(norm_gate_op, (h, gate, None, None, EPS, "torch"))
    y, mean, rstd = norm_gate_op(h.detach(), gate.detach(), w.detach(), b.detach(), EPS, "torch")
    torch.library.opcheck(norm_gate_backward_op,
                          (dy, h.detach(), gate.detach(), w.detach(), None, mean, rstd, EPS,
                           "torch"))


def test_reference_functions_directly():
    """The plain torch composition the base backend class uses, called directly, fp64."""
    h, _, gate, w, b, dy = _make(2, 3, 6, torch.float64, torch.float64, seed=8)
    y, mean, rstd = norm_gate_reference_forward(h, gate, w, b, EPS)
    y_exp, grads_e = _expected(h, gate, w, b, dy)
    _close(y, y_exp, 1e-12, "y")
    grads = norm_gate_reference_backward(dy, h, gate, w, b, mean, rstd, EPS)
    for a, e, name in zip(grads, grads_e, ("dh", "dgate", "dweight", "dbias")):
        _close(a, e, 1e-12, name)
    _, _, dw, db = norm_gate_reference_backward(dy, h, gate, None, None, mean, rstd, EPS)
    assert dw is None and db is None


# ------------------------------------------------------------------------------ gradcheck
@pytest.mark.parametrize("backend", [pytest.param("triton", marks=needs_triton),
                                     pytest.param("numba", marks=needs_numba), "torch"])
def test_gradcheck_fp64(backend):
    h, _, gate, w, b, _ = _make(2, 3, 3, torch.float64, torch.float64, seed=9, gate_view=False)
    inputs = tuple(t.requires_grad_() for t in (h, gate, w, b))
    with _tiles(backend, block_m=2, rows_per_program=4):
        assert torch.autograd.gradcheck(
            lambda *a: norm_gate(*a, eps=1e-3, backend=backend), inputs, eps=1e-6, atol=1e-8)


@needs_numba
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_numba_same_bits_on_any_thread_count(dtype):
    """numba: rows in runs of a fixed length, dweight / dbias summed over the runs in one
    order: one thread and two give the same bits (150 rows: three tasks, the last short; a
    width with a vector remainder). And near the torch backend."""
    h, proj, gate, w, b, dy = _make(3, 50, 100, dtype, torch.float32, seed=21)
    outs = []
    threads = torch.get_num_threads()
    try:
        for n, backend in ((1, "numba"), (2, "numba"), (threads, "torch")):
            torch.set_num_threads(n)
            ts = [t.detach().clone().requires_grad_() for t in (h, proj, w, b)]
            y = norm_gate(ts[0], ts[1][:, :, -100:], ts[2], ts[3], backend=backend)
            y.backward(dy)
            outs.append([y] + [t.grad for t in ts])
    finally:
        torch.set_num_threads(threads)
    names = ("y", "dh", "dproj", "dweight", "dbias")
    for a, c, name in zip(outs[0], outs[1], names):
        assert torch.equal(a, c), name
    tol = 2e-5 if dtype == torch.float32 else 2e-2
    for a, c, name in zip(outs[0], outs[2], names):
        _close(a, c, tol, name)


# ------------------------------------------------------------------------- compile, autocast
def test_compile_fullgraph_torch_backend():
    B, N, W = 2, 4, 6
    h, _, gate, w, b, dy = _make(B, N, W, torch.float32, torch.float32, seed=12, gate_view=False)
    proj = torch.randn(B, N, 2 * W, device=DEVICE)

    def f(h, proj, w, b):
        return norm_gate(h, proj[:, :, W:], w, b, backend="torch") * 2

    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    args = [t.clone().requires_grad_() for t in (h, proj, w, b)]
    args2 = [t.clone().requires_grad_() for t in (h, proj, w, b)]
    y = compiled(*args)
    y.backward(dy)
    y2 = f(*args2)
    y2.backward(dy)
    torch.testing.assert_close(y, y2)
    for a, c in zip(args, args2):
        torch.testing.assert_close(a.grad, c.grad)
    # one graph, no break
    explained = torch._dynamo.explain(f)(h, proj, w, b)
    assert explained.graph_break_count == 0 and explained.graph_count == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_autocast_linear_projection(backend):
    """bf16 autocast: h and gate come from a Linear in bf16, the norm's parameters stay fp32."""
    W, dim = 10, 8
    torch.manual_seed(0)
    lin = torch.nn.Linear(dim, 2 * W).to(DEVICE)
    norm = torch.nn.LayerNorm(W).to(DEVICE)
    with torch.no_grad():
        norm.weight.normal_(1, 0.3)
        norm.bias.normal_(0, 0.3)
    x = torch.randn(2, 5, dim, device=DEVICE)
    with torch.autocast(DEVICE, dtype=torch.bfloat16), _tiles(backend):
        p = lin(x)
        h, gate = p[..., :W], p[..., W:]
        y = norm_gate(h.contiguous(), gate, norm.weight, norm.bias, norm.eps, backend=backend)
    assert y.dtype == torch.bfloat16
    y.float().square().sum().backward()
    assert norm.weight.grad.dtype == torch.float32 and lin.weight.grad.dtype == torch.float32
    ref_w = [t.detach().clone().requires_grad_() for t in (norm.weight, norm.bias)]
    ph = p.detach().double().requires_grad_()
    yr = F.layer_norm(ph[..., :W], (W,), ref_w[0].double(), ref_w[1].double(), norm.eps) \
        * F.silu(ph[..., W:])
    yr.square().sum().backward()
    _close(y, yr.detach(), 2e-2, "y")
    _close(norm.weight.grad, ref_w[0].grad, 3e-2, "dweight")
    _close(norm.bias.grad, ref_w[1].grad, 3e-2, "dbias")


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch(backend):
    h = torch.zeros(0, 3, 6, device=DEVICE, requires_grad=True)
    gate = torch.zeros(0, 3, 6, device=DEVICE, requires_grad=True)
    w = torch.ones(6, device=DEVICE, requires_grad=True)
    y = norm_gate(h, gate, w, None, backend=backend)
    assert y.shape == (0, 3, 6)
    y.sum().backward()
    assert h.grad.shape == h.shape and torch.equal(w.grad, torch.zeros(6, device=DEVICE))


# ----------------------------------------------------------------------------------- errors
def _ok(W=6, **kw):
    t = dict(h=torch.randn(2, 3, W), gate=torch.randn(2, 3, W), weight=torch.ones(W),
             bias=torch.zeros(W))
    t.update(kw)
    return t


@pytest.mark.parametrize("kwargs, err, match", [
    (dict(h=torch.randn(6, 6)), ValueError, r"h must be a 3-D tensor \(B, N, W\)"),
    (dict(gate=torch.randn(2, 3, 5)), ValueError, r"gate must have the shape of h"),
    (dict(gate=torch.randn(2, 3, 6, dtype=torch.float64)), TypeError, r"gate has dtype"),
    (dict(weight=torch.ones(5)), ValueError, r"weight must have shape \(6,\)"),
    (dict(bias=torch.ones(1, 6)), ValueError, r"bias must have shape \(6,\)"),
    (dict(weight=torch.ones(6, dtype=torch.int64)), TypeError, r"weight must be a floating"),
    (dict(h=torch.ones(2, 3, 6, dtype=torch.int32)), TypeError, r"h must be a floating"),
    (dict(h=[[1.0]]), TypeError, r"h must be a torch.Tensor"),
    (dict(gate=None), TypeError, r"gate must be a torch.Tensor"),
    (dict(h=torch.randn(2, 3, 0), gate=torch.randn(2, 3, 0), weight=None, bias=None),
     ValueError, r"W = 0"),
    (dict(eps=-1.0), ValueError, r"eps must be a finite number >= 0"),
    (dict(eps="1e-5"), TypeError, r"eps must be a real number"),
    (dict(backend="nope"), ValueError, r"unknown scan backend 'nope'"),
])
def test_errors(kwargs, err, match):
    args = _ok(**{k: v for k, v in kwargs.items() if k in ("h", "gate", "weight", "bias")})
    extra = {k: v for k, v in kwargs.items() if k in ("eps", "backend")}
    with pytest.raises(err, match=match):
        norm_gate(args["h"], args["gate"], args["weight"], args["bias"],
                  **({"eps": extra["eps"]} if "eps" in extra else {}),
                  backend=extra.get("backend", "torch"))


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_device_mismatch():
    with pytest.raises(ValueError, match="weight is on"):
        norm_gate(torch.randn(2, 3, 6, device="cuda"), torch.randn(2, 3, 6, device="cuda"),
                  torch.ones(6), None)
    with pytest.raises(ValueError, match="gate is on"):
        norm_gate(torch.randn(2, 3, 6, device="cuda"), torch.randn(2, 3, 6), None, None)


def test_exported():
    assert hgrn_core.norm_gate is norm_gate and "norm_gate" in hgrn_core.__all__


# --------------------------------------------------------------------------------- GPU only
@gpu_only
@pytest.mark.parametrize("W", [384, 768, 1536])
def test_gpu_model_widths_bf16(W):
    """Real widths, bf16 autocast case, Triton against the torch backend; deterministic."""
    h, proj, gate, w, b, dy = _make(16, 197, W, torch.bfloat16, torch.float32, seed=W)
    outs = []
    for backend in ("triton", "torch", "triton"):
        ts = [t.detach().clone().requires_grad_() for t in (h, proj, w, b)]
        y = norm_gate(ts[0], ts[1][:, :, -W:], ts[2], ts[3], backend=backend)
        y.backward(dy)
        outs.append([y] + [t.grad for t in ts])
    for a, c, name in zip(outs[0], outs[1], ("y", "dh", "dproj", "dweight", "dbias")):
        tol = 2e-2
        torch.testing.assert_close(a.float(), c.float(), rtol=tol,
                                   atol=tol * c.float().abs().max().item(), msg=name)
    for a, c in zip(outs[0], outs[2]):
        assert torch.equal(a, c)  # bitwise: no atomics
