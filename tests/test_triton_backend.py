"""The ``triton`` backend against the ``reference`` loop, through the public API.

Without CUDA the kernels run in Triton's interpreter (TRITON_INTERPRET=1, set below
before anything imports the kernels; tests/conftest.py does the same). Shapes are kept
tiny so that the interpreter stays fast; the chunk-parallel path is forced with a small
tile through ``triton_scan.override_config``. GPU-only tests are skipped without CUDA.
"""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

triton = pytest.importorskip("triton", minversion="3.6")  # hgrn_core.backends.MIN_TRITON

import hgrn_core  # noqa: E402
from hgrn_core.backends import get_backend  # noqa: E402
from hgrn_core.kernels import triton_scan  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
gpu_only = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")

# paths: default config (one tile), chunk-parallel (3 passes), tile loop in one program
PATHS = {
    "tile": {},
    "chunked": dict(block_t=4, chunked=True),
    "tileloop": dict(block_t=4, chunked=False),
}


def _inputs(B, N, D, dtype=torch.float32, h0=False, seed=0):
    g = torch.Generator().manual_seed(seed)

    def r(*s):
        return torch.randn(*s, generator=g)

    t = dict(u=r(B, N, D), v=r(B, N, D),
             lam=torch.rand(B, N, D, generator=g) * 0.98 + 0.01,
             theta=r(D), theta_r=r(D))
    if h0:
        t["h0r"], t["h0i"] = r(B, D), r(B, D)
    return {k: x.to(DEVICE, dtype).requires_grad_() for k, x in t.items()}


def _grads(outputs, inputs, seed=1):
    g = torch.Generator().manual_seed(seed)
    loss = sum((o.float() * torch.randn(o.shape, generator=g).to(o.device)).sum()
               for o in outputs)
    names = list(inputs)
    gs = torch.autograd.grad(loss, [inputs[n] for n in names], allow_unused=True)
    return dict(zip(names, gs))


def _close(a, b, tol, what):
    assert a is not None and b is not None, what
    a, b = a.double().cpu(), b.double().cpu()
    scale = max(1.0, b.abs().max().item())
    err = (a - b).abs().max().item()
    assert err <= tol * scale, f"{what}: max err {err:.3g} (scale {scale:.3g})"


def _clone(inputs):
    return {k: x.detach().clone().requires_grad_() for k, x in inputs.items()}


def _run_complex(backend, t, reverse, h0):
    state = (t["h0r"], t["h0i"]) if h0 else None
    hr, hi, (fr, fi) = hgrn_core.complex_scan(
        t["u"], t["v"], t["lam"], t["theta"], reverse=reverse, initial_state=state,
        return_final_state=True, backend=backend)
    return [hr, hi, fr, fi]


def _check_complex(B, N, D, reverse, h0, path, dtype=torch.float32, tol=1e-4):
    t_ref = _inputs(B, N, D, torch.float32, h0)
    t_tri = {k: x.detach().to(dtype).requires_grad_() for k, x in t_ref.items()}
    t_ref = {k: x.detach().to(dtype).float().requires_grad_() for k, x in t_tri.items()}
    del t_tri["theta_r"], t_ref["theta_r"]
    with triton_scan.override_config(**PATHS[path]):
        out = _run_complex("triton", t_tri, reverse, h0)
        g = _grads(out, t_tri)
    ref = _run_complex("reference", t_ref, reverse, h0)
    gref = _grads(ref, t_ref)
    for name, a, b in zip(["hr", "hi", "hNr", "hNi"], out, ref):
        assert a.dtype == dtype, name
        _close(a, b, tol, name)
    for name in t_ref:
        _close(g[name], gref[name], tol, "d" + name)


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("B,N,D", [(2, 7, 5), (1, 33, 3)])
def test_complex_with_state(B, N, D, reverse, path):
    _check_complex(B, N, D, reverse, True, path)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("B,N,D", [(1, 1, 3), (3, 5, 17)])
def test_complex_no_state(B, N, D, reverse):
    _check_complex(B, N, D, reverse, False, "tile")


