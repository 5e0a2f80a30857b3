"""The ``triton`` backend against the ``reference`` loop, through the public API.

The scan API runs the walk kernels of the fused HGRU core with decays and inputs given
(``hgrn_core.kernels.triton_scan_given``). Without CUDA the kernels run in Triton's
interpreter (TRITON_INTERPRET=1, set below before anything imports the kernels;
tests/conftest.py does the same). Shapes are kept tiny so that the interpreter stays fast;
several tiles per program, several channel blocks and the segmented scheme are forced
through ``triton_hgru.override_config``. GPU-only tests are skipped without CUDA.
"""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

triton = pytest.importorskip("triton", minversion="3.6")  # hgrn_core.backends.MIN_TRITON

import hgrn_core  # noqa: E402
from hgrn_core.backends import get_backend  # noqa: E402
from hgrn_core.kernels import triton_hgru, triton_scan_given  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
gpu_only = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")

# paths: default config (one tile for N <= 8, one channel block), the segmented scheme (two
# launches; several channel blocks, D not a multiple of the block), several tiles per
# program (channel blocks permuted as on the GPU: vec < block_d; no prefetch)
PATHS = {
    "tile": {},
    "segments": dict(block_t=4, block_d=4, segments=3),
    "tileloop": dict(block_t=4, block_d=2, vec=1, prefetch=False),
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
    with triton_hgru.override_config(**PATHS[path]):
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
    with triton_hgru.override_config(**PATHS[path]):
        out = run("triton", t_tri)
        g = _grads(out, t_tri)
    ref = run("reference", t_ref)
    gref = _grads(ref, t_ref)
    for name, a, b in zip(["hr", "hi"], out, ref):
        assert a.dtype == dtype
        _close(a, b, tol, name)
    for name in t_ref:
        _close(g[name], gref[name], tol, "d" + name)


@pytest.mark.parametrize("path", ["tile", "segments"])
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
    with triton_hgru.override_config(**PATHS[path]):
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
    _check_bidir(2, 9, 5, "segments", dtype=torch.bfloat16, tol=3e-2)
    _check_complex(1, 9, 5, True, True, "segments", dtype=torch.float16, tol=5e-3)


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
    # lam = 0 (first layer's bound) and lam = 1 over a segmented sequence: no nan/inf
    B, N, D = 1, 40, 3
    t = _inputs(B, N, D)
    lam = torch.zeros(B, N, D, device=DEVICE)
    lam[:, ::2] = 1.0
    with triton_hgru.override_config(block_t=4, segments=3):
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


def test_lam_zero_and_one_gradients():
    """dlam = Re(D conj(e^{i theta} h_prev)) has no division by lam: exact zeros and ones
    give the reference's gradients, every direction, complex and real."""
    B, N, D = 2, 11, 3
    t = _inputs(B, N, D, h0=True)
    lam = t["lam"].detach().clone()
    lam[:, 2] = 0.0
    lam[:, 5:7] = 1.0
    lam[:, -1] = 0.0
    t["lam"] = lam.requires_grad_()
    with triton_hgru.override_config(block_t=4, block_d=2, segments=2):
        for reverse in (False, True):
            t1, t2 = _clone(t), _clone(t)
            for a, b in zip(_run_complex("triton", t1, reverse, True),
                            _run_complex("reference", t2, reverse, True)):
                _close(a, b, 1e-4, "h")
            del t1["theta_r"], t2["theta_r"]
            g1 = _grads(_run_complex("triton", t1, reverse, True), t1)
            g2 = _grads(_run_complex("reference", t2, reverse, True), t2)
            for name in t1:
                _close(g1[name], g2[name], 1e-4, f"d{name} reverse={reverse}")
            x1 = {"x": t1["u"], "lam": t1["lam"]}
            x2 = {"x": t2["u"], "lam": t2["lam"]}
            g1 = _grads([hgrn_core.real_scan(x1["x"], x1["lam"], reverse=reverse,
                                             backend="triton")], x1)
            g2 = _grads([hgrn_core.real_scan(x2["x"], x2["lam"], reverse=reverse,
                                             backend="reference")], x2)
            for name in x1:
                _close(g1[name], g2[name], 1e-4, f"real d{name} reverse={reverse}")
        t1, t2 = _clone(t), _clone(t)
        for x in (t1, t2):
            del x["h0r"], x["h0i"]
        g1 = _grads(hgrn_core.bidirectional_scan(t1["u"], t1["v"], t1["lam"], t1["theta"],
                                                 t1["theta_r"], backend="triton"), t1)
        g2 = _grads(hgrn_core.bidirectional_scan(t2["u"], t2["v"], t2["lam"], t2["theta"],
                                                 t2["theta_r"], backend="reference"), t2)
        for name in t1:
            _close(g1[name], g2[name], 1e-4, f"bidirectional d{name}")


GRADCHECK = ["complex", "complex-reverse", "bidirectional", "real", "real-reverse"]


@pytest.mark.parametrize("B,N,D", [(1, 5, 3), (2, 1, 1)])
@pytest.mark.parametrize("kind", GRADCHECK)
def test_gradcheck_fp64(kind, B, N, D):
    """fp64 through the same kernels (tiles of 2 rows, blocks of 2 channels, 2 segments):
    torch.autograd.gradcheck of the public API, every input and output (final states
    included)."""
    t = {k: x.detach().double() for k, x in _inputs(B, N, D, h0=True, seed=3).items()}
    reverse = kind.endswith("reverse")
    if kind.startswith("complex"):
        def fn(u, v, lam, theta, h0r, h0i):
            hr, hi, (fr, fi) = hgrn_core.complex_scan(
                u, v, lam, theta, reverse=reverse, initial_state=(h0r, h0i),
                return_final_state=True, backend="triton")
            return hr, hi, fr, fi
        args = [t[k] for k in ("u", "v", "lam", "theta", "h0r", "h0i")]
    elif kind == "bidirectional":
        def fn(u, v, lam, tf, tr):
            return hgrn_core.bidirectional_scan(u, v, lam, tf, tr, backend="triton")
        args = [t[k] for k in ("u", "v", "lam", "theta", "theta_r")]
    else:
        def fn(x, lam, h0):
            return hgrn_core.real_scan(x, lam, reverse=reverse, initial_state=h0,
                                       return_final_state=True, backend="triton")
        args = [t[k] for k in ("u", "lam", "h0r")]
    args = [a.requires_grad_() for a in args]
    with triton_hgru.override_config(block_t=2, block_d=2, segments=2):
        assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-7, rtol=1e-5,
                                        fast_mode=True)


