"""The CPU recurrence report (hgrn-benchmark --report cpu-recurrence): ratios and verdicts
computed from the measured steps, every model timed in every round in rotated order, the
worker process, and the markdown."""
from __future__ import annotations

import pytest

try:  # installed: tools/ is the package hgrn_tools
    from hgrn_tools.measure import benchmark, cpu_recurrence as cr
except ImportError:  # a checkout
    from tools.measure import benchmark, cpu_recurrence as cr


def test_rows_take_the_fastest_step_and_compare_with_the_twin():
    points = ((224, 32, "infer", 0.9), (224, 8, "train", 0.85))
    raw = [dict(img_size=224, batch=32, mode="infer",
                times={"hgrn": [110.0, 100.0, 130.0], "twin": [95.0, 80.0, 90.0],
                       "deit": [50.0, 60.0, 55.0], "hgrn_torch": [200.0, 210.0, 250.0]}),
           dict(img_size=224, batch=8, mode="train", error="worker exited with 1: boom")]
    fwd, train = cr.rows_from(raw, points)
    assert fwd["hgrn"]["ms"] == 100.0 and fwd["twin"]["ms"] == 80.0    # the fastest step
    assert fwd["hgrn"]["median_ms"] == 110.0
    assert fwd["hgrn"]["img_per_s"] == pytest.approx(320.0)
    assert fwd["hgrn/twin"] == pytest.approx(0.8)                      # speed: 80 / 100
    assert fwd["hgrn/twin paired"] == pytest.approx(0.8)              # median of .86 .8 .69
    assert fwd["hgrn_torch/twin"] == pytest.approx(0.4)
    assert fwd["hgrn/deit"] == pytest.approx(0.5)
    assert fwd["status"] == "falls short"                              # 0.8 < 0.9
    assert train["hgrn"] is None and train["status"] == "not measured (worker exited with 1: boom)"
    raw[1] = dict(img_size=224, batch=8, mode="train", times={"hgrn": [9.0], "twin": [8.0]})
    assert cr.rows_from(raw, points)[1]["status"] == "holds"           # 8 / 9 >= 0.85


def test_every_round_times_every_model_in_rotated_order(monkeypatch):
    import importlib
    import types
    factory = importlib.import_module(cr.__package__.rsplit(".", 1)[0] + ".model_factory")
    order = []
    monkeypatch.setattr(cr, "COLUMNS", {"a": ("A", None), "b": ("B", None), "c": ("C", None)})
    monkeypatch.setattr(factory, "create_model",
                        lambda name, size, backend: types.SimpleNamespace(tag=name))
    monkeypatch.setattr(benchmark, "build_step",
                        lambda model, x, mode, *a, **k: (lambda: order.append(model.tag)))
    times = cr.time_point(56, 1, "infer", ["a", "b", "c"], rounds=3, warmup=1, threads=1)
    assert order == ["A", "B", "C"] + ["A", "B", "C", "B", "C", "A", "C", "A", "B"]
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3, "c": 3}


def test_the_worker_measures_a_tiny_point_and_the_report_renders():
    """The real models at 56 px in a fresh process (the worker), then the markdown."""
    points = ((56, 1, "infer", 0.9),)
    res = cr.measure(rounds=2, threads=1, warmup=1, points=points, timeout=300)
    (row,) = res["rows"]
    assert "error" not in res["raw"][0], res["raw"][0]
    assert all(row[c] is not None and row[c]["ms"] > 0 for c in cr.COLUMNS)
    assert row["hgrn/twin"] == pytest.approx(row["twin"]["ms"] / row["hgrn"]["ms"])
    assert row["status"] == ("holds" if row["hgrn/twin"] >= 0.9 else "falls short")
    env = dict(cpu="cpu", threads=1, torch="t", timm="t", backend=cr.auto_backend_name(),
               commit="abc", date="today", rounds=2, warmup=1)
    md = cr.format_markdown(dict(columns=list(cr.COLUMNS), env=env, **res))
    assert f"hgrn ({env['backend']}) img/s" in md and "| forward, 56 px, batch 1 |" in md