def _check_bidir(B, N, D, path, dtype=torch.float32, tol=1e-4):
    t_tri = {k: x.detach().to(dtype).requires_grad_() for k, x in _inputs(B, N, D).items()}
    t_ref = {k: x.detach().float().requires_grad_() for k, x in t_tri.items()}

    def run(backend, t):
        return list(hgrn_core.bidirectional_scan(t["u"], t["v"], t["lam"], t["theta"],
                                                 t["theta_r"], backend=backend))
    with triton_scan.override_config(**PATHS[path]):
        out = run("triton", t_tri)
        g = _grads(out, t_tri)
    ref = run("reference", t_ref)
    gref = _grads(ref, t_ref)
    for name, a, b in zip(["hr", "hi"], out, ref):
        assert a.dtype == dtype
        _close(a, b, tol, name)
    for name in t_ref:
        _close(g[name], gref[name], tol, "d" + name)


@pytest.mark.parametrize("path", ["tile", "chunked"])
@pytest.mark.parametrize("B,N,D", [(2, 7, 5), (1, 33, 17), (2, 1, 3)])
def test_bidirectional(B, N, D, path):
    _check_bidir(B, N, D, path)


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("reverse", [False, True])
def test_real(reverse, path):
    B, N, D = 2, 33, 5
    t = _inputs(B, N, D, h0=True)
    t = {"x": t["u"], "lam": t["lam"], "h0": t["h0r"]}
    t2 = _clone(t)

    def run(backend, t):
        h, hN = hgrn_core.real_scan(t["x"], t["lam"], reverse=reverse, initial_state=t["h0"],
                                    return_final_state=True, backend=backend)
        return [h, hN]
    with triton_scan.override_config(**PATHS[path]):
        out = run("triton", t)
        g = _grads(out, t)
    ref = run("reference", t2)
    gref = _grads(ref, t2)
    for a, b, name in zip(out, ref, ["h", "hN"]):
        _close(a, b, 1e-4, name)
    for name in t:
        _close(g[name], gref[name], 1e-4, "d" + name)


def test_low_precision_inputs():
    # the reference sees the same rounded inputs in fp32: errors are output rounding only
    _check_complex(2, 9, 5, False, True, "tile", dtype=torch.bfloat16, tol=3e-2)
    _check_bidir(2, 9, 5, "chunked", dtype=torch.bfloat16, tol=3e-2)
    _check_complex(1, 9, 5, True, True, "chunked", dtype=torch.float16, tol=5e-3)


def test_fp64_inputs_stay_fp64():
    t = {k: x.detach().double().requires_grad_() for k, x in _inputs(1, 6, 3).items()}
    hr, hi = hgrn_core.bidirectional_scan(t["u"], t["v"], t["lam"], t["theta"], t["theta_r"],
                                          backend="triton")
    rr, ri = hgrn_core.bidirectional_scan(t["u"], t["v"], t["lam"], t["theta"], t["theta_r"],
                                          backend="reference")
    assert hr.dtype == torch.float64
    _close(hr, rr, 1e-12, "hr")
    _close(hi, ri, 1e-12, "hi")


def test_non_contiguous_inputs():
    B, N, D = 2, 6, 5
    t = _inputs(B, N, D)
    # (B, D, N) storage viewed as (B, N, D): strides are not (.., D, 1)
    u, v, lam = (x.detach().transpose(1, 2).contiguous().transpose(1, 2) for x in
                 (t["u"], t["v"], t["lam"]))
    assert not u.is_contiguous()
    a = hgrn_core.bidirectional_scan(u, v, lam, t["theta"].detach(), t["theta_r"].detach(),
                                     backend="triton")
    b = hgrn_core.bidirectional_scan(u, v, lam, t["theta"].detach(), t["theta_r"].detach(),
                                     backend="reference")
    _close(a[0], b[0], 1e-4, "hr")
    _close(a[1], b[1], 1e-4, "hi")


