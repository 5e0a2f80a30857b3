"""The GPU report of issue 9: every goal measured side by side in one process, one row each.

    hgrn-benchmark --report gpu OUTDIR            # ~5-6 minutes on one H100
    hgrn-benchmark --report gpu OUTDIR --quick    # a smoke run: every phase, small shapes
    python -m hgrn_tools.measure.gpu_report OUTDIR        # the same, without the benchmark CLI

Needs a CUDA GPU with torch, Triton and timm, and this project installed
(``pip install --no-deps -e .``); fvcore and fla-core are optional (reported as
'not installed'). Phases, in this order (a time budget cuts the sweep first):

1. GPU tests: ``pytest -q -x`` on ``tests/test_triton_backend.py``,
   ``tests/test_triton_hgru.py`` and ``tests/test_norm_gate.py`` (those that exist) in a
   subprocess with a timeout; passed / failed counts.
2. Models, bf16 autocast, eager: inference img/s, training img/s (forward, cross-entropy
   on fixed random labels, backward, AdamW step; fixed random images) and peak memory
   (``torch.cuda.max_memory_allocated`` after a reset). hgrn_deit_small vs
   deit_small_patch16_224 and deit_small at patch 14 (256 tokens) at batch 256, 224 px;
   hgrn_deit_tiny vs deit_tiny_patch16_224 at 896 and 1248 px. Image sides: the largest
   multiple of the model's patch not above the nominal size (1248 px: HGRN 1246 = 89 x 14,
   DeiT 1248 = 78 x 16; every other size is a multiple of both). Then, as information
   beside them (rows in the table, no goal), the 2-D HGRU models at the same points:
   hgrn2d_deit_small at 224 px batch 256, hgrn2d_deit_tiny at 896 and 1248 px; skipped
   once the time budget is spent.
3. ``hgrn::hgru`` bandwidth: bidirectional complex op, bf16 projection (B, N, 3d), lower
   bound and phases; forward and forward+backward; GB/s of the bytes the op must move
   (forward: read 3d, write 2d values per token; forward+backward: 13d) as a fraction of
   a device-to-device copy measured in the same run.
4. Real-valued causal case against fla's ``chunk_hgrn`` and ``fused_recurrent_hgrn``.
5. Sweep 224..1248 px, tiny and small, HGRN vs DeiT, inference and training, peak memory,
   batch scaled to a fixed number of tokens per step.

Timing: model steps are timed back to back with CUDA events between consecutive steps
(no host sync inside the timed loop), after warm-up steps; op timings are the median of
CUDA-event timings with the L2 cache flushed before every call (as
``triton.testing.do_bench`` does), so inputs that would fit in L2 are read from memory.
An out-of-memory point is recorded as 'oom' and the report goes on.

Writes OUTDIR/gpu_report.md, OUTDIR/gpu_report.json (every raw measurement) and
OUTDIR/gpu_sweep.csv. ``--from-json OLD.json`` re-renders a report from an earlier run's
raw measurements (no GPU needed).
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

# The measurement code (environment, timing, the GPU tests, models, the ops) is in
# gpu_measure.py; its names are imported here, so ``gpu_report.NAME`` keeps working (and
# ``collect`` looks them up here: a test may monkeypatch ``gpu_report.measure_model``).
from .gpu_measure import (  # noqa: F401 - re-exported
    GIB, GPU_TEST_FILES, MIB, MODELS, ROOT, Plan, _cleanup, _err, _log, copy_bandwidth,
    environment, git_commit, is_oom, measure_hgru_bandwidth, measure_model,
    measure_real_vs_fla, parse_pytest_output, run_gpu_tests, side_for, time_op, time_steps,
    tokens_for)

NO_CUDA_MESSAGE = ("hgrn-benchmark --report gpu needs a CUDA GPU: torch.cuda.is_available() is "
                   "False here (torch {torch}, built with CUDA {cuda}). Run it on a machine with "
                   "an NVIDIA GPU, torch, Triton and timm, with this project installed by "
                   "`pip install --no-deps -e .`.")

SWEEP_PAIRS = (("tiny", "hgrn_deit_tiny", "deit_tiny_patch16_224"),
               ("small", "hgrn_deit_small", "deit_small_patch16_224"))
SIDE_CONVENTION = ("image side = the largest multiple of the model's patch not above the "
                   "nominal size (1248 px: HGRN 1246 = 89 x 14 px patches, DeiT 1248 = 78 x 16; "
                   "224 / 448 / 672 / 896 / 1120 are multiples of both)")
EQUAL_WORK_NOTE = ("equal bytes: fla's kernels read precomputed x and log-forget g (2d values per "
                   "token) and write h (d); hgrn::hgru reads the projection [c | mu] (2d) and "
                   "writes h (d), forming the gates (sigmoid, SiLU, 1 - lam) in registers. "
                   "All bf16; ours without a lower bound (None = 0)")


# ----------------------------------------------------------------------------------- plan
PLANS = {
    "full": Plan("full"),
    "quick": Plan("quick", batch=32, tiny_points=((448, 4, 2.0), (672, 2, 3.0)),
                  sweep_sizes=(224, 448), sweep_tokens=4096, warmup=1, iters=3,
                  sweep_warmup=1, sweep_iters=2,
                  op_shapes=((32, 256, 384), (2, 4096, 384)),
                  fla_shapes=((32, 256, 384), (2, 4096, 192)), op_warmup=2, op_iters=5,
                  copy_bytes=256 * MIB, test_timeout=90.0, budget_s=150.0),
    # the measurement code on the CPU (tests of this tool): tiny shapes, numbers meaningless
    "cpu-smoke": Plan("cpu-smoke", batch=2, size=56, tiny_points=((56, 1, 2.0), (112, 1, 3.0)),
                      sweep_sizes=(56,), sweep_tokens=16, sweep_max_batch=2, warmup=1, iters=1,
                      sweep_warmup=0, sweep_iters=1, op_shapes=((1, 8, 8),),
                      fla_shapes=((1, 8, 8),), op_warmup=1, op_iters=1, copy_bytes=MIB,
                      test_timeout=0.0, budget_s=120.0),
}


class Budget:
    def __init__(self, seconds: float):
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()


def goal_model_points(plan: Plan) -> List[Tuple[str, int, int]]:
    pts = [(label, plan.size, plan.batch)
           for label in ("hgrn_deit_small", "deit_small_p14", "deit_small_patch16_224",
                         "hgrn_deit_small_no_recurrence")]
    for size, batch, _ in plan.tiny_points:
        pts += [("hgrn_deit_tiny", size, batch), ("deit_tiny_patch16_224", size, batch)]
    return pts


def info_model_points(plan: Plan) -> List[Tuple[str, int, int]]:
    """Measured after the goal points, at the same sizes and batches, for the table only
    (no goal compares them): the 2-D HGRU beside its 1-D model."""
    return ([("hgrn2d_deit_small", plan.size, plan.batch)]
            + [("hgrn2d_deit_tiny", size, batch) for size, batch, _ in plan.tiny_points])


def _skipped(label: str, size: int, batch: int, plan: Plan) -> List[Dict[str, Any]]:
    return [dict(label=label, model=MODELS[label][0], img_size=size, side=side_for(label, size),
                 tokens=tokens_for(label, size), batch=batch, mode=mode, status="skipped",
                 error=f"time budget ({plan.budget_s:.0f} s) spent")
            for mode in ("infer", "train")]


# ----------------------------------------------------------------------------- running
def _model_line(r: Dict[str, Any]) -> str:
    head = f"  {r['label']:<24} {r['img_size']:>5}px b{r['batch']:<4} {r['mode']:<5}"
    if r["status"] != "ok":
        return f"{head} {r['status'].upper()} {r.get('error', '')}"
    mem = f"  peak {r['peak_mem_mib'] / 1024:.2f} GiB" if r.get("peak_mem_mib") else ""
    return f"{head} {r['img_per_s']:>10.1f} img/s{mem}"


def collect(plan: Plan, device, run_tests: bool = True, backend: Optional[str] = None,
            test_timeout: Optional[float] = None,
            checkpoint: Optional[Callable[[Dict[str, Any]], None]] = None) -> Dict[str, Any]:
    """Every raw measurement of the report (needs the device; on the CPU only with the
    ``cpu-smoke`` plan, for tests of this tool). A phase that fails is recorded in
    ``errors`` and the next one runs; ``checkpoint(m)`` after every phase (the CLI writes
    the report so far, so a run killed from outside still leaves one)."""
    t_start = time.monotonic()
    budget = Budget(plan.budget_s)
    m: Dict[str, Any] = {"plan": dataclasses.asdict(plan), "env": environment(device),
                         "backend": backend or "auto", "phases_s": {}, "errors": {},
                         "tests": {}, "models": [], "copy": {}, "hgru_bandwidth": [],
                         "real_vs_fla": [], "fla_note": None, "sweep": []}

    def tests():
        if not run_tests:
            m["tests"] = {"status": "not run", "error": "--no-tests"}
            return
        timeout = plan.test_timeout if test_timeout is None else test_timeout
        timeout = min(timeout, max(0.0, budget.left() - 60))
        _log(f"[1/5] GPU tests (timeout {timeout:.0f} s)")
        m["tests"] = t = run_gpu_tests(timeout)
        _log(f"  {t.get('passed', 0)} passed, {t.get('failed', 0)} failed, "
             f"{t.get('errors', 0)} errors in {t.get('seconds')} s"
             + (" (timed out)" if t.get("timed_out") else "")
             if t["status"] == "ok" else f"  not run: {t.get('error')}")

    def models():
        _log("[2/5] models at the goal points (bf16 autocast, eager)")
        for label, size, batch in goal_model_points(plan):
            for rec in measure_model(label, size, batch, ("infer", "train"), plan.warmup,
                                     plan.iters, device, backend):
                m["models"].append(rec)
                _log(_model_line(rec))
        # information rows: only while the budget lasts (the goal points always run)
        for label, size, batch in info_model_points(plan):
            recs = (_skipped(label, size, batch, plan) if budget.left() < 3 else
                    measure_model(label, size, batch, ("infer", "train"), plan.warmup,
                                  plan.iters, device, backend))
            for rec in recs:
                m["models"].append(rec)
                _log(_model_line(rec))

    def bandwidth():
        _log("[3/5] hgrn::hgru bandwidth")
        try:
            m["copy"] = copy_bandwidth(plan.copy_bytes, device, plan.op_warmup, plan.op_iters)
            _log(f"  device-to-device copy {m['copy']['gb_per_s']:.0f} GB/s")
        except Exception as err:  # noqa: BLE001
            m["copy"] = {"status": "error", "error": _err(err)}
        m["hgru_bandwidth"] = measure_hgru_bandwidth(plan, device, m["copy"].get("gb_per_s"))

    def fla():
        _log("[4/5] real-valued causal case vs fla")
        m["real_vs_fla"], m["fla_note"] = measure_real_vs_fla(plan, device)

    def sweep():
        if not plan.sweep_sizes:
            _log("[5/5] sweep: not run (--no-sweep)")
            return
        _log(f"[5/5] sweep {plan.sweep_sizes[0]}..{plan.sweep_sizes[-1]} px "
             f"({budget.left():.0f} s of the budget left)")
        for size in plan.sweep_sizes:
            batch = plan.sweep_batch(size)
            for _, hgrn, deit in SWEEP_PAIRS:
                for label in (hgrn, deit):
                    if budget.left() < 3:
                        recs = _skipped(label, size, batch, plan)
                    else:
                        recs = measure_model(label, size, batch, ("infer", "train"),
                                             plan.sweep_warmup, plan.sweep_iters, device, backend)
                    for rec in recs:
                        m["sweep"].append(rec)
                        _log(_model_line(rec))

    for name, fn in (("tests", tests), ("models", models), ("hgru_bandwidth", bandwidth),
                     ("real_vs_fla", fla), ("sweep", sweep)):
        t0 = time.monotonic()
        try:
            fn()
        except Exception as err:  # noqa: BLE001 - a bug in one phase must not lose the others
            import traceback
            m["errors"][name] = traceback.format_exc(limit=6)[-3000:]
            _log(f"  phase {name} failed: {_err(err)}")
            _cleanup(device)
        m["phases_s"][name] = round(time.monotonic() - t0, 1)
        m["duration_s"] = round(time.monotonic() - t_start, 1)
        if checkpoint is not None:
            try:
                checkpoint(m)
            except Exception as err:  # noqa: BLE001
                _log(f"  could not write the partial report: {_err(err)}")
    return m


# ---------------------------------------------------------------------- goal evaluation
def _find(recs: Sequence[Dict[str, Any]], label: str, size: int, mode: str,
          batch: Optional[int] = None) -> Optional[Dict[str, Any]]:
    for r in recs or ():
        if (r.get("label") == label and r.get("img_size") == size and r.get("mode") == mode
                and (batch is None or r.get("batch") == batch)):
            return r
    return None


def _row(goal: str, condition: str, target_text: str, measured: Optional[float] = None,
         measured_text: str = "", status: Optional[str] = None, higher_is_better: bool = True,
         target: Optional[float] = None, note: str = "") -> Dict[str, Any]:
    if status is None:
        if measured is None or target is None:
            status = "not measured"
        elif higher_is_better:
            status = "holds" if measured >= target else "falls short"
        else:
            status = "holds" if measured <= target else "falls short"
    return dict(goal=goal, condition=condition, measured=measured, measured_text=measured_text,
                target=target, target_text=target_text, status=status, note=note)


def _why_missing(*recs) -> str:
    for r in recs:
        if r is None:
            return "no measurement"
        if r.get("status") != "ok":
            return f"{r.get('label', r.get('impl', ''))}: {r.get('status')} {r.get('error', '')}".strip()
    return ""


def _ratio_row(goal, condition, recs, num, den, size, mode, target, plan_batch=None,
               metric="img_per_s", unit="img/s") -> Dict[str, Any]:
    a, b = _find(recs, num, size, mode, plan_batch), _find(recs, den, size, mode, plan_batch)
    lower = metric == "peak_mem_mib"
    tt = f"{'<=' if lower else '>='} {target:.1f}x"
    why = _why_missing(a, b)
    if why or not a.get(metric) or not b.get(metric):
        return _row(goal, condition, tt, measured_text=f"not measured ({why or 'no value'})",
                    target=target, higher_is_better=not lower)
    ratio = a[metric] / b[metric]
    if lower:
        text = f"{ratio:.2f}x ({a[metric] / 1024:.1f} / {b[metric] / 1024:.1f} GiB)"
    else:
        text = f"{ratio:.2f}x ({a[metric]:,.0f} / {b[metric]:,.0f} {unit})"
    if a.get("side") != b.get("side"):
        text += f" [{a.get('side')} / {b.get('side')} px]"
    return _row(goal, condition, tt, ratio, text, target=target, higher_is_better=not lower)


def evaluate_goals(m: Dict[str, Any]) -> List[Dict[str, Any]]:
    """One row per goal (and condition) of issue 9 from the raw measurements ``m``."""
    plan = m.get("plan") or dataclasses.asdict(PLANS["full"])
    rows: List[Dict[str, Any]] = []
    # GPU tests
    t = m.get("tests") or {}
    if t.get("status") != "ok":
        rows.append(_row("GPU tests pass", ", ".join(GPU_TEST_FILES), "all pass",
                         measured_text=f"not run ({t.get('error', 'no record')})"))
    else:
        ok = (t.get("failed", 0) == 0 and t.get("errors", 0) == 0 and t.get("passed", 0) > 0
              and not t.get("timed_out"))
        text = (f"{t.get('passed', 0)} passed, {t.get('failed', 0)} failed, "
                f"{t.get('errors', 0)} errors, {t.get('skipped', 0)} skipped in "
                f"{t.get('seconds', 0):.0f} s" + (" (TIMED OUT)" if t.get("timed_out") else ""))
        rows.append(_row("GPU tests pass", " ".join(t.get("files", [])), "all pass",
                         float(t.get("passed", 0)), text,
                         status="holds" if ok else "falls short"))
    # small models at the goal point
    recs, size, batch = m.get("models", []), plan["size"], plan["batch"]
    cond = f"batch {batch}, {size} px, bf16"
    rows.append(_ratio_row("hgrn_deit_small training img/s vs deit_small at patch 14",
                           cond, recs, "hgrn_deit_small", "deit_small_p14", size, "train", 1.0,
                           batch))
    rows.append(_ratio_row("hgrn_deit_small training img/s vs deit_small_patch16_224",
                           cond, recs, "hgrn_deit_small", "deit_small_patch16_224", size,
                           "train", 0.8, batch))
    rows.append(_ratio_row("hgrn_deit_small inference img/s vs deit_small at patch 14",
                           cond, recs, "hgrn_deit_small", "deit_small_p14", size, "infer", 1.0,
                           batch))
    rows.append(_ratio_row("hgrn_deit_small peak training memory vs deit_small at patch 14",
                           cond, recs, "hgrn_deit_small", "deit_small_p14", size, "train", 1.3,
                           batch, metric="peak_mem_mib"))
    # tiny at high resolution
    for tsize, tbatch, target in plan["tiny_points"]:
        for mode, what in (("infer", "inference"), ("train", "training")):
            rows.append(_ratio_row(f"hgrn_deit_tiny {what} img/s vs deit_tiny_patch16_224",
                                   f"{tsize} px, batch {tbatch}, bf16", recs, "hgrn_deit_tiny",
                                   "deit_tiny_patch16_224", tsize, mode, target, tbatch))
    # op bandwidth
    bw = m.get("hgru_bandwidth", [])
    for shape in plan["op_shapes"]:
        for pass_name, target in (("forward", plan["hgru_fwd_target"]),
                                  ("forward+backward", plan["hgru_fwdbwd_target"])):
            r = next((r for r in bw if list(r.get("shape", [])) == list(shape)
                      and r.get("passes") == pass_name), None)
            cond = f"({', '.join(map(str, shape))}) bf16, bidirectional, {pass_name}"
            tt = f">= {target:.0%} of copy"
            note = "" if r is None or r.get("impl") == "hgrn::hgru" else r.get("impl", "")
            if r is None or r.get("status") != "ok" or r.get("fraction_of_copy") is None:
                why = "no measurement" if r is None else (r.get("error") or "no copy bandwidth")
                rows.append(_row("hgrn::hgru bandwidth", cond, tt, target=target, note=note,
                                 measured_text=f"not measured ({why})"))
                continue
            frac = r["fraction_of_copy"]
            rows.append(_row("hgrn::hgru bandwidth", cond, tt, frac,
                             f"{frac:.0%} ({r['gb_per_s']:,.0f} of {r['copy_gb_per_s']:,.0f} "
                             f"GB/s, {r['ms']:.3f} ms)", target=target, note=note))
    # real-valued causal case vs fla
    rf = m.get("real_vs_fla", [])
    for shape in plan["fla_shapes"]:
        for pass_name in ("forward", "forward+backward"):
            cond = f"({', '.join(map(str, shape))}) bf16, {pass_name}"
            goal = "real causal hgrn::hgru not slower than fla chunk / fused_recurrent"
            pick = {r["impl"]: r for r in rf
                    if list(r.get("shape", [])) == list(shape) and r.get("passes") == pass_name}
            ours = pick.get("ours")
            flas = {k: v for k, v in pick.items() if k.startswith("fla") and v.get("status") == "ok"}
            if not flas:
                why = m.get("fla_note") or "; ".join(
                    f"{k}: {v.get('error')}" for k, v in pick.items() if k != "ours") or "no fla run"
                rows.append(_row(goal, cond, ">= 1.0x (fla time / ours)",
                                 measured_text=f"not measured ({why})"))
                continue
            if ours is None or ours.get("status") != "ok":
                rows.append(_row(goal, cond, ">= 1.0x (fla time / ours)",
                                 measured_text=f"not measured ({_why_missing(ours) or 'ours failed'})"))
                continue
            best = min(v["ms"] for v in flas.values())
            ratio = best / ours["ms"]
            text = (f"{ratio:.2f}x (ours {ours['ms']:.3f} ms; "
                    + ", ".join(f"{k[4:]} {v['ms']:.3f}" for k, v in sorted(flas.items())) + " ms)")
            rows.append(_row(goal, cond, ">= 1.0x (fla time / ours)", ratio, text, target=1.0,
                             note="" if ours.get("op", "hgrn::hgru") == "hgrn::hgru"
                             else ours.get("op", "")))
    return rows


# ---------------------------------------------------------------------------- rendering
def header_lines(m: Dict[str, Any]) -> List[str]:
    env, plan = m.get("env", {}), m.get("plan", {})
    lines = [f"device: {env.get('device', '?')}"
             + (f" ({env['device_memory_gib']} GiB, {env.get('sm_count')} SMs, "
                f"sm_{env.get('capability', '').replace('.', '')})" if env.get("device_memory_gib") else ""),
             f"torch {env.get('torch')} (CUDA {env.get('cuda')}), triton {env.get('triton')}, "
             f"timm {env.get('timm')}, fvcore {env.get('fvcore')}, fla {env.get('fla')}, "
             f"python {env.get('python')}",
             f"date {env.get('date')}, commit {env.get('commit') or 'unknown'}, "
             f"plan {plan.get('name', '?')}, scan backend {m.get('backend', 'auto')}, "
             f"run time {m.get('duration_s', '?')} s"]
    if env.get("hgru_launch"):
        launch = env["hgru_launch"]
        if isinstance(launch, dict):
            launch = "; ".join(f"{p} " + " ".join(f"{k}={v}" for k, v in c.items())
                               for p, c in launch.items())
        src = env.get("hgru_config_file") or "the capability table"
        lines.append(f"hgrn::hgru launch ({src}): {launch}")
    if plan.get("name") not in (None, "full"):
        lines.append(f"NOTE: a {plan.get('name')} run: shapes shrunk, the goals are defined at "
                     "the full plan's shapes")
    return lines


def _table(rows: List[List[str]], head: List[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    fmt = lambda r: "  ".join(str(x).ljust(w) for x, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(head), "  ".join("-" * w for w in widths)] + [fmt(r) for r in rows])


GOAL_HEAD = ["goal", "condition", "measured", "target", "result"]


def _goal_cells(g: Dict[str, Any]) -> List[str]:
    result = g["status"] + (f" ({g['note']})" if g.get("note") else "")
    return [g["goal"], g["condition"], g["measured_text"], g["target_text"], result]


def format_text(report: Dict[str, Any]) -> str:
    m = report["measurements"]
    out = header_lines(m) + [""]
    out.append(_table([_goal_cells(g) for g in report["goals"]], GOAL_HEAD))
    n = {s: sum(g["status"] == s for g in report["goals"])
         for s in ("holds", "falls short", "not measured")}
    out.append("")
    out.append(f"{n['holds']} hold, {n['falls short']} fall short, {n['not measured']} not measured")
    for name, tb in (m.get("errors") or {}).items():
        out.append(f"phase {name} FAILED: {tb.strip().splitlines()[-1]}")
    return "\n".join(out)


def _md_table(head: List[str], rows: List[List[Any]]) -> List[str]:
    esc = lambda x: str(x).replace("|", "\\|")  # noqa: E731
    return (["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            + ["| " + " | ".join(esc(x) for x in r) + " |" for r in rows])


def _fmt(v, spec=",.1f", none="-"):
    return none if v is None else format(v, spec)


def sweep_rows(sweep: Sequence[Dict[str, Any]]) -> List[List[Any]]:
    rows = []
    sizes = sorted({r["img_size"] for r in sweep})
    for size in sizes:
        for mode in ("infer", "train"):
            for fam, hgrn, deit in SWEEP_PAIRS:
                a, b = _find(sweep, hgrn, size, mode), _find(sweep, deit, size, mode)
                if a is None and b is None:
                    continue
                ok = lambda r: r is not None and r.get("status") == "ok"  # noqa: E731
                cell = lambda r: _fmt(r.get("img_per_s")) if ok(r) else (  # noqa: E731
                    r.get("status", "-") if r else "-")
                mem = lambda r: _fmt((r.get("peak_mem_mib") or 0) / 1024 or None, ".2f") \
                    if ok(r) else "-"  # noqa: E731
                ratio = (f"{a['img_per_s'] / b['img_per_s']:.2f}x" if ok(a) and ok(b) else "-")
                ref = a or b
                rows.append([size, fam, mode, ref.get("batch"),
                             f"{(a or {}).get('tokens', '-')} / {(b or {}).get('tokens', '-')}",
                             cell(a), cell(b), ratio, mem(a), mem(b)])
    return rows


SWEEP_HEAD = ["px", "family", "mode", "batch", "tokens (hgrn / deit)", "hgrn img/s",
              "deit img/s", "hgrn / deit", "hgrn peak GiB", "deit peak GiB"]


def format_markdown(report: Dict[str, Any]) -> str:
    m = report["measurements"]
    plan = m.get("plan", {})
    out = ["# GPU report: issue 9 goals", ""]
    out += [f"- {line}" for line in header_lines(m)]
    out += ["", "## Goals", ""]
    out += _md_table(GOAL_HEAD, [_goal_cells(g) for g in report["goals"]])
    out += ["", "## Models at the goal points", "",
            f"bf16 autocast, eager; training = forward + cross-entropy + backward + AdamW; "
            f"{plan.get('warmup')} warm-up steps, median of {plan.get('iters')} steps; "
            f"{SIDE_CONVENTION}.", ""]
    out += _md_table(["model", "px (side)", "tokens", "batch", "mode", "img/s", "median ms",
                      "peak GiB", "status"],
                     [[MODELS.get(r["label"], (0, 0, 0, r["label"]))[3], f"{r['img_size']} ({r.get('side')})",
                       r.get("tokens"), r["batch"], r["mode"], _fmt(r.get("img_per_s")),
                       _fmt(r.get("median_ms"), ".2f"),
                       _fmt((r.get("peak_mem_mib") or 0) / 1024 or None, ".2f"),
                       r["status"] + (f": {r['error']}" if r.get("error") else "")]
                      for r in m.get("models", [])])
    out += ["", "## Sweep", "",
            f"Batch scaled to about {plan.get('sweep_tokens')} HGRN tokens per step (at most "
            f"{plan.get('sweep_max_batch')}); {plan.get('sweep_warmup')} warm-up steps, median of "
            f"{plan.get('sweep_iters')}; also in gpu_sweep.csv.", ""]
    out += _md_table(SWEEP_HEAD, sweep_rows(m.get("sweep", [])))
    copy = m.get("copy", {})
    out += ["", "## hgrn::hgru bandwidth", "",
            f"Device-to-device copy: {_fmt(copy.get('gb_per_s'), ',.0f')} GB/s "
            f"({_fmt((copy.get('bytes') or 0) / MIB, ',.0f')} MiB, read + write counted). "
            "Minimal bytes: forward reads 3d and writes 2d values per token, forward+backward "
            "13d (plus backward: read c, mu, dh = 5d, write dproj = 3d), 2 bytes each. "
            "L2 flushed before each call.", ""]
    out += _md_table(["shape (B, N, d)", "pass", "op", "ms", "min bytes (MB)", "GB/s",
                      "of copy", "status"],
                     [[tuple(r["shape"]), r["passes"], r.get("impl"), _fmt(r.get("ms"), ".3f"),
                       _fmt(r["min_bytes"] / 1e6, ",.0f"), _fmt(r.get("gb_per_s"), ",.0f"),
                       _fmt(r.get("fraction_of_copy"), ".0%"),
                       r["status"] + (f": {r['error']}" if r.get("error") else "")]
                      for r in m.get("hgru_bandwidth", [])])
    out += ["", "## Real-valued causal case vs fla", "",
            f"{EQUAL_WORK_NOTE}. fla: {m.get('env', {}).get('fla')}"
            + (f" ({m['fla_note']})" if m.get("fla_note") else "") + ".", ""]
    out += _md_table(["shape (B, N, d)", "implementation", "pass", "ms", "status"],
                     [[tuple(r["shape"]), r["impl"] + (f" ({r['op']})" if r.get("op") else ""),
                       r["passes"], _fmt(r.get("ms"), ".3f"),
                       r["status"] + (f": {r['error']}" if r.get("error") else "")]
                      for r in m.get("real_vs_fla", [])])
    t = m.get("tests", {})
    out += ["", "## GPU tests", ""]
    if t.get("status") == "ok":
        out += [f"`{t.get('command')}`: {t.get('passed', 0)} passed, {t.get('failed', 0)} failed, "
                f"{t.get('errors', 0)} errors, {t.get('skipped', 0)} skipped in "
                f"{t.get('seconds')} s" + (" (killed at the timeout)" if t.get("timed_out") else "")
                + (f"; not present: {', '.join(t['missing'])}" if t.get("missing") else ""),
                "", "```", t.get("tail", ""), "```"]
    else:
        out.append(f"not run: {t.get('error')}")
    for name, tb in (m.get("errors") or {}).items():
        out += ["", f"## Phase {name} failed", "", "```", tb.strip(), "```"]
    out += ["", f"Phase times (s): {m.get('phases_s')}", ""]
    return "\n".join(out)


SWEEP_FIELDS = ["label", "model", "img_size", "side", "tokens", "batch", "mode", "status",
                "img_per_s", "median_ms", "min_ms", "peak_mem_mib", "warmup", "iters", "error"]


def build_report(m: Dict[str, Any]) -> Dict[str, Any]:
    return {"tool": "hgrn-benchmark --report gpu", "goals": evaluate_goals(m), "measurements": m}


def write_report(report: Dict[str, Any], outdir: str) -> List[str]:
    os.makedirs(outdir, exist_ok=True)
    paths = [os.path.join(outdir, n) for n in ("gpu_report.md", "gpu_report.json", "gpu_sweep.csv")]
    with open(paths[0], "w") as f:
        f.write(format_markdown(report))
    with open(paths[1], "w") as f:
        json.dump(report, f, indent=1, default=str)
    if not report["measurements"].get("sweep"):  # nothing swept (--no-sweep): no table
        return paths[:2]
    with open(paths[2], "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=SWEEP_FIELDS, extrasaction="ignore", restval="")
        w.writeheader()
        w.writerows(report["measurements"].get("sweep", []))
    return paths


# ------------------------------------------------------------------------------------ CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hgrn-benchmark --report gpu",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 2)[2])
    p.add_argument("outdir", help="folder for gpu_report.md / .json and gpu_sweep.csv")
    p.add_argument("--quick", action="store_true", help="small shapes: a smoke run (~2 min)")
    p.add_argument("--no-tests", action="store_true", help="skip the GPU tests")
    p.add_argument("--no-sweep", action="store_true",
                   help="skip the sweep (phase 5): the goal points, the op and fla only")
    p.add_argument("--test-timeout", type=float, default=None,
                   help="seconds for the GPU tests (default: 150, --quick 90)")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds for all phases after start-up; the sweep is cut to fit "
                        "(default: 330, --quick 150)")
    p.add_argument("--backend", default=None, help="scan backend of the hgrn models (default auto)")
    p.add_argument("--from-json", default=None, metavar="JSON",
                   help="no run: re-evaluate and re-write the report from an earlier gpu_report.json")
    p.add_argument("--cpu-smoke", action="store_true",
                   help="run the measurement code on the CPU with tiny shapes (tests of this "
                        "tool; the numbers mean nothing)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.from_json:
        with open(args.from_json) as f:
            old = json.load(f)
        m = old.get("measurements", old)
    else:
        import torch
        if args.cpu_smoke:
            device, plan = torch.device("cpu"), PLANS["cpu-smoke"]
        elif not torch.cuda.is_available():
            print("error: " + NO_CUDA_MESSAGE.format(torch=torch.__version__,
                                                     cuda=torch.version.cuda), file=sys.stderr)
            return 2
        else:
            device, plan = torch.device("cuda"), PLANS["quick" if args.quick else "full"]
        if args.budget is not None:
            plan = dataclasses.replace(plan, budget_s=args.budget)
        if args.no_sweep:
            plan = dataclasses.replace(plan, sweep_sizes=())

        def checkpoint(partial):
            write_report(build_report(partial), args.outdir)
        m = collect(plan, device, run_tests=not (args.no_tests or args.cpu_smoke),
                    backend=args.backend, test_timeout=args.test_timeout, checkpoint=checkpoint)
    report = build_report(m)
    print(format_text(report))
    for path in write_report(report, args.outdir):
        print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
