"""What the HGRU's recurrence costs on the CPU: issue 17's goals, measured side by side.

    hgrn-benchmark --report cpu-recurrence [OUTDIR] [--threads 2] [--rounds 3]   # ~10 min, 2 cores
    python -m hgrn_tools.measure.cpu_recurrence [OUTDIR]

hgrn_deit_tiny against its twin without the recurrence (``mixer=hgru_no_recurrence``: the
same projections, norm-gate and out_proj, ``h = c`` copied once) and deit_tiny, fp32, eager,
at three points: forward at 224 px batch 32 and at 896 px batch 2, and a training step at
224 px batch 8. The goal is hgrn / twin >= 0.9 for the forwards and >= 0.85 for training.
hgrn runs on the backend ``auto`` picks for CPU tensors (numba when ``hgrn[cpu]`` is
installed); the same model on the torch backend is measured beside it (the "before" column;
``--no-torch-backend`` leaves it out).

Protocol: ``hgrn-benchmark``'s cases (``benchmark.run_case``), each in a fresh process,
all models of all points interleaved in every round. A case runs ``--warmup`` untimed
steps and ``--iters`` timed ones; its figure is the fastest step, and each model's figure is
the fastest over the rounds (on a shared machine the fastest step is the one least slowed
by others; the medians are in the JSON).
"""
from __future__ import annotations

import argparse
import json
import os
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


def measure(rounds: int = 3, threads: Optional[int] = None, warmup: int = 2, iters: int = 5,
            points=POINTS, columns: Sequence[str] = tuple(COLUMNS),
            timeout: Optional[float] = None, log=None) -> Dict[str, Any]:
    """Every (point, column) case ``rounds`` times, interleaved; the rows of the table."""
    from . import benchmark
    raw: List[Dict[str, Any]] = []
    for r in range(rounds):
        for size, batch, mode, _ in points:
            for col in columns:
                model, backend = COLUMNS[col]
                case = dict(model=model, img_size=size, batch_size=batch, mode=mode,
                            device="cpu", amp="none", compile=False, backend=backend,
                            threads=threads or os.cpu_count(), warmup=warmup, iters=iters,
                            optimizer="sgd", imports=[])
                rec = benchmark.run_case_subprocess(case, timeout)
                rec["column"] = col
                raw.append(rec)
                if log:
                    log(f"  round {r + 1}/{rounds} {col:<10} " + benchmark._line(rec))
    return {"rows": rows_from(raw, points, columns), "raw": raw}


def rows_from(raw: List[Dict[str, Any]], points=POINTS, columns: Sequence[str] = tuple(COLUMNS)
              ) -> List[Dict[str, Any]]:
    """Per point: each column's fastest step (ms) over the rounds and its img/s, the ratios
    to the twin and to deit (speed ratios: hgrn / twin = twin's ms / hgrn's ms) and the
    goal's verdict."""
    rows = []
    for size, batch, mode, goal in points:
        row: Dict[str, Any] = dict(img_size=size, batch=batch, mode=mode, goal=goal)
        for col in columns:
            ok = [r for r in raw if r.get("column") == col and r["img_size"] == size
                  and r["batch_size"] == batch and r["mode"] == mode and r["status"] == "ok"]
            best = min((r["min_ms"] for r in ok), default=None)
            row[col] = None if best is None else dict(
                ms=best, img_per_s=batch / best * 1e3, rounds=len(ok),
                median_ms=[round(r["median_ms"], 2) for r in ok])
        speed = lambda c: row[c]["img_per_s"] if row.get(c) else None  # noqa: E731
        for num in ("hgrn", "hgrn_torch"):
            for den in ("twin", "deit"):
                a, b = speed(num), speed(den)
                row[f"{num}/{den}"] = None if a is None or b is None else a / b
        ratio = row.get("hgrn/twin")
        row["status"] = ("not measured" if ratio is None else
                         "holds" if ratio >= goal else "falls short")
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
            ["hgrn / twin"] + (["torch / twin"] if "hgrn_torch" in cols else []) +
            ["hgrn / deit", "goal", "result"])
    out = [f"# The recurrence on the CPU: hgrn_deit_tiny vs its twin without recurrence", "",
           f"- {env['cpu']}, {env['threads']} threads, torch {env['torch']}, timm {env['timm']}, "
           f"backend of `auto`: {env['backend']}, commit {env.get('commit') or 'unknown'}, "
           f"{env['date']}",
           f"- fp32, eager; a fresh process per case, all cases interleaved, {env['rounds']} "
           f"rounds; each case {env['warmup']} warm-up and {env['iters']} timed steps; the "
           f"fastest step of all rounds", "",
           "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in report["rows"]:
        cells = [f"{POINT_NAMES[r['mode']]}, {r['img_size']} px, batch {r['batch']}"]
        cells += [_f(r[c]["img_per_s"] if r.get(c) else None, ".2f") for c in cols]
        cells.append(_f(r.get("hgrn/twin"), ".2f"))
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
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--no-torch-backend", action="store_true",
                   help="leave out hgrn on the torch backend (the 'before' column)")
    p.add_argument("--timeout", type=float, default=900, help="seconds per case")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    import platform
    import timm
    from .benchmark import cpu_name
    from .gpu_report import git_commit
    columns = [c for c in COLUMNS if not (c == "hgrn_torch" and args.no_torch_backend)]
    threads = args.threads or os.cpu_count()
    res = measure(rounds=args.rounds, threads=threads, warmup=args.warmup, iters=args.iters,
                  columns=columns, timeout=args.timeout,
                  log=lambda s: print(s, file=sys.stderr, flush=True))
    report = {"tool": "hgrn-benchmark --report cpu-recurrence", "columns": columns,
              "env": {"cpu": cpu_name(), "threads": threads, "torch": torch.__version__,
                      "timm": timm.__version__, "python": platform.python_version(),
                      "backend": auto_backend_name(), "commit": git_commit(),
                      "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "rounds": args.rounds,
                      "warmup": args.warmup, "iters": args.iters},
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
    return 0 if all(r["status"] != "not measured" for r in report["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
