"""The automatic backend choice on GPUs: Triton only where its kernels are known to run, and a
fallback to the torch backend when a Triton kernel fails under ``auto``.

Without a GPU the CUDA device is simulated: ``auto``'s choice for CUDA is steered onto CPU
tensors (Triton runs them in its interpreter), and a kernel failure is forced.
"""
import logging
import re
import warnings

import pytest
import torch

import hgrn_core
from hgrn_core import backends
from hgrn_core.hgru_op import hgru
from hgrn_core.norm_gate_op import norm_gate

pytest.importorskip("triton", minversion="3.6")

CUDA = torch.device("cuda")


@pytest.fixture
def fresh_state(monkeypatch):
    """No remembered failure or log line; no HGRN_BACKEND."""
    monkeypatch.setattr(backends, "_failed", {})
    monkeypatch.setattr(backends, "_said", set())
    monkeypatch.delenv(backends.ENV_VAR, raising=False)


@pytest.fixture
def gpu_like(monkeypatch, fresh_state):
    """``auto`` resolves CPU tensors as it would a supported GPU's (Triton, interpreted)."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    real = backends.auto_backend_name
    monkeypatch.setattr(backends, "auto_backend_name",
                        lambda device: real(CUDA) if device.type == "cpu" else real(device))
    monkeypatch.setattr(backends, "_capability", lambda device: (9, 0))
    assert backends.resolve_backend("auto", torch.device("cpu")).name == "triton"


def _break(monkeypatch, method, err=None):
    """Make the Triton backend's ``method`` fail as a kernel that does not compile."""
    calls = []

    def broken(*args, **kwargs):
        calls.append(method)
        raise err if err is not None else RuntimeError("PassManager::run failed (forced)")
    monkeypatch.setattr(type(hgrn_core.get_backend("triton")), method, broken)
    return calls


def _inputs(seed=0, B=2, N=7, d=3):
    g = torch.Generator().manual_seed(seed)
    proj = torch.randn(B, N, 3 * d, generator=g, dtype=torch.float64)
    lb = 0.5 * torch.rand(d, generator=g, dtype=torch.float64)
    tf = torch.randn(d, generator=g, dtype=torch.float64)
    tr = torch.randn(d, generator=g, dtype=torch.float64)
    return proj, lb, tf, tr


def _fallback_warnings(record):
    return [w for w in record if issubclass(w.category, RuntimeWarning)
            and "Triton kernel failed" in str(w.message)]


# ---------------------------------------------------------------------- which GPUs get Triton
@pytest.mark.parametrize("capability, chosen", [((7, 0), "torch"), ((7, 5), "torch"),
                                                ((8, 0), "triton"), ((8, 9), "triton"),
                                                ((9, 0), "triton"), ((12, 0), "triton")])
def test_auto_chooses_triton_only_from_sm80(monkeypatch, fresh_state, caplog, capability, chosen):
    monkeypatch.setattr(backends, "triton_version", lambda: "3.6.0")
    monkeypatch.setattr(backends, "_capability", lambda device: capability)
    with caplog.at_level(logging.INFO, logger="hgrn"):
        assert backends.auto_backend_name(CUDA) == chosen
        backends.auto_backend_name(CUDA)  # asked again: no second line
    lines = [r.getMessage() for r in caplog.records if r.name == "hgrn"]
    if chosen == "torch":
        assert len(lines) == 1
        assert f"compute capability {capability[0]}.{capability[1]} is below 8.0" in lines[0]
        assert "torch backend" in lines[0]
    else:
        assert lines == []


def test_auto_keeps_triton_off_rocm_and_old_triton(monkeypatch, fresh_state, caplog):
    monkeypatch.setattr(backends, "_capability", lambda device: (9, 0))
    monkeypatch.setattr(backends, "triton_version", lambda: "3.6.0")
    monkeypatch.setattr(torch.version, "hip", "6.2.0", raising=False)
    with caplog.at_level(logging.INFO, logger="hgrn"):
        assert backends.auto_backend_name(CUDA) == "torch"
    assert "ROCm" in caplog.records[-1].getMessage()
    monkeypatch.setattr(torch.version, "hip", None, raising=False)
    monkeypatch.setattr(backends, "triton_version", lambda: "3.3.1")
    with caplog.at_level(logging.INFO, logger="hgrn"):
        assert backends.auto_backend_name(CUDA) == "torch"
    assert "triton >= 3.6 is not installed (found 3.3.1)" in caplog.records[-1].getMessage()


