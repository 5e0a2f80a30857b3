"""The CPU recurrence report (hgrn-benchmark --report cpu-recurrence): ratios and verdicts
computed from the measured steps, every case interleaved per round, and the markdown."""
from __future__ import annotations

import pytest

try:  # installed: tools/ is the package hgrn_tools
    from hgrn_tools.measure import benchmark, cpu_recurrence as cr
except ImportError:  # a checkout
    from tools.measure import benchmark, cpu_recurrence as cr


def _rec(column, size, batch, mode, min_ms, status="ok"):
    return dict(column=column, img_size=size, batch_size=batch, mode=mode, status=status,
                min_ms=min_ms, median_ms=min_ms * 1.1)


def test_rows_take_the_fastest_step_and_compare_with_the_twin():
    points = ((224, 32, "infer", 0.9), (224, 8, "train", 0.85))
    raw = [_rec("hgrn", 224, 32, "infer", 110.0), _rec("hgrn", 224, 32, "infer", 100.0),
           _rec("twin", 224, 32, "infer", 95.0), _rec("twin", 224, 32, "infer", 80.0),
           _rec("deit", 224, 32, "infer", 50.0), _rec("hgrn_torch", 224, 32, "infer", 200.0),
           _rec("hgrn", 224, 8, "train", 10.0, status="error"),
           _rec("twin", 224, 8, "train", 8.0), _rec("deit", 224, 8, "train", 5.0)]
    fwd, train = cr.rows_from(raw, points)
    assert fwd["hgrn"]["ms"] == 100.0 and fwd["twin"]["ms"] == 80.0    # the fastest round
    assert fwd["hgrn"]["img_per_s"] == pytest.approx(320.0)
    assert fwd["hgrn/twin"] == pytest.approx(0.8)                      # speed: 80 / 100
    assert fwd["hgrn_torch/twin"] == pytest.approx(0.4)
    assert fwd["hgrn/deit"] == pytest.approx(0.5)
    assert fwd["status"] == "falls short"                              # 0.8 < 0.9
    assert train["hgrn"] is None and train["status"] == "not measured"  # its case failed
    raw.append(_rec("hgrn", 224, 8, "train", 9.0))
    assert cr.rows_from(raw, points)[1]["status"] == "holds"           # 8 / 9 >= 0.85


def test_measure_interleaves_every_case_and_renders(monkeypatch):
    """Tiny size, in-process: every column of every point in each round, in order."""
    calls = []

    def fake(case, timeout):
        calls.append((case["model"], case.get("backend"), case["img_size"], case["mode"]))
        return benchmark.run_case(case)

    monkeypatch.setattr(benchmark, "run_case_subprocess", fake)
    points = ((56, 1, "infer", 0.9), (56, 1, "train", 0.85))
    res = cr.measure(rounds=2, threads=1, warmup=0, iters=1, points=points)
    per_round = [(m, b, 56, mode) for _, _, mode, _ in points for m, b in cr.COLUMNS.values()]
    assert calls == per_round * 2
    rows = res["rows"]
    assert all(r[c] is not None and r[c]["rounds"] == 2 for r in rows for c in cr.COLUMNS)
    for r in rows:
        assert r["hgrn/twin"] == pytest.approx(r["twin"]["ms"] / r["hgrn"]["ms"])
        assert r["status"] == ("holds" if r["hgrn/twin"] >= r["goal"] else "falls short")
    env = dict(cpu="cpu", threads=1, torch="t", timm="t", backend=cr.auto_backend_name(),
               commit="abc", date="today", rounds=2, warmup=0, iters=1)
    md = cr.format_markdown(dict(columns=list(cr.COLUMNS), env=env, **res))
    assert f"hgrn ({env['backend']}) img/s" in md and "| forward, 56 px, batch 1 |" in md
    assert md.count("\n| training step, 56 px, batch 1 |") == 1
