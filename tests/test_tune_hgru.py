"""hgrn-benchmark --report tune-hgru: the launch-configuration sweep of the fused HGRU
kernel, run on the CPU in Triton's interpreter (tests/conftest.py) with tiny shapes."""
import dataclasses
import json

import pytest
import torch

pytest.importorskip("triton", minversion="3.6")

try:  # installed: tools/ is the package hgrn_tools
    from hgrn_tools.measure import tune_hgru
except ImportError:  # a checkout
    from tools.measure import tune_hgru

from hgrn_core.kernels import triton_hgru  # noqa: E402

CPU = torch.device("cpu")
SMALL = dataclasses.replace(tune_hgru.PLANS["cpu-smoke"], prefetch=(False,))


def test_every_configuration_agrees_and_the_best_is_the_fastest():
    result = tune_hgru.sweep(SMALL, CPU, log=lambda s: None)
    rows = result["rows"]
    assert len(rows) == 2 * len(tune_hgru.configs(SMALL))  # both passes
    assert all(r["status"] == "ok" and r["disagreement"] < 1e-2 for r in rows), rows
    for best in result["best"]:
        same = [r for r in rows if r["pass_"] == best["pass_"] and r["shape"] == best["shape"]]
        assert best["ms"] == min(r["ms"] for r in same)
    assert {b["pass_"] for b in result["best"]} == {"forward", "backward"}


def test_a_configuration_that_disagrees_is_reported_and_never_chosen(monkeypatch):
    real_forward = triton_hgru.hgru_forward

    def wrong_at_block_t_2(*args):
        h, hN = real_forward(*args)
        if triton_hgru._OVERRIDE.get("fwd_block_t") == 2:
            h = h + 1
        return h, hN
    monkeypatch.setattr(triton_hgru, "hgru_forward", wrong_at_block_t_2)
    result = tune_hgru.sweep(SMALL, CPU, log=lambda s: None)
    fwd = [r for r in result["rows"] if r["pass_"] == "forward"]
    assert [r["status"] for r in fwd] == ["mismatch", "ok"]  # block_t 2, then 4
    (best_fwd,) = [b for b in result["best"] if b["pass_"] == "forward"]
    assert best_fwd["config"]["block_t"] == 4
    assert "MISMATCH" in tune_hgru.format_markdown(result)


def test_budget_and_cli(tmp_path, capsys):
    result = tune_hgru.sweep(dataclasses.replace(SMALL, budget_s=0.0), CPU, log=lambda s: None)
    assert {r["status"] for r in result["rows"]} == {"skipped (budget)"} and result["best"] == []
    if not torch.cuda.is_available():
        assert tune_hgru.main([str(tmp_path / "x")]) == 2
        assert "needs a CUDA GPU" in capsys.readouterr().err
    partial = []
    tune_hgru.sweep(dataclasses.replace(SMALL, block_t=(2,)), CPU, log=lambda s: None,
                    checkpoint=lambda r: partial.append(len(r["rows"])))
    assert partial == [1, 2]  # after every row: forward, then backward
    assert tune_hgru.main([str(tmp_path / "out"), "--cpu-smoke", "--budget", "0"]) == 0
    data = json.loads((tmp_path / "out" / "tune_hgru.json").read_text())
    assert data["plan"]["name"] == "cpu-smoke" and data["rows"]
    assert (tmp_path / "out" / "tune_hgru.md").read_text().startswith("# hgrn::hgru launch")
