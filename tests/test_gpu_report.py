"""The GPU report (hgrn-benchmark --report gpu) on the CPU: goal evaluation, the table /
markdown / JSON / CSV it writes (from fake measurements, read back), the exit without
CUDA, and its measurement helpers run on tiny CPU shapes."""
from __future__ import annotations

import csv
import dataclasses
import json

import pytest
import torch

try:  # installed: tools/ is the package hgrn_tools
    from hgrn_tools.measure import benchmark, gpu_report
except ImportError:  # a checkout
    from tools.measure import benchmark, gpu_report

FULL = gpu_report.PLANS["full"]


def _model(label, size, batch, mode, img_per_s=None, peak=None, status="ok", error=""):
    return dict(label=label, model=gpu_report.MODELS[label][0], img_size=size,
                side=gpu_report.side_for(label, size), tokens=gpu_report.tokens_for(label, size),
                batch=batch, mode=mode, status=status, error=error, img_per_s=img_per_s,
                median_ms=None if img_per_s is None else batch / img_per_s * 1e3,
                peak_mem_mib=peak)


def fake_measurements():
    """Numbers chosen so that each goal's outcome is known: see test_goal_rows."""
    models = [
        _model("hgrn_deit_small", 224, 256, "infer", 15000.0, 3000.0),
        _model("hgrn_deit_small", 224, 256, "train", 4000.0, 14000.0),
        _model("deit_small_p14", 224, 256, "infer", 14000.0, 2500.0),
        _model("deit_small_p14", 224, 256, "train", 4300.0, 10000.0),       # 0.93x: short
        _model("deit_small_patch16_224", 224, 256, "infer", 18000.0, 2000.0),
        _model("deit_small_patch16_224", 224, 256, "train", 5000.0, 9000.0),  # 0.80x: holds
        _model("hgrn_deit_tiny", 896, 8, "infer", 3000.0),
        _model("hgrn_deit_tiny", 896, 8, "train", 900.0),
        _model("deit_tiny_patch16_224", 896, 8, "infer", 1300.0),            # 2.31x: holds
        _model("deit_tiny_patch16_224", 896, 8, "train", 500.0),             # 1.8x: short
        _model("hgrn_deit_tiny", 1248, 8, "infer", 1500.0),
        _model("hgrn_deit_tiny", 1248, 8, "train", status="oom", error="OutOfMemoryError: x"),
        _model("deit_tiny_patch16_224", 1248, 8, "infer", 400.0),            # 3.75x: holds
        _model("deit_tiny_patch16_224", 1248, 8, "train", 120.0),
    ]
    copy = 3000.0
    bw = []
    for shape, fwd, fb in (((256, 256, 384), 2000.0, 1500.0), ((8, 16384, 384), 1500.0, 1000.0)):
        for passes, gbs in (("forward", fwd), ("forward+backward", fb)):
            B, N, d = shape
            nbytes = (5 if passes == "forward" else 13) * d * B * N * 2
            bw.append(dict(shape=list(shape), passes=passes, impl="hgrn::hgru", status="ok",
                           error="", min_bytes=nbytes, ms=nbytes / gbs / 1e6, gb_per_s=gbs,
                           copy_gb_per_s=copy, fraction_of_copy=gbs / copy))
    fla = []
    for shape in FULL.fla_shapes:
        for passes in ("forward", "forward+backward"):
            for impl, ms in (("ours", 0.2), ("fla_chunk", 0.25), ("fla_fused_recurrent", 0.3)):
                if shape == (8, 16384, 384) and passes == "forward+backward" and impl == "ours":
                    ms = 0.5  # slower than both fla kernels
                fla.append(dict(shape=list(shape), passes=passes, impl=impl, dtype="bfloat16",
                                status="ok", error="", ms=ms))
    sweep = [_model(label, size, FULL.sweep_batch(size), mode, 100.0 * (2 if "hgrn" in label else 1),
                    500.0)
             for size in FULL.sweep_sizes
             for _, h, d in gpu_report.SWEEP_PAIRS for label in (h, d) for mode in ("infer", "train")]
    sweep[-1] = dict(sweep[-1], status="oom", error="OutOfMemoryError: y", img_per_s=None)
    return {
        "plan": dataclasses.asdict(FULL), "backend": "auto", "duration_s": 321.0,
        "env": {"device": "NVIDIA H100 80GB HBM3", "device_memory_gib": 79.1, "sm_count": 132,
                "capability": "9.0", "torch": "2.11.0", "cuda": "13.0", "triton": "3.6.0",
                "timm": "1.0.31", "fvcore": "not installed", "fla": "0.6.0",
                "date": "2026-11-27 10:00:00 UTC", "commit": "abc1234", "python": "3.11.7"},
        "tests": {"status": "ok", "files": ["tests/test_triton_backend.py"], "passed": 40,
                  "failed": 0, "errors": 0, "skipped": 2, "seconds": 55.0, "timed_out": False,
                  "command": "pytest -q -x tests/test_triton_backend.py", "tail": "40 passed"},
        "models": models, "copy": {"gb_per_s": copy, "bytes": 1 << 30}, "hgru_bandwidth": bw,
        "real_vs_fla": fla, "fla_note": None, "sweep": sweep, "phases_s": {"tests": 55.0},
    }


