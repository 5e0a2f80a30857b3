"""Sweep the fused HGRU kernel's launch configurations on a GPU: which tile shape is fastest.

    hgrn-benchmark --report tune-hgru OUTDIR             # ~3 minutes on one H100
    hgrn-benchmark --report tune-hgru OUTDIR --quick     # one small shape, ~1 minute
    python -m hgrn_tools.measure.tune_hgru OUTDIR

For each pass of ``hgrn::hgru`` (the forward; the backward alone, given the forward's
inputs) and shape ((256, 256, 384) and (8, 16384, 384), bf16, bidirectional, with a lower
bound and both phases), every configuration of a small grid -- BLOCK_T x VEC x prefetch,
with BLOCK_D = 32 VEC and one warp per program (the layout of docs/triton.md) -- is

* checked: its outputs against those of the default configuration (relative to their
  scale; a configuration that disagrees is reported and never chosen), and
* timed: median of ``iters`` calls with the L2 cache flushed before each; GB/s counts the
  bytes the pass must move (forward 5d values per token, backward 8d: read c, mu, dh, write
  dc, dmu; 2 bytes each) against a device-to-device copy timed in the same run.

It prints one row per configuration, the best per pass and shape, and the *recommended*
configuration per pass (the one that agrees everywhere with the least geometric-mean time
relative to each shape's best), and writes tune_hgru.json and tune_hgru.md into OUTDIR
(after every row, so a run stopped from outside leaves what it measured). To try the
recommendation: ``HGRN_HGRU_CONFIG=OUTDIR/tune_hgru.json`` (the kernels read it); to adopt
it, put it into the row of the GPU's capability in hgrn_core/kernels/triton_hgru_configs.py
with the device that measured it (and run tests/test_triton_hgru.py on the GPU).
A time budget (``--budget``, default 240 s) skips what does not fit; skipped rows say so.
``--cpu-smoke`` runs the same code on the CPU in Triton's interpreter with tiny shapes
(tests of this tool; the times mean nothing).
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import itertools
import json
import math
import os
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .gpu_measure import MIB, _cleanup, _err, copy_bandwidth, environment, is_oom, time_op

PASSES = ("forward", "backward")
BYTES_PER_TOKEN_CHANNEL = {"forward": 5, "backward": 8}  # values of the activation dtype


@dataclasses.dataclass(frozen=True)
class Plan:
    name: str
    shapes: Tuple[Tuple[int, int, int], ...]
    block_t: Tuple[int, ...]
    vec: Tuple[int, ...]
    prefetch: Tuple[bool, ...]
    warmup: int
    iters: int
    copy_bytes: int
    budget_s: float
    tolerance: float = 2e-2  # bf16 outputs, relative to their largest magnitude


PLANS = {
    "full": Plan("full", shapes=((256, 256, 384), (8, 16384, 384)), block_t=(4, 8, 16),
                 vec=(2, 4), prefetch=(False, True), warmup=2, iters=10,
                 copy_bytes=1024 * MIB, budget_s=240.0),
    "quick": Plan("quick", shapes=((64, 256, 384),), block_t=(4, 8), vec=(2, 4),
                  prefetch=(False, True), warmup=1, iters=5, copy_bytes=256 * MIB,
                  budget_s=90.0),
    "cpu-smoke": Plan("cpu-smoke", shapes=((1, 19, 6),), block_t=(2, 4), vec=(2,),
                      prefetch=(False, True), warmup=0, iters=1, copy_bytes=MIB,
                      budget_s=120.0),
}


def configs(plan: Plan) -> List[Dict[str, Any]]:
    return [dict(block_t=t, vec=v, block_d=32 * v, num_warps=1, prefetch=p)
            for t, v, p in itertools.product(plan.block_t, plan.vec, plan.prefetch)]


def _inputs(shape, device, seed: int = 0):
    import torch
    B, N, d = shape
    g = torch.Generator(device=device).manual_seed(seed)
    proj = torch.randn(B, N, 3 * d, generator=g, device=device, dtype=torch.bfloat16)
    lb = 0.9 * torch.rand(d, generator=g, device=device)
    tf = torch.randn(d, generator=g, device=device)
    tr = torch.randn(d, generator=g, device=device)
    dh = torch.randn(B, N, 2 * d, generator=g, device=device, dtype=torch.bfloat16)
    return proj, lb, tf, tr, dh


def _run_pass(kernels, pass_name: str, proj, lb, tf, tr, dh):
    """The pass's outputs (the tensors that are not None)."""
    if pass_name == "forward":
        out = kernels.hgru_forward(proj, lb, tf, tr, None, "both")
    else:
        out = kernels.hgru_backward(dh, None, proj, lb, tf, tr, None, "both")
    return [t for t in out if t is not None]


def _disagreement(got, want) -> float:
    """Largest |got - want| over the largest |want|, across the outputs."""
    worst = 0.0
    for a, b in zip(got, want):
        scale = b.float().abs().max().item() or 1.0
        worst = max(worst, (a.float() - b.float()).abs().max().item() / scale)
    return worst