def test_scan_api_runs_the_walk_kernels(monkeypatch):
    """Every scan of the public API is a launch of the HGRU walk kernels with GIVEN set,
    under the HGRU core's launch configuration (segments included)."""
    from hgrn_core.kernels.triton_hgru_bwd import _hgru_bwd_kernel
    from hgrn_core.kernels.triton_hgru_fwd import _hgru_fwd_kernel
    seen = []
    launch = triton_scan_given._launch

    def spy(kernel, cfg, B, pre, args):
        seen.append((kernel, cfg.n_seg, args["GIVEN"]))
        return launch(kernel, cfg, B, pre, args)
    monkeypatch.setattr(triton_scan_given, "_launch", spy)
    t = _inputs(1, 9, 3)
    with triton_hgru.override_config(block_t=2, segments=2):
        hr, hi = hgrn_core.bidirectional_scan(t["u"], t["v"], t["lam"], t["theta"],
                                              t["theta_r"], backend="triton")
        (hr.sum() + hi.sum()).backward()
    assert seen == [(_hgru_fwd_kernel, 2, True), (_hgru_bwd_kernel, 2, True)]
    with triton_hgru.override_config(target_programs=264):
        few = triton_hgru._Cfg(1, 8192, 64, torch.device("cpu"), bwd=False)
    assert few.n_seg > 1  # one long sequence: split into segments


def test_old_lane_parallel_kernels_are_gone():
    import importlib.util
    assert importlib.util.find_spec("hgrn_core.kernels.triton_scan") is None


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