def _by(rows, goal_part, cond_part=""):
    """The one row whose goal contains goal_part and whose condition contains cond_part
    (a trailing '$' in cond_part: the condition ends there)."""
    if cond_part.endswith("$"):
        found = [r for r in rows if goal_part in r["goal"] and r["condition"].endswith(cond_part[:-1])]
    else:
        found = [r for r in rows if goal_part in r["goal"] and cond_part in r["condition"]]
    assert len(found) == 1, (goal_part, cond_part, [(r["goal"], r["condition"]) for r in rows])
    return found[0]


def test_goal_rows():
    rows = gpu_report.evaluate_goals(fake_measurements())
    # one row per goal and condition: tests, 4 small-model, 4 tiny, 4 bandwidth, 6 fla
    assert len(rows) == 1 + 4 + 4 + 4 + 6
    assert _by(rows, "GPU tests")["status"] == "holds"
    r = _by(rows, "training img/s vs deit_small at patch 14")
    assert r["measured"] == pytest.approx(4000 / 4300) and r["status"] == "falls short"
    assert r["target"] == 1.0 and "0.93x" in r["measured_text"]
    r = _by(rows, "training img/s vs deit_small_patch16_224")
    assert r["measured"] == pytest.approx(0.8) and r["status"] == "holds"  # >= is inclusive
    assert "[224 / 224 px]" not in r["measured_text"]
    assert _by(rows, "inference img/s vs deit_small at patch 14")["status"] == "holds"
    r = _by(rows, "peak training memory")
    assert r["measured"] == pytest.approx(1.4) and r["status"] == "falls short"  # lower is better
    assert r["target_text"] == "<= 1.3x"
    assert _by(rows, "tiny inference", "896 px")["status"] == "holds"
    assert _by(rows, "tiny training", "896 px")["status"] == "falls short"
    r = _by(rows, "tiny inference", "1248 px")
    assert r["status"] == "holds" and "[1246 / 1248 px]" in r["measured_text"]
    r = _by(rows, "tiny training", "1248 px")
    assert r["status"] == "not measured" and "oom" in r["measured_text"]
    r = _by(rows, "bandwidth", "(256, 256, 384) bf16, bidirectional, forward+")
    assert r["measured"] == pytest.approx(0.5) and r["status"] == "holds"
    r = _by(rows, "bandwidth", "(8, 16384, 384) bf16, bidirectional, forward+")
    assert r["status"] == "falls short"  # 1000 / 3000 GB/s < 40%
    assert _by(rows, "bandwidth", "(256, 256, 384) bf16, bidirectional, forward$")["status"] == "holds"
    r = _by(rows, "fla", "(128, 256, 384) bf16, forward$")
    assert r["measured"] == pytest.approx(0.25 / 0.2) and r["status"] == "holds"
    r = _by(rows, "fla", "(8, 16384, 384) bf16, forward+backward")
    assert r["measured"] == pytest.approx(0.25 / 0.5) and r["status"] == "falls short"