def _defaults(kernels, device) -> Dict[str, Dict[str, Any]]:
    """The configurations the references run with (the interpreter has its own)."""
    if device.type == "cuda" and not kernels._interpreting():
        return {"forward": kernels.gpu_config(device, False),
                "backward": kernels.gpu_config(device, True)}
    return {"forward": dict(kernels.INTERP), "backward": dict(kernels.INTERP)}


def sweep(plan: Plan, device, log=print, checkpoint=None) -> Dict[str, Any]:
    """Every row of the plan; ``checkpoint(result)`` after each (the CLI writes the report
    so far, so that a run killed from outside still leaves one)."""
    from hgrn_core.kernels import triton_hgru as kernels

    deadline = time.monotonic() + plan.budget_s
    result: Dict[str, Any] = {"plan": dataclasses.asdict(plan), "env": environment(device),
                              "defaults": _defaults(kernels, device),
                              "copy": {}, "rows": []}
    try:
        result["copy"] = copy_bandwidth(plan.copy_bytes, device, plan.warmup, max(plan.iters, 3))
        log(f"device-to-device copy: {result['copy']['gb_per_s']:.0f} GB/s")
    except Exception as err:  # noqa: BLE001 - the sweep goes on without the fraction
        result["copy"] = {"status": "error", "error": _err(err)}
    copy_gbs = result["copy"].get("gb_per_s")
    for shape in plan.shapes:
        B, N, d = shape
        inputs = _inputs(shape, device)
        for pass_name in PASSES:
            run = functools.partial(_run_pass, kernels, pass_name, *inputs)
            reference = run()  # the default configuration
            nbytes = BYTES_PER_TOKEN_CHANNEL[pass_name] * B * N * d * inputs[0].element_size()
            for cfg in configs(plan):
                row = dict(pass_=pass_name, shape=list(shape), config=cfg, min_bytes=nbytes,
                           status="ok", error="")
                if time.monotonic() > deadline:
                    row["status"] = "skipped (budget)"
                    result["rows"].append(row)
                    continue
                forced = {f"{'fwd' if pass_name == 'forward' else 'bwd'}_{k}": v
                          for k, v in cfg.items()}
                try:
                    with kernels.override_config(**forced):
                        row["disagreement"] = _disagreement(run(), reference)
                        if row["disagreement"] > plan.tolerance:
                            row["status"] = "mismatch"
                        else:
                            ms = time_op(run, plan.warmup, plan.iters, device)
                            row.update(ms=ms, gb_per_s=nbytes / ms / 1e6)
                            if copy_gbs:
                                row["fraction_of_copy"] = row["gb_per_s"] / copy_gbs
                except Exception as err:  # noqa: BLE001 - a config that fails to launch is a row
                    row.update(status="oom" if is_oom(err) else "error", error=_err(err))
                result["rows"].append(row)
                log(_row_line(row))
                if checkpoint is not None:
                    checkpoint(_summarised(result, device))
            del reference, run
        del inputs
        _cleanup(device)
    return _summarised(result, device)


def _summarised(result: Dict[str, Any], device) -> Dict[str, Any]:
    rec = recommended(result["rows"])
    if rec:
        env = result["env"]
        rec["measured"] = (f"{env.get('device')} (capability {env.get('capability')}), "
                           f"Triton {env.get('triton')}, {env.get('date', '')}".strip(", "))
    return dict(result, best=best_configs(result["rows"]), recommended=rec)