# ------------------------------------------------------------------------ failures under auto
@pytest.mark.parametrize("direction", ["both", "forward"])
def test_failed_forward_kernel_falls_back_to_torch_with_one_warning(monkeypatch, gpu_like,
                                                                     direction):
    calls = _break(monkeypatch, "hgru_forward")
    proj, lb, tf, tr = _inputs()
    want = hgru(proj, lb, tf, tr, direction=direction, backend="torch")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        got = hgru(proj, lb, tf, tr, direction=direction)           # auto: fails, falls back
        again = hgru(proj, lb, tf, tr, direction=direction)         # auto now picks torch
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.testing.assert_close(again, want, rtol=0, atol=0)
    assert calls == ["hgru_forward"]
    [w] = _fallback_warnings(record)
    text = str(w.message)
    assert "RuntimeError: PassManager::run failed (forced)" in text
    assert "HGRN_BACKEND=torch" in text and "torch backend" in text
    assert backends.auto_backend_name(CUDA) == "torch"


def test_failed_backward_kernel_falls_back_and_gives_torch_gradients(monkeypatch, gpu_like):
    proj, lb, tf, tr = _inputs(1)
    grads = {}
    for name in ("torch", "auto"):
        if name == "auto":
            calls = _break(monkeypatch, "hgru_backward")
        leaves = [t.clone().requires_grad_() for t in (proj, lb, tf, tr)]
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            h = hgru(*leaves, direction="both", backend=name)   # auto: the Triton forward runs
            h.square().sum().backward()
        grads[name] = [t.grad for t in leaves]
    assert calls == ["hgru_backward"]
    assert len(_fallback_warnings(record)) == 1
    for got, want in zip(grads["auto"], grads["torch"]):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_failed_norm_gate_kernel_falls_back(monkeypatch, gpu_like):
    calls = _break(monkeypatch, "norm_gate_forward")
    h, gate = torch.randn(2, 5, 6, dtype=torch.float64), torch.randn(2, 5, 6, dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="Triton kernel failed.*HGRN_BACKEND"):
        got = norm_gate(h, gate)
    torch.testing.assert_close(got, norm_gate(h, gate, backend="torch"), rtol=0, atol=0)
    assert calls == ["norm_gate_forward"]


def test_the_op_as_torchscript_calls_it_falls_back(monkeypatch, gpu_like):
    _break(monkeypatch, "hgru_forward")
    proj, lb, tf, tr = _inputs(2)
    with pytest.warns(RuntimeWarning, match="Triton kernel failed"):
        h, _ = torch.ops.hgrn.hgru(proj, lb, tf, tr, None, "both", "auto")
    torch.testing.assert_close(h, hgru(proj, lb, tf, tr, backend="torch"), rtol=0, atol=0)


def test_a_model_under_auto_survives_a_failing_kernel(monkeypatch, gpu_like):
    import timm
    import hgrn_vision  # noqa: F401
    torch.manual_seed(0)
    kw = dict(img_size=28, patch_size=14, embed_dim=12, depth=1, num_classes=3)
    model = timm.create_model("hgrn_deit_tiny", **kw).double()
    twin = timm.create_model("hgrn_deit_tiny", mixer_backend="torch", **kw).double()
    twin.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 28, 28, dtype=torch.float64)
    _break(monkeypatch, "hgru_forward")
    with pytest.warns(RuntimeWarning, match="Triton kernel failed"):
        out = model(x)
    torch.testing.assert_close(out, twin(x), rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------- what must still raise
def test_an_explicit_triton_still_raises(monkeypatch, gpu_like):
    _break(monkeypatch, "hgru_forward")
    proj, lb, tf, tr = _inputs()
    with pytest.raises(RuntimeError, match="forced"):
        hgru(proj, lb, tf, tr, backend="triton")
    monkeypatch.setenv(backends.ENV_VAR, "triton")
    with pytest.raises(RuntimeError, match="forced"):
        hgru(proj, lb, tf, tr)                      # HGRN_BACKEND=triton is explicit too
    assert "triton" not in backends._failed


@pytest.mark.parametrize("err", [ValueError("h0 must be (2, 6)"), torch.OutOfMemoryError("oom")])
def test_input_errors_and_out_of_memory_are_not_kernel_failures(monkeypatch, gpu_like, err):
    _break(monkeypatch, "hgru_forward", err)
    proj, lb, tf, tr = _inputs()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        with pytest.raises(type(err), match=re.escape(str(err))):
            hgru(proj, lb, tf, tr)
    assert "triton" not in backends._failed


def test_resolving_auto_reads_the_package_metadata_once(monkeypatch, fresh_state):
    # the ops resolve "auto" on every call; a metadata scan each time cost ~1 ms per op on a GPU
    # machine with a few hundred packages (measured on an H200: 4 lookups per layer)
    import importlib.metadata
    lookups = []
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version",
                        lambda name: lookups.append(name) or real(name))
    backends.triton_version.cache_clear()
    monkeypatch.setattr(backends, "_capability", lambda device: (9, 0))
    try:
        for _ in range(50):
            backends.auto_backend_name(CUDA)
            backends.resolve_backend("auto", torch.device("cpu"))
        assert len(lookups) <= 2          # "triton", then "pytorch-triton" if the first is absent
    finally:
        backends.triton_version.cache_clear()