def test_2d_models_are_information_rows_only(tmp_path):
    """hgrn2d_deit_small beside hgrn_deit_small (224 px, batch 256) and hgrn2d_deit_tiny
    beside hgrn_deit_tiny (896 / 1248 px): in the models table, in no goal."""
    assert gpu_report.info_model_points(FULL) == [
        ("hgrn2d_deit_small", 224, 256), ("hgrn2d_deit_tiny", 896, 8), ("hgrn2d_deit_tiny", 1248, 8)]
    assert not [p for p in gpu_report.goal_model_points(FULL) if p[0].startswith("hgrn2d")]
    m = fake_measurements()
    base_goals = gpu_report.evaluate_goals(m)
    m["models"] += [_model("hgrn2d_deit_small", 224, 256, "infer", 9000.0, 3500.0),
                    _model("hgrn2d_deit_small", 224, 256, "train", 2500.0, 16000.0),
                    _model("hgrn2d_deit_tiny", 896, 8, "infer", 1000.0),
                    _model("hgrn2d_deit_tiny", 896, 8, "train", 300.0),
                    _model("hgrn2d_deit_tiny", 1248, 8, "infer", status="skipped",
                           error="time budget (330 s) spent")]
    report = gpu_report.build_report(m)
    assert report["goals"] == base_goals  # the same goal rows, the same outcomes
    assert not [g for g in report["goals"] if "hgrn2d" in g["goal"] + g["measured_text"]]
    md = open(gpu_report.write_report(report, str(tmp_path))[0]).read()
    rows = [ln for ln in md.splitlines() if ln.startswith("| hgrn2d_deit_")]
    assert len(rows) == 5 and all("information, no goal" in ln for ln in rows)
    assert "| 224 (224) | 256 | 256 | train | 2,500.0 |" in md
    assert rows[-1].rstrip(" |").endswith("skipped: time budget (330 s) spent")
    assert gpu_report.format_text(report).splitlines()[-1] == "12 hold, 6 fall short, 1 not measured"


def test_information_rows_wait_for_the_budget(monkeypatch):
    """With the budget spent, the goal points are still measured and the information rows
    are recorded as skipped (the sweep likewise)."""
    calls = []

    def fake_model(label, size, batch, modes, warmup, iters, device, backend=None):
        calls.append(label)
        return [_model(label, size, batch, mode, 10.0) for mode in modes]
    monkeypatch.setattr(gpu_report, "measure_model", fake_model)
    plan = dataclasses.replace(gpu_report.PLANS["cpu-smoke"], budget_s=0.0)
    m = gpu_report.collect(plan, torch.device("cpu"), run_tests=False)
    goal = gpu_report.goal_model_points(plan)
    assert calls == [label for label, _, _ in goal]
    info = [r for r in m["models"] if r["label"].startswith("hgrn2d")]
    assert len(info) == 2 * len(gpu_report.info_model_points(plan))
    assert all(r["status"] == "skipped" and "budget" in r["error"] for r in info)
    assert all(r["status"] == "ok" for r in m["models"] if not r["label"].startswith("hgrn2d"))