def recommended(rows: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """Per pass, the configuration with the least geometric mean over the shapes of its time
    relative to the shape's best, among those measured and agreeing on every shape the pass
    was measured at; a pass with no such configuration is left out."""
    out: Dict[str, Any] = {}
    for pass_name in PASSES:
        mine = [r for r in rows if r["pass_"] == pass_name]
        shapes = {tuple(r["shape"]) for r in mine if r["status"] == "ok" and r.get("ms")}
        best = {s: min(r["ms"] for r in mine if tuple(r["shape"]) == s and r["status"] == "ok"
                       and r.get("ms")) for s in shapes}
        scores: Dict[str, Tuple[float, Dict[str, Any]]] = {}
        for key in {json.dumps(r["config"], sort_keys=True) for r in mine}:
            ok = {tuple(r["shape"]): r["ms"] for r in mine
                  if json.dumps(r["config"], sort_keys=True) == key and r["status"] == "ok"
                  and r.get("ms")}
            if not shapes or set(ok) != shapes:
                continue
            logs = [math.log(ok[s] / best[s]) for s in shapes]
            scores[key] = (math.exp(sum(logs) / len(logs)), json.loads(key))
        if scores:
            out[pass_name] = dict(min(scores.values(), key=lambda v: v[0])[1])
    return out


def best_configs(rows: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The fastest configuration that agrees with the default, per (pass, shape)."""
    best: Dict[Tuple[str, Tuple[int, ...]], Dict[str, Any]] = {}
    for r in rows:
        if r["status"] != "ok" or r.get("ms") is None:
            continue
        key = (r["pass_"], tuple(r["shape"]))
        if key not in best or r["ms"] < best[key]["ms"]:
            best[key] = r
    return [best[k] for k in sorted(best)]


# ---------------------------------------------------------------------------- rendering
def _cfg(c: Dict[str, Any]) -> str:
    return (f"{c['block_t']}x{c['block_d']} VEC {c['vec']}"
            f"{' prefetch' if c['prefetch'] else ''}")


def _row_line(r: Dict[str, Any]) -> str:
    head = f"  {r['pass_']:<8} {'x'.join(map(str, r['shape'])):<14} {_cfg(r['config']):<22}"
    if r["status"] != "ok":
        extra = r.get("error") or (f"off by {r['disagreement']:.2e}" if "disagreement" in r else "")
        return f"{head} {r['status'].upper()} {extra}"
    frac = f"  {100 * r['fraction_of_copy']:.0f}% of copy" if r.get("fraction_of_copy") else ""
    return f"{head} {r['ms']:8.3f} ms {r['gb_per_s']:7.0f} GB/s{frac}"


def format_markdown(result: Dict[str, Any]) -> str:
    env, copy = result["env"], result.get("copy") or {}
    out = ["# hgrn::hgru launch configurations", "",
           f"- {env.get('device')}; torch {env.get('torch')}, Triton {env.get('triton')}",
           f"- copy {copy.get('gb_per_s', 0):.0f} GB/s; defaults: forward "
           f"{_cfg(dict(result['defaults']['forward']))}, backward "
           f"{_cfg(dict(result['defaults']['backward']))}", "",
           "## Best per pass and shape", "",
           "| pass | shape | config | ms | GB/s | of copy |", "|---|---|---|---|---|---|"]
    for r in result.get("best", []):
        frac = f"{100 * r['fraction_of_copy']:.0f}%" if r.get("fraction_of_copy") else "-"
        out.append(f"| {r['pass_']} | {tuple(r['shape'])} | {_cfg(r['config'])} | "
                   f"{r['ms']:.3f} | {r['gb_per_s']:.0f} | {frac} |")
    rec = result.get("recommended") or {}
    out += ["", "## Recommended (every shape; HGRN_HGRU_CONFIG=tune_hgru.json runs it)", ""]
    out += [f"- {p}: {_cfg(rec[p])}" for p in PASSES if p in rec] or ["- none measured"]
    out += ["", "## Every configuration", "", "```"]
    out += [_row_line(r) for r in result["rows"]]
    out += ["```"]
    return "\n".join(out) + "\n"


def write(result: Dict[str, Any], outdir: str) -> List[str]:
    os.makedirs(outdir, exist_ok=True)
    paths = [os.path.join(outdir, "tune_hgru.json"), os.path.join(outdir, "tune_hgru.md")]
    with open(paths[0], "w") as f:
        json.dump(result, f, indent=1)
    with open(paths[1], "w") as f:
        f.write(format_markdown(result))
    return paths


# ------------------------------------------------------------------------------------ CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hgrn-benchmark --report tune-hgru",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 2)[2])
    p.add_argument("outdir", help="folder for tune_hgru.json / .md")
    p.add_argument("--quick", action="store_true", help="one small shape, a smaller grid")
    p.add_argument("--budget", type=float, default=None, help="seconds for the sweep")
    p.add_argument("--shape", action="append", default=None, metavar="B,N,D",
                   help="sweep this shape instead of the plan's (repeatable)")
    p.add_argument("--cpu-smoke", action="store_true",
                   help="the CPU in Triton's interpreter, tiny shapes (tests of this tool)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.cpu_smoke:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported
    import torch
    if args.cpu_smoke:
        device, plan = torch.device("cpu"), PLANS["cpu-smoke"]
    elif not torch.cuda.is_available():
        print("error: hgrn-benchmark --report tune-hgru needs a CUDA GPU "
              "(--cpu-smoke runs the tool's code on the CPU)", file=sys.stderr)
        return 2
    else:
        device, plan = torch.device("cuda"), PLANS["quick" if args.quick else "full"]
    if args.budget is not None:
        plan = dataclasses.replace(plan, budget_s=args.budget)
    if args.shape:
        try:
            shapes = tuple(tuple(int(v) for v in s.split(",")) for s in args.shape)
        except ValueError:
            shapes = ()
        if not shapes or any(len(s) != 3 or min(s) < 1 for s in shapes):
            print(f"error: --shape takes B,N,D (three positive integers), got {args.shape}",
                  file=sys.stderr)
            return 2
        plan = dataclasses.replace(plan, shapes=shapes)
    result = sweep(plan, device, log=lambda s: print(s, file=sys.stderr, flush=True),
                   checkpoint=lambda partial: write(partial, args.outdir))
    print(format_markdown(result))
    for path in write(result, args.outdir):
        print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
