"""Time the scan backends: forward and forward+backward, on named shapes.

    python -m tools.measure.bench_scan               # every backend usable here, default shapes
    python -m tools.measure.bench_scan --shapes deit-tiny long --backends reference torch
    python -m tools.measure.bench_scan --kind real --backends torch triton fla   # fla: chunk_hgrn, CUDA

Prints one row per (shape, backend, pass) with the median time, the ratio to the
``reference`` backend measured in the same run (where it ran), the bytes the op must
move at the least (docs/spec.md §4.2: read u, v, lam once, write the states once) and, on a GPU,
the achieved GB/s and its fraction of a device-to-device copy measured in the same run.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from hgrn_core import bidirectional_scan, complex_scan, list_backends, real_scan
from hgrn_core.backends import get_backend

SHAPES = {  # name: (B, N, D)
    "deit-tiny": (32, 256, 192),      # one HGRN-DeiT-Tiny layer at 224 px
    "deit-small": (32, 256, 384),     # one HGRN-DeiT-Small layer at 224 px
    "long": (4, 16384, 192),
    "deit-small-b128": (128, 256, 384),
    "long-384": (8, 16384, 384),
}
DEFAULT_SHAPES = ["deit-tiny", "deit-small", "long"]
# the reference loop costs ~3 Python steps per token, forward and backward: past this many
# seconds for one repetition, it is skipped (and the table says so)
REFERENCE_BUDGET_S = 60.0


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_time(fn, device, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def make_case(kind: str, backend: str, B: int, N: int, D: int, device, dtype):
    """Returns (forward, forward_backward) closures and the minimal bytes moved by each."""
    g = torch.Generator(device="cpu").manual_seed(0)
    make = lambda *shape: torch.randn(*shape, generator=g).to(device, dtype)  # noqa: E731
    lam = (0.5 + 0.5 * torch.rand(B, N, D, generator=g)).to(device, dtype)
    x, v = make(B, N, D), make(B, N, D)
    theta_f, theta_r = make(D).float(), make(D).float()
    leaves = [x, v, lam, theta_f, theta_r]
    elt = x.element_size()

    if backend == "fla":
        from fla.ops.hgrn import chunk_hgrn  # noqa: PLC0415 (optional, CUDA only)

        def run():
            return (chunk_hgrn(leaves[0], torch.log(leaves[2]))[0],)
    elif kind == "bidirectional":
        def run():
            return bidirectional_scan(*leaves, backend=backend)
    elif kind == "causal":
        def run():
            return complex_scan(*leaves[:4], backend=backend)
    else:
        def run():
            return (real_scan(leaves[0], leaves[2], backend=backend),)

    streams_in = {"bidirectional": 3, "causal": 3}.get(kind, 2)  # u, v, lam  |  x, lam
    streams_out = {"bidirectional": 2, "causal": 2}.get(kind, 1)  # hr, hi     |  h
    fwd_bytes = (streams_in + streams_out) * B * N * D * elt
    # backward: read the inputs and the output gradients, write the input gradients
    bwd_bytes = (streams_in + streams_out + streams_in) * B * N * D * elt

    def forward():
        with torch.no_grad():
            run()

    def forward_backward():
        for t in leaves:
            t.requires_grad_(True)
            t.grad = None
        outs = run()
        torch.autograd.backward(outs, [torch.ones_like(o) for o in outs])

    return forward, forward_backward, fwd_bytes, fwd_bytes + bwd_bytes


def copy_bandwidth(device, nbytes: int = 1 << 30) -> float:
    """GB/s of a device-to-device copy (read + write counted), the memory-bound ceiling."""
    src = torch.empty(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    t = median_time(lambda: dst.copy_(src), device, warmup=3, repeats=10)
    return 2 * nbytes / t / 1e9


def estimated_reference_seconds(N: int) -> float:
    return N * 150e-6  # measured order of magnitude on a 2-core CPU, forward + backward


def backends_for(device, names):
    if names:
        return names
    usable = []
    for name in list_backends():
        try:
            if get_backend(name).is_available(device) and not (
                    name == "triton" and device.type != "cuda"):
                usable.append(name)
        except ValueError:
            continue
    return usable


def run(args) -> list[dict]:
    device = torch.device(args.device if args.device != "auto" else
                          ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = getattr(torch, args.dtype)
    torch.set_num_threads(args.threads or torch.get_num_threads())
    backends = backends_for(device, args.backends)
    copy_gbs = copy_bandwidth(device) if device.type == "cuda" else None
    rows = []
    for shape_name in args.shapes:
        B, N, D = SHAPES[shape_name]
        ref_times = {}
        for backend in sorted(backends, key=lambda b: b != "reference"):  # reference first
            for pass_name in ("forward", "forward+backward"):
                row = dict(shape=shape_name, B=B, N=N, D=D, kind=args.kind, backend=backend,
                           dtype=args.dtype, device=str(device), passes=pass_name)
                if backend == "reference" and estimated_reference_seconds(N) > REFERENCE_BUDGET_S:
                    row["skipped"] = (f"reference would take about "
                                      f"{estimated_reference_seconds(N):.0f} s per repetition")
                    rows.append(row)
                    continue
                try:
                    fwd, fwdbwd, fwd_bytes, all_bytes = make_case(args.kind, backend, B, N, D,
                                                                 device, dtype)
                    fn, nbytes = (fwd, fwd_bytes) if pass_name == "forward" else (fwdbwd, all_bytes)
                    slow = backend == "reference" and N > 4096
                    t = median_time(fn, device, warmup=0 if slow else args.warmup,
                                    repeats=1 if slow else args.repeats)
                except Exception as err:  # a backend that cannot run this case: say why, go on
                    row["skipped"] = f"{type(err).__name__}: {err}".splitlines()[0][:120]
                    rows.append(row)
                    continue
                row.update(ms=t * 1e3, min_bytes=nbytes, gb_per_s=nbytes / t / 1e9)
                if backend == "reference":
                    ref_times[pass_name] = t
                if pass_name in ref_times:
                    row["speedup_vs_reference"] = ref_times[pass_name] / t
                if copy_gbs:
                    row["copy_gb_per_s"] = copy_gbs
                    row["fraction_of_copy"] = row["gb_per_s"] / copy_gbs
                rows.append(row)
                print_row(row, file=sys.stderr if args.json == "-" else sys.stdout)
    return rows


def print_row(row, file=sys.stdout):
    if "skipped" in row:
        text = f"skipped: {row['skipped']}"
    else:
        text = f"{row['ms']:10.2f} ms  {row['gb_per_s']:7.2f} GB/s"
        if "fraction_of_copy" in row:
            text += f"  {100 * row['fraction_of_copy']:5.1f}% of copy"
        if "speedup_vs_reference" in row:
            text += f"  x{row['speedup_vs_reference']:.1f} vs reference"
    print(f"{row['shape']:>16} B={row['B']:<4} N={row['N']:<6} D={row['D']:<4} "
          f"{row['backend']:>10} {row['passes']:>17}  {text}", file=file, flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--shapes", nargs="+", default=DEFAULT_SHAPES, choices=list(SHAPES))
    p.add_argument("--backends", nargs="+", default=None,
                   help="default: every backend usable on the device (fla: CUDA, if installed)")
    p.add_argument("--kind", default="bidirectional", choices=["bidirectional", "causal", "real"])
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="CPU threads (default: all)")
    p.add_argument("--json", default=None, help="write the rows as JSON to this path ('-': stdout)")
    args = p.parse_args(argv)
    if "fla" in (args.backends or []) and args.kind != "real":
        p.error("fla's chunk_hgrn is the real-valued causal scan: use --kind real")
    print(f"# device={args.device} dtype={args.dtype} kind={args.kind} "
          f"threads={args.threads or torch.get_num_threads()} torch={torch.__version__}",
          file=sys.stderr)
    rows = run(args)
    if args.json:
        text = json.dumps(rows, indent=1)
        if args.json == "-":
            print(text)
        else:
            with open(args.json, "w") as f:
                f.write(text)
    return rows


if __name__ == "__main__":
    main()