def test_missing_pieces_are_not_measured():
    m = fake_measurements()
    m["tests"] = {"status": "ok", "passed": 3, "failed": 1, "errors": 0, "seconds": 1.0}
    m["real_vs_fla"] = [r for r in m["real_vs_fla"] if r["impl"] == "ours"]
    m["fla_note"] = "fla not installed"
    m["hgru_bandwidth"] = [dict(r, status="error", error="RuntimeError: boom")
                           for r in m["hgru_bandwidth"]]
    rows = gpu_report.evaluate_goals(m)
    assert _by(rows, "GPU tests")["status"] == "falls short"
    fla_rows = [r for r in rows if "fla" in r["goal"]]
    assert len(fla_rows) == 6
    assert all(r["status"] == "not measured" and "fla not installed" in r["measured_text"]
               for r in fla_rows)
    bw = [r for r in rows if "bandwidth" in r["goal"]]
    assert all(r["status"] == "not measured" and "boom" in r["measured_text"] for r in bw)


def test_write_and_read_back(tmp_path):
    report = gpu_report.build_report(fake_measurements())
    text = gpu_report.format_text(report)
    assert "NVIDIA H100 80GB HBM3" in text and "triton 3.6.0" in text and "2026-11-27" in text
    lines = text.splitlines()
    assert lines[-1] == "12 hold, 6 fall short, 1 not measured"
    assert len([ln for ln in lines[:-1] if ln.endswith(("holds", "falls short",
                                                        "not measured"))]) == 19
    paths = gpu_report.write_report(report, str(tmp_path / "out"))
    md, js, sweep_csv = (open(p).read() for p in paths)
    data = json.loads(js)
    assert data["goals"] == json.loads(json.dumps(report["goals"]))
    assert data["measurements"]["models"][0]["img_per_s"] == 15000.0
    goal_lines = [ln for ln in md.splitlines()
                  if ln.startswith("| ") and ln.rstrip(" |").endswith(("holds", "falls short", "not measured"))]
    assert len(goal_lines) == 19
    assert "| hgrn_deit_small peak training memory vs deit_small at patch 14 |" in md
    assert "1.40x (13.7 / 9.8 GiB)" in md
    with open(paths[2]) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(FULL.sweep_sizes) * 4 * 2
    assert rows[-1]["status"] == "oom" and rows[0]["img_per_s"] == "200.0"
    assert {int(r["side"]) for r in rows if r["img_size"] == "1248"} == {1246, 1248}
    # the sweep table: hgrn / deit ratio per size, family and mode
    assert md.count("| 2.00x |") == len(FULL.sweep_sizes) * 4 - 1
    assert sweep_csv.startswith("label,model,img_size")


