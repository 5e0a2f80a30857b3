"""Backend selection and clear errors for bad input."""
import pytest
import torch

import hgrn_core
from hgrn_core import bidirectional_scan, complex_scan, real_scan, resolve_backend
from hgrn_core import backends
from hgrn_core.backends import ENV_VAR, auto_backend_name, numba_unsupported, triton_usable


def inputs(B=2, N=5, D=3, dtype=torch.float32):
    return (torch.randn(B, N, D, dtype=dtype), torch.randn(B, N, D, dtype=dtype),
            torch.rand(B, N, D, dtype=dtype), torch.randn(D, dtype=dtype))


def test_registry_lists_backends():
    assert {"reference", "torch", "triton", "numba"} <= set(hgrn_core.list_backends())


def test_auto_on_cpu_is_numba_where_it_imports_else_torch(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    want = "numba" if numba_unsupported() is None else "torch"
    assert auto_backend_name(torch.device("cpu")) == want
    assert resolve_backend("auto", torch.device("cpu")).name == want
    assert resolve_backend(None, torch.device("cpu")).name == want


def test_auto_on_cpu_without_numba_is_torch(monkeypatch):
    # numba not installed: its loader raises ImportError (get_backend: ValueError)
    monkeypatch.delenv(ENV_VAR, raising=False)

    def missing():
        raise ImportError("No module named 'numba'")
    monkeypatch.setitem(backends._REGISTRY, "numba", missing)
    monkeypatch.setattr(backends, "_failed", {})
    assert auto_backend_name(torch.device("cpu")) == "torch"
    assert resolve_backend("auto", torch.device("cpu")).name == "torch"
    assert "numba" in numba_unsupported()
    with pytest.raises(ValueError, match="not available"):
        resolve_backend("numba", torch.device("cpu"))


def test_env_var_overrides_auto_and_keyword_overrides_env(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "reference")
    assert resolve_backend("auto", torch.device("cpu")).name == "reference"
    assert resolve_backend("torch", torch.device("cpu")).name == "torch"


def test_env_var_takes_effect_in_the_scan(monkeypatch):
    u, v, lam, theta = inputs()
    calls = []
    ref = hgrn_core.get_backend("reference")
    monkeypatch.setattr(ref, "complex_forward",
                        lambda *a: calls.append(1) or type(ref).complex_forward(ref, *a))
    monkeypatch.setenv(ENV_VAR, "reference")
    complex_scan(u, v, lam, theta)
    assert calls == [1]


def test_unknown_backend_names_the_choices(monkeypatch):
    u, v, lam, theta = inputs()
    with pytest.raises(ValueError, match=r"unknown scan backend 'cuda_magic'.*reference.*torch"):
        complex_scan(u, v, lam, theta, backend="cuda_magic")
    monkeypatch.setenv(ENV_VAR, "nope")
    with pytest.raises(ValueError, match="unknown scan backend 'nope'"):
        complex_scan(u, v, lam, theta)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks CPU tensors without a GPU")
@pytest.mark.skipif(not triton_usable(), reason="needs triton >= 3.6 (else the version is named)")
def test_triton_on_cpu_without_interpreter_is_refused(monkeypatch):
    # load the backend (and its kernel modules) under the interpreter first: importing them
    # with TRITON_INTERPRET unset would make compiled-mode kernels for the rest of the session
    hgrn_core.get_backend("triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    u, v, lam, theta = inputs()
    with pytest.raises(ValueError, match="cannot run on cpu tensors.*torch"):
        complex_scan(u, v, lam, theta, backend="triton")


def test_wrong_rank():
    u, v, lam, theta = inputs()
    with pytest.raises(ValueError, match=r"u must be a 3-D tensor \(B, N, D\).*2-D"):
        complex_scan(u[0], v[0], lam[0], theta)


def test_mismatched_shapes():
    u, v, lam, theta = inputs()
    with pytest.raises(ValueError, match=r"lam must have the shape of u \(2, 5, 3\)"):
        complex_scan(u, v, lam[:, :4], theta)
    with pytest.raises(ValueError, match=r"theta must have shape \(3,\)"):
        complex_scan(u, v, lam, theta[:2])
    with pytest.raises(ValueError, match=r"theta_reverse must have shape \(3,\)"):
        bidirectional_scan(u, v, lam, theta, theta[:2])
    with pytest.raises(ValueError, match=r"initial_state\[1\] must have shape \(2, 3\)"):
        complex_scan(u, v, lam, theta, initial_state=(torch.zeros(2, 3), torch.zeros(3)))
    with pytest.raises(ValueError, match=r"initial_state must have shape \(2, 3\)"):
        real_scan(u, lam, initial_state=torch.zeros(2, 4))


def test_mismatched_dtypes_and_non_float():
    u, v, lam, theta = inputs()
    with pytest.raises(TypeError, match="v has dtype torch.float64 but u has torch.float32"):
        complex_scan(u, v.double(), lam, theta)
    with pytest.raises(TypeError, match="u must be a floating-point tensor.*torch.int64"):
        complex_scan(u.long(), v, lam, theta)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        real_scan([1.0, 2.0], lam)


def test_mismatched_devices():
    u, v, lam, theta = inputs()
    meta = torch.empty_like(v, device="meta")
    with pytest.raises(ValueError, match="v is on meta but u is on cpu"):
        complex_scan(u, meta, lam, theta)
    with pytest.raises(ValueError, match="theta is on meta but the sequences are on cpu"):
        complex_scan(u, v, lam, theta.to("meta"))


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_lam_outside_unit_interval(bad):
    u, v, lam, theta = inputs()
    lam[1, 2, 0] = bad
    with pytest.raises(ValueError, match=r"lam must lie in \[0, 1\]"):
        bidirectional_scan(u, v, lam, theta, theta)


def test_empty_sequence():
    u, v, lam, theta = inputs(N=0)
    with pytest.raises(ValueError, match="empty sequence"):
        complex_scan(u, v, lam, theta)


def test_triton_older_than_the_kernels_is_not_chosen_and_named(monkeypatch):
    from hgrn_core import backends
    monkeypatch.setattr(backends, "triton_version", lambda: "3.3.1")
    assert not backends.triton_usable()
    assert backends.auto_backend_name(torch.device("cuda")) == "torch"
    backends.register_backend("triton_old_for_test", backends._load_triton)
    try:
        with pytest.raises(ValueError, match=r"triton >= 3\.6 \(installed: 3\.3\.1\).*hgrn\[gpu\]"):
            backends.get_backend("triton_old_for_test")
    finally:
        backends._REGISTRY.pop("triton_old_for_test")
    monkeypatch.setattr(backends, "triton_version", lambda: "3.6.0")
    assert backends.triton_usable()
