"""The scan backends against the sequential reference: outputs and every gradient.

Every backend other than the reference is compared with it: torch, and triton where it runs on
these CPU tensors (Triton's interpreter: tests/conftest.py sets TRITON_INTERPRET=1 without
CUDA). The full gradchecks below cost the interpreter ~2 minutes each, so triton's fp64
gradcheck lives in tests/test_triton_backend.py (fast mode, with its launch layouts).
"""
import pytest
import torch

from hgrn_core import bidirectional_scan, complex_scan, real_scan
from hgrn_core.backends import get_backend, triton_usable
from hgrn_core.backends.torch_chunked import linear_scan

# the inputs here are CPU tensors: triton runs them in its interpreter only
TRITON = triton_usable() and get_backend("triton").is_available(torch.device("cpu"))
BACKENDS = ["torch"] + (["triton"] if TRITON else [])
GRADCHECK = ["reference", "torch"]


def make_inputs(B, N, D, dtype=torch.float64, lam_range=(0.0, 1.0), seed=0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(B, N, D, generator=g, dtype=dtype)
    v = torch.randn(B, N, D, generator=g, dtype=dtype)
    lo, hi = lam_range
    lam = lo + (hi - lo) * torch.rand(B, N, D, generator=g, dtype=dtype)
    theta = torch.randn(D, generator=g, dtype=dtype)
    h0 = (torch.randn(B, D, generator=g, dtype=dtype), torch.randn(B, D, generator=g, dtype=dtype))
    return u, v, lam, theta, h0


def grads_of(fn, inputs):
    inputs = [t.detach().clone().requires_grad_(True) for t in inputs]
    outs = fn(*inputs)
    g = torch.Generator().manual_seed(1)
    loss = sum((o * torch.randn(o.shape, generator=g, dtype=o.dtype)).sum() for o in outs)
    loss.backward()
    return [o.detach() for o in outs], [t.grad for t in inputs]


def assert_close_lists(a, b, **tol):
    for i, (x, y) in enumerate(zip(a, b)):
        torch.testing.assert_close(x, y, **tol, msg=lambda m: f"item {i}: {m}")


def causal(backend, reverse):
    def fn(u, v, lam, theta, h0r, h0i):
        hr, hi, (fr, fi) = complex_scan(u, v, lam, theta, reverse=reverse, initial_state=(h0r, h0i),
                                        return_final_state=True, backend=backend)
        return hr, hi, fr, fi
    return fn


def bidir(backend):
    return lambda u, v, lam, tf, tr: bidirectional_scan(u, v, lam, tf, tr, backend=backend)


def real(backend, reverse):
    def fn(x, lam, h0):
        return real_scan(x, lam, reverse=reverse, initial_state=h0, return_final_state=True,
                         backend=backend)
    return fn


# ------------------------------------------------------------------------------ gradcheck
@pytest.mark.parametrize("backend", GRADCHECK)
@pytest.mark.parametrize("reverse", [False, True])
def test_gradcheck_complex(backend, reverse):
    u, v, lam, theta, (h0r, h0i) = make_inputs(2, 6, 3, lam_range=(0.05, 0.95))
    args = [t.requires_grad_() for t in (u, v, lam, theta, h0r, h0i)]
    assert torch.autograd.gradcheck(causal(backend, reverse), args)


@pytest.mark.parametrize("backend", GRADCHECK)
def test_gradcheck_bidirectional(backend):
    u, v, lam, theta, _ = make_inputs(2, 5, 3, lam_range=(0.05, 0.95))
    theta_r = theta.flip(0).clone()
    args = [t.requires_grad_() for t in (u, v, lam, theta, theta_r)]
    assert torch.autograd.gradcheck(bidir(backend), args)


@pytest.mark.parametrize("backend", GRADCHECK)
@pytest.mark.parametrize("reverse", [False, True])
def test_gradcheck_real(backend, reverse):
    u, _, lam, _, (h0, _) = make_inputs(2, 7, 3, lam_range=(0.05, 0.95))
    args = [t.requires_grad_() for t in (u, lam, h0)]
    assert torch.autograd.gradcheck(real(backend, reverse), args)


# ---------------------------------------------------- against the reference, many shapes
SHAPES = [(1, 1, 1), (2, 1, 5), (3, 7, 5), (2, 33, 17), (1, 100, 3), (2, 257, 6)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("reverse", [False, True])
def test_complex_matches_reference_fp32(backend, shape, reverse):
    u, v, lam, theta, h0 = make_inputs(*shape, dtype=torch.float32)
    inputs = [u, v, lam, theta, *h0]
    ref_out, ref_grad = grads_of(causal("reference", reverse), inputs)
    out, grad = grads_of(causal(backend, reverse), inputs)
    assert_close_lists(out, ref_out, rtol=1e-4, atol=1e-4)
    assert_close_lists(grad, ref_grad, rtol=1e-4, atol=2e-4)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_bidirectional_matches_reference_fp32(backend, shape):
    u, v, lam, theta, _ = make_inputs(*shape, dtype=torch.float32)
    inputs = [u, v, lam, theta, 0.5 * theta + 0.1]
    ref_out, ref_grad = grads_of(bidir("reference"), inputs)
    out, grad = grads_of(bidir(backend), inputs)
    assert_close_lists(out, ref_out, rtol=1e-4, atol=1e-4)
    assert_close_lists(grad, ref_grad, rtol=1e-4, atol=2e-4)


def test_bidirectional_is_sum_of_directions():
    u, v, lam, theta, _ = make_inputs(2, 9, 4)
    theta_r = theta + 1.0
    fr, fi = complex_scan(u, v, lam, theta, backend="reference")
    rr, ri = complex_scan(u, v, lam, theta_r, reverse=True, backend="reference")
    hr, hi = bidirectional_scan(u, v, lam, theta, theta_r, backend="torch")
    torch.testing.assert_close(hr, fr + rr)
    torch.testing.assert_close(hi, fi + ri)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reverse", [False, True])
def test_real_matches_reference_and_complex_with_zero_phase(backend, reverse):
    x, v, lam, theta, (h0, _) = make_inputs(2, 45, 7, dtype=torch.float32)
    ref_out, ref_grad = grads_of(real("reference", reverse), [x, lam, h0])
    out, grad = grads_of(real(backend, reverse), [x, lam, h0])
    assert_close_lists(out, ref_out, rtol=1e-4, atol=1e-4)
    assert_close_lists(grad, ref_grad, rtol=1e-4, atol=2e-4)
    # theta = 0 with no imaginary input is the real scan
    hr, hi = complex_scan(x, torch.zeros_like(x), lam, torch.zeros_like(theta), reverse=reverse,
                          backend=backend)
    torch.testing.assert_close(hr, real_scan(x, lam, reverse=reverse, backend=backend))
    assert hi.abs().max() == 0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("lam_range", [(0.0, 1e-3), (0.999, 1.0)])
def test_lam_near_edges(backend, lam_range):
    u, v, lam, theta, h0 = make_inputs(2, 70, 5, dtype=torch.float32, lam_range=lam_range)
    lam[:, 3] = 0.0  # exact zeros (the first layer's bound is 0) must not produce nan
    lam[:, 5] = 1.0
    inputs = [u, v, lam, theta, *h0]
    for reverse in (False, True):
        ref_out, ref_grad = grads_of(causal("reference", reverse), inputs)
        out, grad = grads_of(causal(backend, reverse), inputs)
        assert_close_lists(out, ref_out, rtol=1e-4, atol=1e-4)
        assert_close_lists(grad, ref_grad, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_final_state_chains_segments(backend):
    """Scanning a sequence in two segments, passing the state, equals one scan."""
    u, v, lam, theta, h0 = make_inputs(2, 30, 4, dtype=torch.float32)
    hr, hi, last = complex_scan(u, v, lam, theta, initial_state=h0, return_final_state=True,
                                backend=backend)
    ar, ai, mid = complex_scan(u[:, :13], v[:, :13], lam[:, :13], theta, initial_state=h0,
                               return_final_state=True, backend=backend)
    br, bi, end = complex_scan(u[:, 13:], v[:, 13:], lam[:, 13:], theta, initial_state=mid,
                               return_final_state=True, backend=backend)
    torch.testing.assert_close(torch.cat([ar, br], 1), hr)
    torch.testing.assert_close(torch.cat([ai, bi], 1), hi)
    torch.testing.assert_close(end[0], last[0])
    torch.testing.assert_close(end[1], last[1])
    torch.testing.assert_close(last[0], hr[:, -1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_inputs(backend):
    u, v, lam, theta, _ = make_inputs(3, 20, 8, dtype=torch.float32)
    big = torch.randn(3, 8, 20, 2)
    u_nc = big[..., 0].transpose(1, 2)  # (3, 20, 8), not contiguous
    assert not u_nc.is_contiguous()
    out = bidirectional_scan(u_nc, v, lam, theta, theta, backend=backend)
    ref = bidirectional_scan(u_nc.contiguous(), v, lam, theta, theta, backend="reference")
    assert_close_lists(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_accumulates_in_fp32(backend, dtype):
    u, v, lam, theta, _ = make_inputs(2, 300, 6, dtype=torch.float32, lam_range=(0.9, 0.999))
    args = [t.to(dtype) for t in (u, v, lam)]
    args = [t.requires_grad_() for t in args]
    hr, hi = bidirectional_scan(*args, theta, theta, backend=backend)
    assert hr.dtype == dtype and hi.dtype == dtype
    exact = bidirectional_scan(*[a.detach().double() for a in args], theta.double(), theta.double(),
                               backend="reference")
    # fp32 accumulation: the only error left is rounding the inputs and the output
    scale = exact[0].abs().max()
    assert (hr.double() - exact[0]).abs().max() <= 2e-2 * scale
    (hr.float().sum() + hi.float().sum()).backward()
    assert args[0].grad.dtype == dtype and torch.isfinite(args[2].grad.float()).all()


# ----------------------------------------------------------------------- long sequences
def test_long_sequence_stable_and_accurate():
    """N = 65,536 with lam up to 0.9999: no overflow, matches an fp64 sequential scan."""
    B, N, D = 1, 65536, 4
    g = torch.Generator().manual_seed(0)
    lam = 0.999 + 0.0009 * torch.rand(B, N, D, generator=g, dtype=torch.float64)
    lam[..., 0] = 0.9999
    u = torch.randn(B, N, D, generator=g, dtype=torch.float64)
    v = torch.randn(B, N, D, generator=g, dtype=torch.float64)
    theta = torch.tensor([1e-4, 1e-2, 0.5, 3.0], dtype=torch.float64)
    # fp64 ground truth: the sequential recurrence, vectorised over channels only
    a = lam * torch.polar(torch.ones_like(theta), theta)
    x = torch.complex(u, v)
    truth = torch.empty_like(x)
    h = torch.zeros(B, D, dtype=x.dtype)
    for t in range(N):
        h = a[:, t] * h + x[:, t]
        truth[:, t] = h
    hr, hi = complex_scan(u.float(), v.float(), lam.float(), theta.float(), backend="torch")
    assert torch.isfinite(hr).all() and torch.isfinite(hi).all()
    err = (torch.complex(hr.double(), hi.double()) - truth).abs().max()
    assert err <= 1e-3 * truth.abs().max(), err
    # and in float64 the chunked scan is exact to rounding
    hr64, hi64 = complex_scan(u, v, lam, theta, backend="torch")
    torch.testing.assert_close(torch.complex(hr64, hi64), truth, rtol=1e-9, atol=1e-9)


def test_chunk_sizes_agree():
    """The chunked scan gives the same answer whatever the chunk size (incl. 1 and > N),
    for complex and real states."""
    g = torch.Generator().manual_seed(3)
    x = tuple(torch.randn(2, 50, 3, generator=g, dtype=torch.float64) for _ in range(2))
    lam = torch.rand(2, 50, 3, generator=g, dtype=torch.float64)
    theta = torch.randn(3, generator=g, dtype=torch.float64)
    h0 = tuple(torch.randn(2, 3, generator=g, dtype=torch.float64) for _ in range(2))
    for xs, th, s0 in ((x, theta, h0), (x[:1], None, h0[:1])):
        for reverse in (False, True):
            expected, last = linear_scan(xs, lam, th, s0, reverse, chunk=1)
            for chunk in (2, 3, 7, 16, 64):
                h, fin = linear_scan(xs, lam, th, s0, reverse, chunk=chunk)
                for a, b in zip(h + fin, expected + last):
                    torch.testing.assert_close(a, b)
