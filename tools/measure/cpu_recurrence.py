"""What the HGRU's recurrence costs on the CPU: issue 17's goals, measured side by side.

    hgrn-benchmark --report cpu-recurrence [OUTDIR] [--threads 2] [--rounds 10]   # ~5 min, 2 cores
    python -m hgrn_tools.measure.cpu_recurrence [OUTDIR]

hgrn_deit_tiny against its twin without the recurrence (``mixer=hgru_no_recurrence``: the
same projections, norm-gate and out_proj, ``h = c`` copied once) and deit_tiny, fp32, eager,
at three points: forward at 224 px batch 32 and at 896 px batch 2, and a training step at
224 px batch 8. The goal is hgrn / twin >= 0.9 for the forwards and >= 0.85 for training.
hgrn runs on the backend ``auto`` picks for CPU tensors (numba when ``hgrn[cpu]`` is
installed); the same model on the torch backend is measured beside it (the "before" column;
``--no-torch-backend`` leaves it out).

Protocol: one fresh process per point holds all the models (``benchmark.build_step``: the
steps of ``hgrn-benchmark``); after ``--warmup`` steps of each, every round times one step of
each model, the order rotated from round to round, so that whatever else the machine is
doing falls on all of them alike. A model's figure is its fastest step ("best of each": on
a shared machine the step least slowed by others); the verdict uses the ratio of those. The
median over rounds of the paired ratio (twin's step / hgrn's step of the same round) is
reported beside it as a check, and every step time is in the JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

import torch

# (img_size, batch, mode, goal for hgrn / twin)
POINTS = ((224, 32, "infer", 0.9), (896, 2, "infer", 0.9), (224, 8, "train", 0.85))
TWIN = "hgrn_deit_tiny:mixer=hgru_no_recurrence"
# column -> (model spec, backend of the hgrn models: None = auto)
COLUMNS = {"hgrn": ("hgrn_deit_tiny", None), "hgrn_torch": ("hgrn_deit_tiny", "torch"),
           "twin": (TWIN, None), "deit": ("deit_tiny_patch16_224", None)}


def auto_backend_name() -> str:
    """The backend ``auto`` runs the fused op on for CPU tensors here."""
    from hgrn_core.backends import auto_backend_name as name
    return name(torch.device("cpu"))


def time_point(size: int, batch: int, mode: str, columns: Sequence[str], rounds: int,
               warmup: int, threads: int) -> Dict[str, List[float]]:
    """In this process: every column's model at one point, step times (ms) per round."""
    from ..model_factory import create_model, import_plugins
    from .benchmark import build_step
    import_plugins(())
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    x = torch.randn(batch, 3, size, size)
    steps = {}
    for col in columns:
        model, backend = COLUMNS[col]
        steps[col] = build_step(create_model(model, size, backend), x, mode)
        for _ in range(warmup):
            steps[col]()
    times: Dict[str, List[float]] = {col: [] for col in columns}
    for r in range(rounds):
        k = r % len(columns)
        for col in list(columns[k:]) + list(columns[:k]):
            t0 = time.perf_counter()
            steps[col]()
            times[col].append((time.perf_counter() - t0) * 1e3)
    return times


