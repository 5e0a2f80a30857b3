"""The host-overhead tool (tools/measure/host_overhead.py) runs on the CPU, GPU simulated."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_host_overhead_tool_runs_on_the_cpu(tmp_path):
    pytest.importorskip("triton", minversion="3.6")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    out = tmp_path / "host.json"
    run = subprocess.run([sys.executable, "-m", "tools.measure.host_overhead", "--device", "cpu",
                          "--iters", "3", "--repeat", "1", "--shape", "2", "16", "8",
                          "--json", str(out)], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = dict(json.load(open(out))["rows"])
    assert "hgru  torch.ops.hgrn.hgru(..., 'auto')" in rows
    assert any(name.startswith("triton _hgru_fwd_kernel") for name in rows)
    assert all(us > 0 for us in rows.values())


# ------------------------------------------------------------- what the host-time cuts keep
# The Triton wrappers keep launch configurations per (B, N, d, device, pass, segmented, GPU or
# not, config file): a cached configuration must never be served where another applies.
triton_only = pytest.mark.skipif(
    not __import__("hgrn_core").backends.triton_usable(), reason="needs triton >= 3.6")


@pytest.fixture
def fresh_configs(monkeypatch):
    import torch
    if torch.cuda.is_available():
        pytest.skip("simulates a GPU on the CPU")
    pytest.importorskip("triton", minversion="3.6")
    from hgrn_core.kernels import triton_hgru
    monkeypatch.setattr(triton_hgru, "_CONFIGS", {})
    return triton_hgru


@triton_only
def test_launch_configs_are_kept_per_key_and_forced_parameters_bypass_them(fresh_configs):
    import torch
    th = fresh_configs
    cpu = torch.device("cpu")
    a = th._launch_config(2, 40, 6, cpu, False)
    assert th._launch_config(2, 40, 6, cpu, False) is a           # cached
    for other in [(3, 40, 6, cpu, False), (2, 41, 6, cpu, False), (2, 40, 7, cpu, False),
                  (2, 40, 6, cpu, True)]:
        got = th._launch_config(*other)
        assert got is not a
        assert vars(got) == vars(th._Cfg(*other))
    with th.override_config(block_t=2, segments=3):
        forced = th._launch_config(2, 40, 6, cpu, False)
        assert forced.block_t == 2 and forced.n_seg == 3
    assert th._launch_config(2, 40, 6, cpu, False) is a and a.block_t != 2
    assert vars(th._launch_config(2, 40, 6, cpu, False, segmented=False)) == vars(
        th._Cfg(2, 40, 6, cpu, False, segmented=False))


@triton_only
def test_gpu_launch_configs_follow_the_device_and_the_config_file(fresh_configs, monkeypatch,
                                                                  tmp_path):
    import types
    import torch
    th = fresh_configs
    cuda = torch.device("cuda", 0)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)   # the GPU's configurations
    monkeypatch.delenv("HGRN_HGRU_CONFIG", raising=False)
    sms = {"n": 132}
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None:
                        types.SimpleNamespace(multi_processor_count=sms["n"]))
    shape = (8, 16384, 384)
    h100 = th._launch_config(*shape, cuda, False)
    assert h100.on_gpu and h100.block_t == 8 and h100.n_seg == 22   # 8 warps x 132 SMs / 48
    sms["n"] = 108                  # another GPU in the same process: offline_compile's fakes
    assert th._launch_config(*shape, cuda, False) is h100           # (they clear the cache)
    th.clear_launch_configs()
    assert th._launch_config(*shape, cuda, False).n_seg == 18
    cfg_file = tmp_path / "tune.json"
    cfg_file.write_text('{"forward": {"block_t": 16}}')
    monkeypatch.setenv("HGRN_HGRU_CONFIG", str(cfg_file))
    assert th._launch_config(*shape, cuda, False).block_t == 16
    cfg_file.write_text('{"forward": {"block_t": 4}}')
    os.utime(cfg_file, (1, 1))                                      # a new mtime: re-read
    assert th._launch_config(*shape, cuda, False).block_t == 4
    monkeypatch.delenv("HGRN_HGRU_CONFIG")
    assert th._launch_config(*shape, cuda, False).block_t == 8
    monkeypatch.setenv("TRITON_INTERPRET", "1")                      # interpreted: its config
    assert not th._launch_config(*shape, cuda, False).on_gpu


@triton_only
def test_offline_compile_fake_gpus_do_not_share_launch_configs(fresh_configs):
    import torch
    from hgrn_core.kernels.offline_compile import fake_gpu
    th = fresh_configs
    got = {}
    for arch in (80, 90, 80):
        with fake_gpu(arch):
            got.setdefault(arch, []).append(
                th._launch_config(8, 16384, 384, torch.device("cuda", 0), False).n_seg)
    assert got == {80: [18, 18], 90: [22]}


@triton_only
@pytest.mark.parametrize("direction", ["both", "forward", "reverse"])
def test_wrappers_with_hot_caches_match_the_torch_backend(direction):
    """Calls that share a cached configuration (same B, N, d) but differ in dtype, strides,
    direction, lower bound and initial state each give the torch backend's result."""
    import torch
    import hgrn_core
    g = torch.Generator().manual_seed(3)
    B, N, d = 2, 9, 3
    wide = torch.randn(B, N, 3 * d + 5, generator=g, dtype=torch.float64)
    cases = []
    for dtype in (torch.float64, torch.float32):
        for strided in (False, True):
            proj = wide[..., 2:2 + 3 * d] if strided else wide[..., :3 * d].contiguous()
            proj = proj.to(dtype) if dtype != torch.float64 else proj
            for lb in (None, torch.rand(d, generator=g, dtype=torch.float64)):
                cases.append((proj, lb))
    tf, tr = (torch.randn(d, generator=g, dtype=torch.float64) for _ in range(2))
    h0 = None if direction == "both" else torch.randn(B, 2 * d, generator=g,
                                                      dtype=torch.float64)
    triton, torch_ = (hgrn_core.get_backend(n) for n in ("triton", "torch"))
    for _ in range(2):  # the second round runs on the caches the first filled
        for proj, lb in cases:
            got = triton.hgru_forward(proj, lb, tf, tr, h0, direction)
            want = torch_.hgru_forward(proj, lb, tf, tr, h0, direction)
            tol = 1e-10 if proj.dtype == torch.float64 else 2e-5
            torch.testing.assert_close(got[0], want[0].to(proj.dtype), rtol=tol, atol=tol)
            if direction != "both":
                torch.testing.assert_close(got[1], want[1].to(got[1].dtype), rtol=tol,
                                           atol=tol)


def test_backward_op_outputs_are_what_the_fake_grads_describe():
    """hgru_backward's outputs (dtype, shape, zeros for None, placeholders for absent
    inputs) as out_like(g, _fake_grads(...)) gave them before the host-time cut."""
    import torch
    from hgrn_core.hgru_op import _fake_grads, _grads_out
    from hgrn_core.ops import out_like
    proj = torch.randn(2, 5, 9, dtype=torch.bfloat16)
    lb, tf = torch.rand(3), torch.randn(3, dtype=torch.float64)
    h0 = torch.randn(2, 6)
    grads = [torch.randn(2, 5, 9), None, torch.randn(3), None, torch.randn(2, 6).double()]
    inputs = (lb, tf, None, h0)
    want = [out_like(g, like) for g, like in zip(grads, _fake_grads(proj, *inputs))]
    got = _grads_out(grads, proj, inputs)
    for x, y in zip(got, want):
        assert x.dtype == y.dtype and x.shape == y.shape and x.device == y.device
        assert x.is_contiguous() and x._base is None
        torch.testing.assert_close(x, y, rtol=0, atol=0)
