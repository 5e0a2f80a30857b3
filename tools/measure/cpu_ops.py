"""The fused ops alone on the CPU: each backend's ``hgrn::hgru`` and ``hgrn::norm_gate``, forward
and backward, at hgrn_deit_tiny's layer shapes, against the bytes they must move.

    hgrn-benchmark --report cpu-ops [OUTDIR] [--threads 2] [--rounds 9]   # ~1 min, 2 cores
    python -m hgrn_tools.measure.cpu_ops [OUTDIR]

The shapes are one layer of hgrn_deit_tiny at the points of ``--report cpu-recurrence``
(patch 14, d = 192, complex, direction ``both`` with lower bound and phases; the projection a
column slice of the 5d-wide ``in_proj`` output; the norm-gate on W = 2d), fp32. Each backend's
methods (``hgru_forward`` ... ``norm_gate_backward``) are called directly: the op's dispatch
is not timed. Every round calls each (op, pass, backend) once in turn; a figure is the fastest
call. Beside it, the least bytes the pass must move (read every input once, write every output
once: hgru forward 20d bytes a token, backward 32d; norm-gate forward 12W, backward 20W) over
its time, and that as a fraction of a copy (read + write of a 64 MiB tensor, timed in the same
rounds): what "at memory speed" means here.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

# (label, batch, tokens): hgrn_deit_tiny at 224 px (16 x 16 patches) and 896 px (64 x 64)
SHAPES = (("224 px, batch 32", 32, 256), ("224 px, batch 8", 8, 256),
          ("896 px, batch 2", 2, 4096))
D = 192
EPS = 1e-5
# least bytes a token moves, per channel of d (hgru) or of W = 2d (norm-gate), fp32
FLOOR = {("hgru", "forward"): 20 * D, ("hgru", "backward"): 32 * D,
         ("norm_gate", "forward"): 12 * 2 * D, ("norm_gate", "backward"): 20 * 2 * D}
COPY_BYTES = 64 << 20


def cpu_backends() -> List[str]:
    """torch and the backend ``auto`` picks for CPU tensors, if another."""
    from hgrn_core.backends import auto_backend_name
    auto = auto_backend_name(torch.device("cpu"))
    return ["torch"] + ([auto] if auto != "torch" else [])


def make_calls(B: int, N: int, backend: str) -> Dict[tuple, Callable[[], Any]]:
    """(op, pass) -> a call of ``backend``'s method on one layer's tensors."""
    from hgrn_core.backends import get_backend
    be = get_backend(backend)
    g = torch.Generator().manual_seed(0)
    P = 5 * D
    proj = torch.randn(B, N, P, generator=g)[..., :3 * D]    # c (2d) and mu (d), in place
    lb, tf, tr = torch.rand(D, generator=g) * 0.5, torch.randn(D, generator=g), \
        torch.randn(D, generator=g)
    dh = torch.randn(B, N, 2 * D, generator=g)
    h = torch.randn(B, N, 2 * D, generator=g)
    gate = torch.randn(B, N, P, generator=g)[..., 3 * D:]
    w, b = torch.randn(2 * D, generator=g), torch.randn(2 * D, generator=g)
    _, mean, rstd = be.norm_gate_forward(h, gate, w, b, EPS)
    return {
        ("hgru", "forward"): lambda: be.hgru_forward(proj, lb, tf, tr, None, "both"),
        ("hgru", "backward"): lambda: be.hgru_backward(dh, None, proj, lb, tf, tr, None, "both"),
        ("norm_gate", "forward"): lambda: be.norm_gate_forward(h, gate, w, b, EPS),
        ("norm_gate", "backward"): lambda: be.norm_gate_backward(dh, h, gate, w, b, mean, rstd,
                                                                  EPS),
    }


def measure(rounds: int = 9, threads: Optional[int] = None, shapes=SHAPES,
            backends: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """On ``threads`` threads (restored after): the rows of the table and the copy's GB/s."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads or os.cpu_count())
    try:
        return _measure(rounds, shapes, backends)
    finally:
        torch.set_num_threads(before)


