"""Activation memory that autograd saves per image: the CPU measure of issue 9's memory goal.

    hgrn-benchmark --report saved-activations [OUTDIR]              # ~1 minute on 2 cores
    hgrn-benchmark --report saved-activations OUTDIR --cpu-speed    # + the CPU img/s goals (minutes)
    python -m hgrn_tools.measure.saved_activations [OUTDIR]

The measure: the bytes of the tensors autograd saves for backward in one bf16-autocast
training forward (``model.train()``, logits only) on the CPU, recorded with
``torch.autograd.graph.saved_tensors_hooks``. Each storage is counted once (keyed by
``untyped_storage().data_ptr()``: views and tensors saved by several ops are not counted
twice). Run at batch 4 and batch 2; (bytes(4) - bytes(2)) / 2 is the per-image figure, so
everything that does not grow with the batch (parameters, autocast's bf16 weight copies)
drops out. The table compares each HGRN model to DeiT at patch 14 (the same 256 tokens at
224 px); the goal is <= 1.3x.

The breakdown names the autograd node(s) that saved each storage (from walking the graph
after the forward: ``grad_fn._saved_*`` attributes and custom functions' ``saved_tensors``)
and groups storages by (nodes, dtype, trailing shape); its per-image column is the group's
batch-4 minus batch-2 bytes, halved, like the total.

``--cpu-speed`` adds the CPU throughput goals (hgrn_deit_tiny vs deit_tiny, fp32, at
224 / 448 / 896 px, batch 32 / 8 / 2, a fresh process per case, models interleaved: the
``hgrn-benchmark`` code and the protocol of docs/benchmarks.md), and beside each the same
ratio for hgrn_deit_tiny without its recurrence (``mixer=hgru_no_recurrence``): the most
that any scan implementation could reach there.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections import defaultdict
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch

MIB = 1024 * 1024
GOAL_RATIO = 1.3
# label -> (timm name, kwargs, label of the DeiT it is compared with, or None for a DeiT)
MODELS: Dict[str, Tuple[str, Dict[str, Any], Optional[str]]] = {
    "hgrn_deit_small": ("hgrn_deit_small", {}, "deit_small_p14"),
    "deit_small_p14": ("deit_small_patch16_224", {"patch_size": 14}, None),
    "hgrn_deit_tiny": ("hgrn_deit_tiny", {}, "deit_tiny_p14"),
    "deit_tiny_p14": ("deit_tiny_patch16_224", {"patch_size": 14}, None),
    # the 2-D HGRU models, by name (--models): their ratio to DeiT is information, no goal
    "hgrn2d_deit_small": ("hgrn2d_deit_small", {}, "deit_small_p14"),
    "hgrn2d_deit_tiny": ("hgrn2d_deit_tiny", {}, "deit_tiny_p14"),
}
DEFAULT_MODELS = ["hgrn_deit_small", "deit_small_p14", "hgrn_deit_tiny", "deit_tiny_p14"]
INFORMATION = {"hgrn2d_deit_small", "hgrn2d_deit_tiny"}  # measured beside, no goal
DISPLAY = {"deit_small_p14": "deit_small_patch16_224 at patch 14",
           "deit_tiny_p14": "deit_tiny_patch16_224 at patch 14"}
CPU_SPEED_POINTS = ((224, 32, 0.8), (448, 8, 1.0), (896, 2, 2.0))  # size, batch, goal
# hgrn_deit_tiny with its recurrence removed (hgrn_core.mixers.hgru_no_recurrence): the
# ceiling of any scan implementation, measured beside the goals
NO_RECURRENCE = "hgrn_deit_tiny:mixer=hgru_no_recurrence"


# -------------------------------------------------------------------------- the measure
def _key(t: torch.Tensor) -> Optional[int]:
    try:
        st = t.untyped_storage()
    except (RuntimeError, NotImplementedError, AttributeError):  # no storage (sparse, ...)
        return None
    return st.data_ptr() if st.nbytes() else None


class SavedTensorRecorder(contextlib.AbstractContextManager):
    """Records every tensor autograd saves inside the ``with`` block, one entry per storage.

    ``storages``: data_ptr -> (nbytes of the storage, the first tensor saved on it). The
    tensors are held (the pack hook returns them unchanged), so no storage is freed and
    reused under another saved tensor while recording.
    """

    def __init__(self):
        self.storages: Dict[int, Tuple[int, torch.Tensor]] = {}
        self.saves = 0
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def _pack(self, t):
        if isinstance(t, torch.Tensor):
            self.saves += 1
            key = _key(t)
            if key is not None and key not in self.storages:
                self.storages[key] = (t.untyped_storage().nbytes(), t)
        return t

    def __enter__(self):
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        return self._hooks.__exit__(*exc)

    @property
    def total_bytes(self) -> int:
        return sum(n for n, _ in self.storages.values())


def saving_nodes(outputs: Iterable[torch.Tensor]) -> Dict[int, List[str]]:
    """storage data_ptr -> names of the autograd nodes that saved a tensor on it, found by
    walking the graph behind ``outputs``."""
    names: Dict[int, set] = defaultdict(set)
    stack = [o.grad_fn for o in outputs if isinstance(o, torch.Tensor) and o.grad_fn is not None]
    seen = set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        found: List[torch.Tensor] = []
        for attr in dir(node):
            if attr.startswith("_saved_"):
                try:
                    val = getattr(node, attr)
                except Exception:  # noqa: BLE001 - freed or not a tensor
                    continue
                found += [v for v in (val if isinstance(val, (tuple, list)) else (val,))
                          if isinstance(v, torch.Tensor)]
        try:  # custom autograd.Function / torch.library ops
            found += [t for t in getattr(node, "saved_tensors", ()) or () if isinstance(t, torch.Tensor)]
        except Exception:  # noqa: BLE001
            pass
        for t in found:
            key = _key(t)
            if key is not None:
                names[key].add(node.name())
        stack.extend(nxt for nxt, _ in node.next_functions)
    return {k: sorted(v) for k, v in names.items()}


def record_forward(fn: Callable[[], Any]) -> Dict[str, Any]:
    """Run ``fn`` (a training forward) under the recorder: total bytes and per-storage rows."""
    with SavedTensorRecorder() as rec:
        out = fn()
    outs = out if isinstance(out, (tuple, list)) else (out,)
    nodes = saving_nodes(outs)
    tensors = [dict(nbytes=n, shape=tuple(t.shape), dtype=str(t.dtype).replace("torch.", ""),
                    nodes=nodes.get(k, ["?"]))
               for k, (n, t) in rec.storages.items()]
    res = dict(total_bytes=rec.total_bytes, storages=len(rec.storages), saves=rec.saves,
               tensors=tensors)
    del out, outs, rec
    return res


def _group_key(t: Dict[str, Any], batch: int, tokens: Iterable[int]) -> Tuple:
    """Storages saved by the same nodes with the same dtype and shape but the batch: a
    leading dimension of ``batch`` or ``batch * n`` (n in ``tokens``) counts as the batch,
    anything else (weights) keeps its whole shape and cancels in the difference."""
    shape = tuple(t["shape"])
    lead = shape[0] if shape else None
    scales = lead is not None and (lead == batch or (lead % batch == 0 and lead // batch in tokens))
    return ("+".join(t["nodes"]), t["dtype"], scales,
            (lead // batch if scales else None,) + shape[1:] if scales else shape)


def per_image(run: Callable[[int], Dict[str, Any]], batches: Tuple[int, int] = (2, 4),
              tokens: Iterable[int] = ()) -> Dict[str, Any]:
    """(bytes(b2) - bytes(b1)) / (b2 - b1) with ``run(batch)`` -> ``record_forward``'s dict;
    also the breakdown by group (``_group_key``), per image the same way. ``tokens``: the
    sequence lengths of the model (flattened (batch * tokens, C) activations)."""
    b1, b2 = batches
    tokens = set(tokens)
    small, large = run(b1), run(b2)
    groups: Dict[Tuple, Dict[str, Any]] = {}
    for sign, batch, res in ((-1, b1, small), (1, b2, large)):
        for t in res["tensors"]:
            g = groups.setdefault(_group_key(t, batch, tokens),
                                  dict(nodes=t["nodes"], dtype=t["dtype"], example_shape=None,
                                       count=0, diff=0))
            g["diff"] += sign * t["nbytes"]
            if sign > 0:
                g["count"] += 1
                g["example_shape"] = list(t["shape"])
    breakdown = sorted(({**g, "bytes_per_image": g.pop("diff") / (b2 - b1)} for g in groups.values()),
                       key=lambda g: -g["bytes_per_image"])
    return dict(bytes_per_image=(large["total_bytes"] - small["total_bytes"]) / (b2 - b1),
                batches=list(batches), total_bytes={b1: small["total_bytes"], b2: large["total_bytes"]},
                storages={b1: small["storages"], b2: large["storages"]}, breakdown=breakdown)


def _create(label: str, img_size: int):
    from ..model_factory import create_model, import_plugins
    import_plugins()
    name, kwargs, _ = MODELS[label]
    return create_model(name, img_size, **kwargs)


def measure_model(label: str, img_size: int = 224, batches: Tuple[int, int] = (2, 4),
                  amp: Optional[torch.dtype] = torch.bfloat16) -> Dict[str, Any]:
    """Saved bytes per image of one model's training forward (bf16 autocast on the CPU)."""
    torch.manual_seed(0)
    model = _create(label, img_size).train()

    def run(batch: int):
        x = torch.randn(batch, 3, img_size, img_size)

        def fwd():
            with torch.autocast("cpu", dtype=amp, enabled=amp is not None):
                return model(x)
        return record_forward(fwd)

    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    patch = patch[0] if isinstance(patch, (tuple, list)) else patch
    n = (img_size // patch) ** 2 if patch else 0
    t0 = time.perf_counter()
    res = per_image(run, batches, tokens=(n, n + 1) if n else ())
    res.update(label=label, model=MODELS[label][0], kwargs=MODELS[label][1], img_size=img_size,
               amp=str(amp).replace("torch.", "") if amp else "none",
               mib_per_image=res["bytes_per_image"] / MIB, seconds=time.perf_counter() - t0)
    return res


def compare(results: Dict[str, Dict[str, Any]], goal: float = GOAL_RATIO) -> List[Dict[str, Any]]:
    """Table rows: each model's MiB per image and, for the HGRN models, the ratio to the DeiT
    at patch 14 measured in the same run, against the goal."""
    rows = []
    for label, res in results.items():
        ref = MODELS.get(label, (None, None, None))[2]
        row = dict(label=label, model=DISPLAY.get(label, label), mib_per_image=res["mib_per_image"],
                   reference=ref, ratio=None, goal=None, status="")
        if ref is not None and ref in results:
            row["ratio"] = res["mib_per_image"] / results[ref]["mib_per_image"]
            if label in INFORMATION:
                row["status"] = "information (no goal)"
            else:
                row["goal"] = goal
                row["status"] = "holds" if row["ratio"] <= goal else "falls short"
        elif ref is not None:
            row["status"] = f"not measured ({DISPLAY.get(ref, ref)} not in this run)"
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- CPU speed
def cpu_speed(rounds: int = 2, threads: Optional[int] = None, warmup: int = 2, iters: int = 5,
              points=CPU_SPEED_POINTS, timeout: Optional[float] = None) -> List[Dict[str, Any]]:
    """hgrn_deit_tiny vs deit_tiny img/s on the CPU (fp32, fresh process per case, models
    interleaved, median over rounds) at the issue's three sizes, against its goals."""
    from . import benchmark
    models = ("hgrn_deit_tiny", "deit_tiny_patch16_224", NO_RECURRENCE)
    raw = []
    for r in range(rounds):
        for size, batch, _ in points:
            for model in models:
                case = dict(model=model, img_size=size, batch_size=batch, mode="infer",
                            device="cpu", amp="none", compile=False, backend=None,
                            threads=threads or os.cpu_count(), warmup=warmup, iters=iters,
                            optimizer="sgd", imports=[])
                rec = benchmark.run_case_subprocess(case, timeout)
                print(f"  round {r + 1}/{rounds} " + benchmark._line(rec), file=sys.stderr, flush=True)
                raw.append(rec)
    agg = benchmark.aggregate(raw)
    rows = []
    for size, batch, goal in points:
        a = next((x for x in agg if x["model"] == models[0] and x["img_size"] == size), None)
        b = next((x for x in agg if x["model"] == models[1] and x["img_size"] == size), None)
        c = next((x for x in agg if x["model"] == models[2] and x["img_size"] == size), None)
        row = dict(img_size=size, batch=batch, goal=goal, hgrn_img_per_s=None, deit_img_per_s=None,
                   ratio=None, status="not measured", bound_ratio=None)
        if a and b and a.get("img_per_s") and b.get("img_per_s"):
            row.update(hgrn_img_per_s=a["img_per_s"], deit_img_per_s=b["img_per_s"],
                       hgrn_rounds=a.get("img_per_s_rounds"), deit_rounds=b.get("img_per_s_rounds"),
                       ratio=a["img_per_s"] / b["img_per_s"])
            row["status"] = "holds" if row["ratio"] >= goal else "falls short"
        if b and c and b.get("img_per_s") and c.get("img_per_s"):
            # the same model without its recurrence: the most any scan could reach
            row["bound_ratio"] = c["img_per_s"] / b["img_per_s"]
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------- rendering
def format_table(rows: Sequence[Dict[str, Any]]) -> str:
    head = ["model", "MiB / image", "ratio to DeiT at patch 14", "goal", "result"]
    body = [[r["model"], f"{r['mib_per_image']:.1f}",
             "-" if r["ratio"] is None else f"{r['ratio']:.2f}x",
             "-" if r["goal"] is None else f"<= {r['goal']:g}x", r["status"] or "-"] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    fmt = lambda r: "  ".join(x.ljust(w) for x, w in zip(r, widths))  # noqa: E731
    return "\n".join([fmt(head), "  ".join("-" * w for w in widths)] + [fmt(b) for b in body])


def format_breakdown(res: Dict[str, Any], top: int = 8) -> str:
    lines = [f"{res['model']}{' ' + str(res['kwargs']) if res['kwargs'] else ''}: "
             f"{res['mib_per_image']:.1f} MiB per image; largest saved groups "
             f"(per image; count and example shape at batch {res['batches'][1]}):"]
    for g in res["breakdown"][:top]:
        lines.append(f"  {g['bytes_per_image'] / MIB:7.2f} MiB  {g['count']:3d} x "
                     f"{g['dtype']:<8} {str(tuple(g['example_shape'] or ())):<18} {g['nodes'] and '+'.join(g['nodes'])}")
    return "\n".join(lines)


def format_speed(rows: Sequence[Dict[str, Any]]) -> str:
    out = ["CPU img/s, hgrn_deit_tiny vs deit_tiny_patch16_224 (fp32, fresh process per case):"]
    for r in rows:
        if r["ratio"] is None:
            out.append(f"  {r['img_size']} px batch {r['batch']}: not measured")
            continue
        bound = ("" if r.get("bound_ratio") is None else
                 f"; without the recurrence {r['bound_ratio']:.2f}x")
        out.append(f"  {r['img_size']:>4} px batch {r['batch']:>2}: {r['hgrn_img_per_s']:7.2f} / "
                   f"{r['deit_img_per_s']:7.2f} img/s = {r['ratio']:.2f}x  (goal >= {r['goal']:g}x: "
                   f"{r['status']}{bound})")
    return "\n".join(out)


def format_markdown(report: Dict[str, Any]) -> str:
    env = report["env"]
    out = ["# Saved activations per image (CPU, bf16 autocast training forward)", "",
           f"- {env['cpu']} ({env['threads']} threads), torch {env['torch']}, timm {env['timm']}, "
           f"commit {env.get('commit') or 'unknown'}, {env['date']}",
           f"- {report['method']}", "",
           "| model | MiB / image | ratio to DeiT at patch 14 | goal | result |", "|---|---|---|---|---|"]
    for r in report["table"]:
        out.append(f"| {r['model']} | {r['mib_per_image']:.1f} | "
                   f"{'-' if r['ratio'] is None else format(r['ratio'], '.2f') + 'x'} | "
                   f"{'-' if r['goal'] is None else '<= ' + format(r['goal'], 'g') + 'x'} | "
                   f"{r['status'] or '-'} |")
    for res in report["models"].values():
        out += ["", "```", format_breakdown(res, report.get("top", 8)), "```"]
    if report.get("cpu_speed"):
        out += ["", "```", format_speed(report["cpu_speed"]), "```"]
    return "\n".join(out) + "\n"


METHOD = ("bytes autograd saves in one training forward (model.train(), logits only), "
          "torch.autograd.graph.saved_tensors_hooks, each storage once (by data_ptr), "
          "(batch 4 - batch 2) / 2 so that batch-independent tensors (autocast's weight copies) "
          "drop out")


# ------------------------------------------------------------------------------------ CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hgrn-benchmark --report saved-activations",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 2)[2])
    p.add_argument("outdir", nargs="?", default=None,
                   help="folder for saved_activations.json / .md (default: print only)")
    p.add_argument("--models", nargs="+", default=DEFAULT_MODELS, choices=list(MODELS),
                   help=f"default: {' '.join(DEFAULT_MODELS)} (the goal's models); also "
                        f"{' '.join(sorted(INFORMATION))}, whose ratio is information")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--amp", choices=["bf16", "none"], default="bf16")
    p.add_argument("--top", type=int, default=8, help="breakdown rows per model")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("--cpu-speed", action="store_true",
                   help="also the CPU img/s goals (hgrn_deit_tiny vs deit_tiny at 224/448/896; minutes)")
    p.add_argument("--rounds", type=int, default=2, help="rounds of --cpu-speed (median)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from .gpu_report import git_commit
    import platform
    import timm
    amp = torch.bfloat16 if args.amp == "bf16" else None
    results = {}
    for label in args.models:
        results[label] = measure_model(label, args.img_size, amp=amp)
        print(f"  {label}: {results[label]['mib_per_image']:.1f} MiB per image "
              f"({results[label]['seconds']:.1f} s)", file=sys.stderr, flush=True)
    from .benchmark import cpu_name
    report = {"tool": "hgrn-benchmark --report saved-activations", "method": METHOD,
              "env": {"cpu": cpu_name(), "threads": torch.get_num_threads(),
                      "torch": torch.__version__, "timm": timm.__version__,
                      "python": platform.python_version(), "commit": git_commit(),
                      "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "img_size": args.img_size,
                      "amp": args.amp},
              "table": compare(results), "models": results, "top": args.top}
    if args.cpu_speed:
        report["cpu_speed"] = cpu_speed(rounds=args.rounds, threads=args.threads)
    print(format_table(report["table"]))
    for res in results.values():
        print()
        print(format_breakdown(res, args.top))
    if report.get("cpu_speed"):
        print()
        print(format_speed(report["cpu_speed"]))
    if args.outdir:
        os.makedirs(args.outdir, exist_ok=True)
        for name, text in (("saved_activations.json", json.dumps(report, indent=1, default=str)),
                           ("saved_activations.md", format_markdown(report))):
            path = os.path.join(args.outdir, name)
            with open(path, "w") as f:
                f.write(text)
            print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