def test_from_json_rerenders(tmp_path, capsys):
    report = gpu_report.build_report(fake_measurements())
    p1 = gpu_report.write_report(report, str(tmp_path / "a"))
    assert gpu_report.main([str(tmp_path / "b"), "--from-json", p1[1]]) == 0
    out = capsys.readouterr().out
    assert "falls short" in out
    assert json.load(open(tmp_path / "b" / "gpu_report.json"))["goals"] == \
        json.load(open(p1[1]))["goals"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the no-CUDA exit")
def test_no_cuda_exits_nonzero_with_message(tmp_path, capsys):
    assert gpu_report.main([str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "needs a CUDA GPU" in err and "pip install --no-deps -e ." in err
    assert not (tmp_path / "out").exists()
    # through hgrn-benchmark's --report hook
    assert benchmark.main(["--report", "gpu", str(tmp_path / "out"), "--quick"]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
    # the profile report likewise
    assert benchmark.main(["--report", "gpu-profile", str(tmp_path / "out")]) == 2
    assert "gpu-profile needs a CUDA GPU" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_xdist_output_is_counted():
    out = ("8 workers [204 items]\n........................................ [ 19%]\n"
           "....F.\n=== 1 failed, 203 passed in 52.01s ===")
    c = gpu_report.parse_pytest_output(out)
    assert (c["passed"], c["failed"], c["summary"]) == (203, 1, True)


def test_parse_pytest_output():
    out = "....F.s\n=== 1 failed, 5 passed, 1 skipped, 2 warnings in 3.21s ==="
    c = gpu_report.parse_pytest_output(out)
    assert (c["passed"], c["failed"], c["skipped"], c["summary"]) == (5, 1, 1, True)
    c = gpu_report.parse_pytest_output("12 passed in 0.5s")
    assert c["passed"] == 12 and c["failed"] == 0
    c = gpu_report.parse_pytest_output("..s.E....  [ 40%]\n....")  # killed: no summary
    assert (c["passed"], c["skipped"], c["errors"], c["summary"]) == (11, 1, 1, False)


def test_sides_and_sweep_batches():
    assert gpu_report.side_for("hgrn_deit_tiny", 1248) == 1246
    assert gpu_report.side_for("deit_tiny_patch16_224", 1248) == 1248
    assert gpu_report.tokens_for("deit_small_p14", 224) == 256
    assert gpu_report.tokens_for("hgrn_deit_small", 224) == 256
    for size in FULL.sweep_sizes[:-1]:  # every size but 1248 suits both patch sizes
        assert size % 14 == 0 and size % 16 == 0
    batches = [FULL.sweep_batch(s) for s in FULL.sweep_sizes]
    assert batches == sorted(batches, reverse=True) and batches[0] == 64 and batches[-1] >= 1


# ----------------------------------------------------- measurement code, tiny CPU shapes
def test_op_measurements_run_on_cpu():
    """The hgrn::hgru / fla measurement code against the op as it is in the tree."""
    plan = gpu_report.PLANS["cpu-smoke"]
    dev = torch.device("cpu")
    bw = gpu_report.measure_hgru_bandwidth(plan, dev, copy_gbs=10.0)
    assert [r["passes"] for r in bw] == ["forward", "forward+backward"]
    assert all(r["status"] == "ok" for r in bw), bw
    assert bw[1]["min_bytes"] == 13 * 8 * 1 * 8 * 2
    assert bw[0]["fraction_of_copy"] == pytest.approx(bw[0]["gb_per_s"] / 10.0)
    rows, note = gpu_report.measure_real_vs_fla(plan, dev)
    ours = [r for r in rows if r["impl"] == "ours"]
    assert len(ours) == 2 and all(r["status"] == "ok" and r["ms"] > 0 for r in ours), ours


def test_measure_model_on_cpu(monkeypatch):
    monkeypatch.setitem(gpu_report.MODELS, "toy_hgrn",
                        ("hgrn_deit_tiny", {"depth": 1, "num_classes": 10}, 14, "toy"))
    recs = gpu_report.measure_model("toy_hgrn", 28, 2, ("infer", "train"), 1, 2,
                                    torch.device("cpu"))
    assert [r["mode"] for r in recs] == ["infer", "train"]
    assert all(r["status"] == "ok" and r["img_per_s"] > 0 for r in recs), recs
    assert recs[0]["tokens"] == 4 and recs[0]["side"] == 28
    monkeypatch.setitem(gpu_report.MODELS, "toy_bad",
                        ("hgrn_deit_tiny", {"no_such_argument": 1}, 14, "bad"))
    bad = gpu_report.measure_model("toy_bad", 28, 2, ("infer", "train"), 0, 1, torch.device("cpu"))
    assert [r["status"] for r in bad] == ["error", "error"] and "no_such_argument" in bad[0]["error"]
    # the report's diagnostic side (the HGRU without its recurrence) builds and runs
    name, kwargs, patch, _ = gpu_report.MODELS["hgrn_deit_small_no_recurrence"]
    monkeypatch.setitem(gpu_report.MODELS, "toy_no_recurrence",
                        (name, {**kwargs, "depth": 1, "num_classes": 10}, patch, "toy"))
    diag = gpu_report.measure_model("toy_no_recurrence", 28, 2, ("infer",), 0, 1,
                                    torch.device("cpu"))
    assert diag[0]["status"] == "ok", diag
    # the information rows' 2-D model builds and runs (a grid of 2 x 3 patches)
    name, kwargs, patch, _ = gpu_report.MODELS["hgrn2d_deit_tiny"]
    monkeypatch.setitem(gpu_report.MODELS, "toy_2d",
                        (name, {**kwargs, "depth": 1, "num_classes": 10}, patch, "toy"))
    recs = gpu_report.measure_model("toy_2d", 42, 2, ("infer", "train"), 0, 1, torch.device("cpu"))
    assert [r["status"] for r in recs] == ["ok", "ok"] and recs[0]["tokens"] == 9, recs


def test_collect_goes_on_after_a_failed_phase(monkeypatch, tmp_path):
    """collect() with the models faked and the bandwidth phase broken: the error is
    recorded, later phases run, and every phase leaves a readable partial report."""
    def fake_model(label, size, batch, modes, warmup, iters, device, backend=None):
        return [_model(label, size, batch, mode, 10.0) for mode in modes]

    def broken(*a, **k):
        raise RuntimeError("kernel exploded")
    monkeypatch.setattr(gpu_report, "measure_model", fake_model)
    monkeypatch.setattr(gpu_report, "measure_hgru_bandwidth", broken)
    written = []

    def checkpoint(m):
        written.append(gpu_report.write_report(gpu_report.build_report(m), str(tmp_path))[1])
    m = gpu_report.collect(gpu_report.PLANS["cpu-smoke"], torch.device("cpu"), run_tests=False,
                           checkpoint=checkpoint)
    assert list(m["errors"]) == ["hgru_bandwidth"] and "kernel exploded" in m["errors"]["hgru_bandwidth"]
    assert len(written) == 5 and list(m["phases_s"]) == ["tests", "models", "hgru_bandwidth",
                                                         "real_vs_fla", "sweep"]
    smoke = gpu_report.PLANS["cpu-smoke"]
    points = gpu_report.goal_model_points(smoke) + gpu_report.info_model_points(smoke)
    assert len(m["models"]) == 2 * len(points)
    assert all(r["status"] == "ok" for r in m["models"])
    assert m["sweep"] and all(r["status"] == "ok" for r in m["sweep"])
    assert [r["status"] for r in m["real_vs_fla"]] == ["ok", "ok"]
    data = json.load(open(written[-1]))
    assert "kernel exploded" in data["measurements"]["errors"]["hgru_bandwidth"]
    text = gpu_report.format_text(gpu_report.build_report(m))
    assert "phase hgru_bandwidth FAILED: RuntimeError: kernel exploded" in text


def test_run_gpu_tests_counts_and_timeout(tmp_path):
    """The test phase on a stand-in tests folder: counts, -x, and the kill at the timeout."""
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_triton_backend.py").write_text(
        "def test_a():\n    pass\n\ndef test_b():\n    assert False\n\ndef test_c():\n    pass\n")
    rec = gpu_report.run_gpu_tests(60, root=str(tmp_path))
    assert rec["status"] == "ok" and rec["files"] == ["tests/test_triton_backend.py"]
    assert (rec["passed"], rec["failed"], rec["timed_out"]) == (1, 1, False)  # -x stops
    assert "tests/test_norm_gate.py" in rec["missing"]
    (tmp_path / "tests" / "test_norm_gate.py").write_text(
        "import time\n\ndef test_slow():\n    time.sleep(60)\n")
    (tmp_path / "tests" / "test_triton_backend.py").write_text("def test_a():\n    pass\n")
    rec = gpu_report.run_gpu_tests(4, root=str(tmp_path))
    assert rec["timed_out"] and rec["seconds"] < 30
    row = gpu_report.evaluate_goals({"tests": rec})[0]
    assert row["status"] == "falls short" and "TIMED OUT" in row["measured_text"]
    assert gpu_report.run_gpu_tests(60, root=str(tmp_path / "nowhere"))["status"] == "not run"
