"""Where the time of the HGRN models goes on a GPU: host cost per op and per model step, and
the profiler's tables at the goal points.

    hgrn-benchmark --report gpu-profile OUTDIR      # ~1 minute on one H100 / H200
    python -m hgrn_tools.measure.gpu_profile OUTDIR

1. **Ops**: ``hgrn::hgru`` forward at (256, 256, 384) bf16 'both' called four ways (the
   kernel wrapper alone, the public ``hgrn_core.hgru`` under ``auto`` and ``triton``, the
   op as TorchScript calls it) and ``hgrn::norm_gate`` at (256, 256, 768): per call, the
   host time to enqueue it (no sync) and the wall time with a sync at the end. Enqueue
   close to wall means the host, not the GPU, sets the pace.
2. **Models**, bf16 autocast, inference: tiny and small at 224 px (batch 64),
   hgrn_deit_tiny and deit_tiny at 896 px (batch 4 and 8) and 1246 / 1248 px (batch 8),
   hgrn_deit_small at 224 px (batch 256): enqueue
   and wall time per step, then one profiled step per HGRN point: the top entries by host
   self time and by GPU self time.

Writes OUTDIR/gpu_profile.txt (everything) and prints the per-call and per-step lines.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Callable, List, Optional, Sequence, Tuple

from ..model_factory import create_model, import_plugins
from .gpu_measure import environment

# the H200 runs of 2026-12-04 left two puzzles: at 224 px / batch 64 hgrn_deit_tiny took
# longer per step than hgrn_deit_small, and at 896 px the step time grew with the batch while
# at 1246 px it did not (docs/benchmarks.md)
MODEL_POINTS: Tuple[Tuple[str, int, int], ...] = (
    ("hgrn_deit_tiny", 224, 64), ("hgrn_deit_small", 224, 64), ("deit_tiny_patch16_224", 224, 64),
    ("hgrn_deit_tiny", 896, 4), ("hgrn_deit_tiny", 896, 8), ("deit_tiny_patch16_224", 896, 8),
    ("hgrn_deit_tiny", 1246, 8), ("deit_tiny_patch16_224", 1248, 8),
    ("hgrn_deit_small", 224, 256))


def host_and_wall_ms(fn: Callable[[], object], iters: int, warmup: int = 3) -> Tuple[float, float]:
    """Per call: host time to enqueue ``iters`` calls (no sync), and wall time to finish them."""
    import torch
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    host = time.perf_counter() - t0
    torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    return host / iters * 1e3, wall / iters * 1e3


def op_lines(device, iters: int = 50) -> List[str]:
    import torch
    import hgrn_core
    from hgrn_core.kernels import triton_hgru
    from hgrn_core.norm_gate_op import norm_gate
    g = torch.Generator(device=device).manual_seed(0)
    B, N, d = 256, 256, 384
    proj = torch.randn(B, N, 3 * d, device=device, dtype=torch.bfloat16, generator=g)
    lb = 0.9 * torch.rand(d, device=device, generator=g)
    tf, tr = (torch.randn(d, device=device, generator=g) for _ in range(2))
    h = torch.randn(B, N, 2 * d, device=device, dtype=torch.bfloat16, generator=g)
    gate, w = torch.randn_like(h), torch.ones(2 * d, device=device)
    calls = [
        ("hgru kernel wrapper", lambda: triton_hgru.hgru_forward(proj, lb, tf, tr, None, "both")),
        ("hgrn_core.hgru (auto)", lambda: hgrn_core.hgru(proj, lb, tf, tr)),
        ("hgrn_core.hgru (triton)", lambda: hgrn_core.hgru(proj, lb, tf, tr, backend="triton")),
        ("torch.ops.hgrn.hgru (auto)",
         lambda: torch.ops.hgrn.hgru(proj, lb, tf, tr, None, "both", "auto")),
        ("norm_gate (auto)", lambda: norm_gate(h, gate, w, None)),
    ]
    lines = []
    with torch.no_grad():
        for name, fn in calls:
            host, wall = host_and_wall_ms(fn, iters)
            lines.append(f"op {name:<28} host {host:7.3f} ms/call   wall {wall:7.3f} ms/call")
    return lines


def model_lines(device, points=MODEL_POINTS, iters: int = 10, top: int = 12) -> Tuple[List[str], List[str]]:
    import torch
    from torch.profiler import ProfilerActivity, profile
    summary, tables = [], []
    for label, side, batch in points:
        model = create_model(label, side).to(device).eval()
        x = torch.randn(batch, 3, side, side, device=device)
        with torch.no_grad(), torch.autocast("cuda", torch.bfloat16):
            host, wall = host_and_wall_ms(lambda: model(x), iters)
            summary.append(f"{label:<24} {side:>5}px b{batch:<4} host {host:8.2f} ms/step   "
                           f"wall {wall:8.2f} ms/step   {batch / wall * 1e3:9.1f} img/s")
            if label.startswith("hgrn"):
                with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                    model(x)
                    torch.cuda.synchronize()
                avg = prof.key_averages()
                for key in ("self_cpu_time_total", "self_cuda_time_total"):
                    tables.append(f"## {label} {side}px batch {batch}: by {key}\n"
                                  + avg.table(sort_by=key, row_limit=top, max_name_column_width=48))
        del model, x
        torch.cuda.empty_cache()
    return summary, tables


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="hgrn-benchmark --report gpu-profile",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("outdir", help="folder for gpu_profile.txt")
    args = p.parse_args(argv)
    import torch
    if not torch.cuda.is_available():
        print("error: hgrn-benchmark --report gpu-profile needs a CUDA GPU", file=sys.stderr)
        return 2
    import_plugins()
    device = torch.device("cuda")
    env = environment(device)
    head = [f"{env.get('device')}; torch {env.get('torch')}, Triton {env.get('triton')}, "
            f"commit {env.get('commit') or 'unknown'}, {env.get('date')}"]
    ops = op_lines(device)
    print("\n".join(head + ops), flush=True)
    summary, tables = model_lines(device)
    print("\n".join(summary), flush=True)
    os.makedirs(args.outdir, exist_ok=True)
    path = os.path.join(args.outdir, "gpu_profile.txt")
    with open(path, "w") as f:
        f.write("\n".join(head + ops + [""] + summary + [""] + tables) + "\n")
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