def test_lam_extremes_stay_finite():
    # lam = 0 (first layer's bound) and lam = 1 over a chunked sequence: no nan/inf
    B, N, D = 1, 40, 3
    t = _inputs(B, N, D)
    lam = torch.zeros(B, N, D, device=DEVICE)
    lam[:, ::2] = 1.0
    with triton_scan.override_config(block_t=4, chunked=True):
        a = hgrn_core.bidirectional_scan(t["u"].detach(), t["v"].detach(), lam,
                                         t["theta"].detach(), t["theta_r"].detach(),
                                         backend="triton")
    b = hgrn_core.bidirectional_scan(t["u"].detach(), t["v"].detach(), lam,
                                     t["theta"].detach(), t["theta_r"].detach(),
                                     backend="reference")
    _close(a[0], b[0], 1e-4, "hr")
    _close(a[1], b[1], 1e-4, "hi")


def test_availability():
    be = get_backend("triton")
    assert be.name == "triton"
    assert be.is_available(torch.device("cuda"))
    assert be.is_available(torch.device("cpu")) == (os.environ.get("TRITON_INTERPRET") == "1")


def test_heuristic_chunks_small_batch_long_sequence():
    from hgrn_core.kernels.triton_scan import _Config
    with triton_scan.override_config(target_programs=264):
        few = _Config(1, 8192, 64, torch.device("cpu"), triton_scan.TILE_ELEMS_FWD, True)
        many = _Config(256, 8192, 384, torch.device("cpu"), triton_scan.TILE_ELEMS_FWD, True)
        vit = _Config(128, 196, 384, torch.device("cpu"), triton_scan.TILE_ELEMS_FWD, False)
    assert few.chunked and few.n_tiles > 1
    assert not many.chunked  # plenty of programs: one program walks all its tiles
    assert vit.n_tiles == 1 and not vit.chunked  # ViT: one tile, inputs read once


# ------------------------------------------------------------------------------ GPU only
@gpu_only
@pytest.mark.parametrize("B,N,D", [(8, 196, 384), (2, 4096, 64), (1, 65536, 32)])
def test_gpu_real_shapes_match_torch_backend(B, N, D):
    g = torch.Generator(device="cuda").manual_seed(0)
    u, v = (torch.randn(B, N, D, device="cuda", generator=g) for _ in range(2))
    lam = torch.rand(B, N, D, device="cuda", generator=g) * 0.1 + 0.9
    th, th2 = (torch.randn(D, device="cuda", generator=g) for _ in range(2))
    ts = [x.clone().requires_grad_() for x in (u, v, lam, th, th2)]
    tt = [x.clone().requires_grad_() for x in (u, v, lam, th, th2)]
    a = hgrn_core.bidirectional_scan(*ts, backend="triton")
    b = hgrn_core.bidirectional_scan(*tt, backend="torch")
    go = [torch.randn_like(a[0]), torch.randn_like(a[1])]
    torch.autograd.backward(a, go)
    torch.autograd.backward(b, go)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-3, atol=1e-3)
    for x, y in zip(ts, tt):
        torch.testing.assert_close(x.grad, y.grad, rtol=1e-3, atol=1e-2 * y.grad.abs().max().item())


@gpu_only
def test_gpu_bf16_and_compile():
    B, N, D = 16, 196, 384
    u, v = (torch.randn(B, N, D, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    lam = torch.rand(B, N, D, device="cuda", dtype=torch.bfloat16)
    th, th2 = torch.randn(D, device="cuda"), torch.randn(D, device="cuda")
    fn = torch.compile(lambda *a: hgrn_core.bidirectional_scan(*a, backend="triton"),
                       fullgraph=True)
    hr, hi = fn(u, v, lam, th, th2)
    rr, ri = hgrn_core.bidirectional_scan(u.float(), v.float(), lam.float(), th, th2,
                                          backend="torch")
    assert hr.dtype == torch.bfloat16
    torch.testing.assert_close(hr.float(), rr, rtol=3e-2, atol=3e-2)
    torch.testing.assert_close(hi.float(), ri, rtol=3e-2, atol=3e-2)