def time_point_subprocess(size: int, batch: int, mode: str, columns: Sequence[str],
                          rounds: int, warmup: int, threads: int,
                          timeout: Optional[float] = None) -> Dict[str, Any]:
    """``time_point`` in a fresh Python process: {"times": ...} or {"error": message}."""
    job = dict(size=size, batch=batch, mode=mode, columns=list(columns), rounds=rounds,
               warmup=warmup, threads=threads)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([p or os.getcwd() for p in sys.path])
    cmd = [sys.executable, "-m", f"{__package__}.cpu_recurrence", "--_worker", json.dumps(job)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"no result within {timeout:g} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    tail = " | ".join((proc.stderr or "").strip().splitlines()[-3:])
    return {"error": f"worker exited with {proc.returncode}: {tail}"}


def measure(rounds: int = 10, threads: Optional[int] = None, warmup: int = 2, points=POINTS,
            columns: Sequence[str] = tuple(COLUMNS), timeout: Optional[float] = None,
            run=time_point_subprocess, log=None) -> Dict[str, Any]:
    """Every point in its own process (``run``); the rows of the table and the raw times."""
    raw = []
    for size, batch, mode, _ in points:
        res = run(size, batch, mode, columns, rounds, warmup, threads or os.cpu_count(),
                  timeout=timeout)
        raw.append(dict(img_size=size, batch=batch, mode=mode, **res))
        if log:
            log(f"  {mode} {size} px b{batch}: " + (res["error"] if "error" in res else "  ".join(
                f"{c} {min(t):.1f} ms" for c, t in res["times"].items())))
    return {"rows": rows_from(raw, points, columns), "raw": raw}


def rows_from(raw: List[Dict[str, Any]], points=POINTS, columns: Sequence[str] = tuple(COLUMNS)
              ) -> List[Dict[str, Any]]:
    """Per point: each column's fastest step (ms) and its img/s; the speed ratios to the
    twin and to deit from those (hgrn / twin = twin's ms / hgrn's ms), the goal's verdict on
    hgrn / twin, and the median over rounds of the paired ratio as a check."""
    rows = []
    for size, batch, mode, goal in points:
        row: Dict[str, Any] = dict(img_size=size, batch=batch, mode=mode, goal=goal)
        got = next((r for r in raw if (r["img_size"], r["batch"], r["mode"]) == (size, batch, mode)),
                   {"error": "not run"})
        times = got.get("times") or {}
        for col in columns:
            t = times.get(col)
            row[col] = None if not t else dict(ms=min(t), img_per_s=batch / min(t) * 1e3,
                                               median_ms=statistics.median(t))
        for num in ("hgrn", "hgrn_torch"):
            for den in ("twin", "deit"):
                a, b = row.get(num), row.get(den)
                row[f"{num}/{den}"] = None if not a or not b else b["ms"] / a["ms"]
        if times.get("hgrn") and times.get("twin"):
            row["hgrn/twin paired"] = statistics.median(
                tw / hg for tw, hg in zip(times["twin"], times["hgrn"]))
        ratio = row.get("hgrn/twin")
        row["status"] = ("not measured" + (f" ({got['error']})" if got.get("error") else "")
                         if ratio is None else "holds" if ratio >= goal else "falls short")
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------- rendering
POINT_NAMES = {"infer": "forward", "train": "training step"}


def _f(v, fmt):
    return "-" if v is None else format(v, fmt)


def format_markdown(report: Dict[str, Any]) -> str:
    env = report["env"]
    cols = [c for c in COLUMNS if c in report["columns"]]
    names = {"hgrn": f"hgrn ({env['backend']})", "hgrn_torch": "hgrn (torch)",
             "twin": "twin", "deit": "deit_tiny"}
    head = (["point"] + [names[c] + " img/s" for c in cols] +
            ["hgrn / twin", "paired"] + (["torch / twin"] if "hgrn_torch" in cols else []) +
            ["hgrn / deit", "goal", "result"])
    out = [f"# The recurrence on the CPU: hgrn_deit_tiny vs its twin without recurrence", "",
           f"- {env['cpu']}, {env['threads']} threads, torch {env['torch']}, timm {env['timm']}, "
           f"backend of `auto`: {env['backend']}, commit {env.get('commit') or 'unknown'}, "
           f"{env['date']}",
           f"- fp32, eager; a fresh process per point holding every model; {env['warmup']} "
           f"warm-up steps each, then {env['rounds']} rounds of one step of each, in rotated "
           f"order; img/s from each model's fastest step; paired: the median over rounds of "
           f"twin / hgrn in the same round", "",
           "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in report["rows"]:
        cells = [f"{POINT_NAMES[r['mode']]}, {r['img_size']} px, batch {r['batch']}"]
        cells += [_f(r[c]["img_per_s"] if r.get(c) else None, ".2f") for c in cols]
        cells += [_f(r.get("hgrn/twin"), ".2f"), _f(r.get("hgrn/twin paired"), ".2f")]
        if "hgrn_torch" in cols:
            cells.append(_f(r.get("hgrn_torch/twin"), ".2f"))
        cells += [_f(r.get("hgrn/deit"), ".2f"), f">= {r['goal']:g}", r["status"]]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------------------------ CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hgrn-benchmark --report cpu-recurrence",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 2)[2])
    p.add_argument("outdir", nargs="?", default=None,
                   help="folder for cpu_recurrence.json / .md (default: print only)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--no-torch-backend", action="store_true",
                   help="leave out hgrn on the torch backend (the 'before' column)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per point")
    p.add_argument("--_worker", help=argparse.SUPPRESS)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args._worker:  # child of time_point_subprocess: one point, one JSON line
        job = json.loads(args._worker)
        try:
            out = {"times": time_point(job["size"], job["batch"], job["mode"], job["columns"],
                                       job["rounds"], job["warmup"], job["threads"])}
        except Exception as err:  # noqa: BLE001 - reported in the table
            out = {"error": f"{type(err).__name__}: {err}"[:500]}
        sys.stdout.write("\n" + json.dumps(out) + "\n")
        return 0
    import platform
    import timm
    from .benchmark import cpu_name
    from .gpu_report import git_commit
    columns = [c for c in COLUMNS if not (c == "hgrn_torch" and args.no_torch_backend)]
    threads = args.threads or os.cpu_count()
    res = measure(rounds=args.rounds, threads=threads, warmup=args.warmup,
                  columns=columns, timeout=args.timeout,
                  log=lambda s: print(s, file=sys.stderr, flush=True))
    report = {"tool": "hgrn-benchmark --report cpu-recurrence", "columns": columns,
              "env": {"cpu": cpu_name(), "threads": threads, "torch": torch.__version__,
                      "timm": timm.__version__, "python": platform.python_version(),
                      "backend": auto_backend_name(), "commit": git_commit(),
                      "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "rounds": args.rounds,
                      "warmup": args.warmup},
              **res}
    text = format_markdown(report)
    print(text)
    if args.outdir:
        os.makedirs(args.outdir, exist_ok=True)
        for name, body in (("cpu_recurrence.json", json.dumps(report, indent=1, default=str)),
                           ("cpu_recurrence.md", text)):
            path = os.path.join(args.outdir, name)
            with open(path, "w") as f:
                f.write(body)
            print(f"wrote {path}", file=sys.stderr)
    return 0 if all(not r["status"].startswith("not measured") for r in report["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
