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