def _measure(rounds, shapes, backends) -> Dict[str, Any]:
    backends = list(backends or cpu_backends())
    src, dst = torch.empty(COPY_BYTES // 4), torch.empty(COPY_BYTES // 4)
    src.normal_()
    rows = []
    copy_s = []
    for label, B, N in shapes:
        calls = {be: make_calls(B, N, be) for be in backends}
        for fns in calls.values():  # compile / warm up
            for fn in fns.values():
                fn()
        times: Dict[tuple, List[float]] = {}
        for r in range(rounds):
            t0 = time.perf_counter()
            dst.copy_(src)
            copy_s.append(time.perf_counter() - t0)
            order = backends[r % len(backends):] + backends[:r % len(backends)]
            for key in calls[backends[0]]:
                for be in order:
                    t0 = time.perf_counter()
                    calls[be][key]()
                    times.setdefault((be,) + key, []).append(time.perf_counter() - t0)
        for op, pss in calls[backends[0]]:
            row = dict(shape=label, B=B, N=N, op=op, pass_=pss,
                       floor_bytes=B * N * FLOOR[op, pss])
            for be in backends:
                row[be] = min(times[be, op, pss]) * 1e3
            rows.append(row)
    copy_gbs = 2 * COPY_BYTES / min(copy_s) / 1e9
    for row in rows:
        for be in backends:
            row[f"{be} GB/s"] = row["floor_bytes"] / (row[be] * 1e-3) / 1e9
        row["of copy"] = row[f"{backends[-1]} GB/s"] / copy_gbs
    return dict(rows=rows, backends=backends, copy_gbs=copy_gbs)


def format_markdown(report: Dict[str, Any]) -> str:
    env, bes = report["env"], report["backends"]
    last = bes[-1]
    head = (["layer shape (B, N, d)", "op", "pass"] + [f"{b} ms" for b in bes] +
            ([f"{last} / torch speed-up"] if len(bes) > 1 else []) +
            [f"{last} GB/s (floor bytes)", "of copy"])
    out = ["# The fused ops on the CPU, by backend", "",
           f"- {env['cpu']}, {env['threads']} threads, torch {env['torch']}, commit "
           f"{env.get('commit') or 'unknown'}, {env['date']}",
           f"- fp32, hgrn_deit_tiny's layers (d = {D}, complex, 'both'); fastest of "
           f"{env['rounds']} interleaved calls; a copy moved {report['copy_gbs']:.1f} GB/s "
           f"(read + write) in the same rounds", "",
           "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in report["rows"]:
        cells = [f"{r['B']}, {r['N']}, {D} ({r['shape']})", f"`{r['op']}`", r["pass_"]]
        cells += [f"{r[b]:.2f}" for b in bes]
        if len(bes) > 1:
            cells.append(f"{r['torch'] / r[last]:.2f}x")
        cells += [f"{r[f'{last} GB/s']:.1f}", f"{r['of copy']:.0%}"]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hgrn-benchmark --report cpu-ops",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 2)[2])
    p.add_argument("outdir", nargs="?", default=None,
                   help="folder for cpu_ops.json / .md (default: print only)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("--rounds", type=int, default=9)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from .benchmark import cpu_name
    from .gpu_measure import git_commit
    threads = args.threads or os.cpu_count()
    report = measure(rounds=args.rounds, threads=threads)
    report["tool"] = "hgrn-benchmark --report cpu-ops"
    report["env"] = {"cpu": cpu_name(), "threads": threads, "torch": torch.__version__,
                     "commit": git_commit(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                     "rounds": args.rounds}
    text = format_markdown(report)
    print(text)
    if args.outdir:
        os.makedirs(args.outdir, exist_ok=True)
        for name, body in (("cpu_ops.json", json.dumps(report, indent=1, default=str)),
                           ("cpu_ops.md", text)):
            with open(os.path.join(args.outdir, name), "w") as f:
                f.write(body)
            print(f"wrote {os.path.join(args.outdir, name)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
