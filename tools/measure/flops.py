"""Parameters, GMACs and GFLOPs of timm models (HGRN and timm's own), counted with fvcore.

    hgrn-flops hgrn_deit_tiny deit_tiny_patch16_224 --img-size 224 448 --out flops.json
    python -m tools.measure.flops hgrn_deit_small --by-module 2 --out flops.csv

What is counted (conventions, also written into every JSON report):

* fvcore counts one multiply-add as one "flop"; this tool calls that unit a MAC and
  reports GMACs = MACs / 1e9 and GFLOPs = 2 x GMACs.
* Linear / conv / matmul: fvcore's own handles (bias adds not counted).
  Norms: fvcore's estimate, 5 per element with an affine, 4 without.
* The HGRN scans (custom ops ``hgrn::*``), counted from the op's input shapes (B, N, D),
  per batch element, token and channel (docs/spec.md §4.1):
    - ``hgrn::complex_scan``: 6 MACs = 4 for the complex multiply-add
      (hr = a*hr - b*hi + u, hi = a*hi + b*hr + v: 4 real multiplies, each paired with
      an add) + 2 for the gate arithmetic a = lam*cos(theta), b = lam*sin(theta)
      (cos/sin of theta are per channel, not per token: not counted).
    - ``hgrn::bidirectional_scan``: two complex scans (12) + 2 adds summing the two
      directions (real and imaginary part) = 14 MACs.
    - ``hgrn::real_scan``: 1 MAC (h = lam*h + x).
* The fused HGRU ops, counted as the scans and the norm they replace:
    - ``hgrn::hgru`` (gates + scans, input ``proj`` (B, N, W + d)): per (B, N, d) 14 MACs
      bidirectional complex, 6 one complex direction, 1 per direction real; the gates
      (sigmoid, SiLU, (1 - lam) c) are elementwise, as uncounted as before.
    - ``hgrn::hgru2d`` (the 2-D HGRU over a patch grid, same ``proj``): twice ``hgrn::hgru``
      for the same direction and phases, 28 / 12 / 2 per direction real per (B, N, d): the
      1-D scans run along every row and every column, each token in one row and one column.
      The sum of the two axes is an elementwise add, not counted (as the real-valued
      sum of directions). fvcore traces the model (``torch.jit.trace``), where the HGRU2d
      mixer runs ``hgrn::hgru`` on its rows and columns itself (hgrn_core/mixers/hgru2d.py):
      there the same count arrives as two ``hgrn::hgru`` calls per block.
    - ``hgrn::norm_gate`` (LayerNorm(h) * SiLU(gate), h (B, N, W)): the norm's 5 per
      element with an affine (4 without); the gating product is elementwise, not counted.
* ``aten::scaled_dot_product_attention`` (timm's fused attention), which fvcore would
  skip: B*H*Nq*Nk*(Dqk + Dv) MACs for the two matmuls; the softmax is not counted.
* Everything else fvcore could not count (activations, elementwise gates, softmax,
  means, ...) is *not* in the totals and is listed per op with its number of calls,
  as are modules that were never called. fvcore also silently ignores pure data-movement
  ops (cat, view, expand, copy, ...) by design.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import sys
import warnings
from collections import Counter
from typing import Any, Dict, List, Optional, Sequence

import torch

from ..model_factory import create_model, import_plugins

# ----------------------------------------------------------------------- scan MAC formula
#: MACs per (batch element, token, channel) of each scan op; see the module docstring.
COMPLEX_SCAN_MACS = 4 + 2           # complex multiply-add + decay a, b from lam
BIDIRECTIONAL_SCAN_MACS = 2 * COMPLEX_SCAN_MACS + 2  # two directions + their sum
REAL_SCAN_MACS = 1

CONVENTIONS = {
    "unit": "fvcore counts one multiply-add as one flop; reported here as MACs. "
            "GMACs = MACs/1e9, GFLOPs = 2*GMACs.",
    "hgrn::complex_scan": f"{COMPLEX_SCAN_MACS} MACs per batch*token*channel "
                          "(4 complex multiply-add + 2 for a=lam*cos(theta), b=lam*sin(theta))",
    "hgrn::bidirectional_scan": f"{BIDIRECTIONAL_SCAN_MACS} MACs per batch*token*channel "
                                "(2 directions x 6 + 2 adds summing them)",
    "hgrn::real_scan": f"{REAL_SCAN_MACS} MAC per batch*token*channel (h = lam*h + x)",
    "hgrn::hgru": "as the scans it fuses: 14 MACs per batch*token*channel bidirectional "
                  "complex, 6 one complex direction, 1 per direction real; gates not counted",
    "hgrn::hgru2d": "twice hgrn::hgru for the same direction (rows and columns): 28 MACs per "
                    "batch*token*channel bidirectional complex, 12 one complex direction, 2 per "
                    "direction real; the sum of the two axes not counted. A traced HGRU2d mixer "
                    "(fvcore's trace) shows the same as two hgrn::hgru calls",
    "hgrn::norm_gate": "as a LayerNorm of h: 5 per element with affine, 4 without",
    "aten::scaled_dot_product_attention": "B*H*Nq*Nk*(Dqk+Dv) MACs (QK^T and AV); softmax not counted",
    "norms": "fvcore estimate: 5 per element with affine, 4 without",
    "not_counted": "ops listed under skipped_ops are not in the totals; fvcore also ignores "
                   "data-movement ops (cat, view, expand, copy, ...) by design",
}


def scan_macs(op: str, shape: Sequence[int]) -> int:
    """MACs of one call of scan ``op`` whose first input has shape (B, N, D)."""
    per = {"hgrn::complex_scan": COMPLEX_SCAN_MACS,
           "hgrn::bidirectional_scan": BIDIRECTIONAL_SCAN_MACS,
           "hgrn::real_scan": REAL_SCAN_MACS}[op]
    return per * math.prod(int(s) for s in shape)


def _shape(val: Any) -> Optional[List[int]]:
    from fvcore.nn.jit_handles import get_shape
    return get_shape(val)


def _scan_handle(op: str):
    def handle(inputs: List[Any], outputs: List[Any]) -> int:
        shape = _shape(inputs[0])  # u (complex, bidirectional) or x (real): (B, N, D)
        if shape is None:
            raise ValueError(f"{op}: input shape unknown to the tracer")
        return scan_macs(op, shape)
    handle.__name__ = f"{op.split('::')[1]}_macs"
    return handle


def _is_none(val: Any) -> bool:
    return val.type().kind() == "NoneType"


def hgru_macs(shape: Sequence[int], complex_: bool, direction: str) -> int:
    """MACs of one ``hgrn::hgru`` call whose ``proj`` has shape (B, N, W + d)."""
    B, N, P = (int(s) for s in shape)
    both = direction == "both"
    d = P // (3 if complex_ else 2)
    if complex_:
        per = BIDIRECTIONAL_SCAN_MACS if both else COMPLEX_SCAN_MACS
    else:
        per = REAL_SCAN_MACS * (2 if both else 1)
    return per * B * N * d


def hgru2d_macs(shape: Sequence[int], complex_: bool, direction: str) -> int:
    """MACs of one ``hgrn::hgru2d`` call (``proj`` (B, N, W + d), any grid): the 1-D op's
    scans along the rows and along the columns, each over all N tokens."""
    return 2 * hgru_macs(shape, complex_, direction)


def _complex_phases(inputs: List[Any]) -> bool:
    return not (_is_none(inputs[2]) and _is_none(inputs[3]))


def hgru_handle(inputs: List[Any], outputs: List[Any]) -> int:
    """hgrn::hgru(proj, lower_bound, theta_f, theta_r, h0, direction, backend)."""
    return hgru_macs(_shape(inputs[0]), _complex_phases(inputs), inputs[5].toIValue())


def hgru2d_handle(inputs: List[Any], outputs: List[Any]) -> int:
    """hgrn::hgru2d(proj, lower_bound, theta_f, theta_r, grid_width, direction, backend)."""
    return hgru2d_macs(_shape(inputs[0]), _complex_phases(inputs), inputs[5].toIValue())


def norm_gate_handle(inputs: List[Any], outputs: List[Any]) -> int:
    """hgrn::norm_gate(h, gate, weight, bias, eps, backend): as fvcore counts a LayerNorm."""
    return math.prod(_shape(inputs[0])) * (4 if _is_none(inputs[2]) else 5)


def sdpa_handle(inputs: List[Any], outputs: List[Any]) -> int:
    """aten::scaled_dot_product_attention(q, k, v, ...): q (..., Nq, E), k (..., Nk, E),
    v (..., Nk, Ev)."""
    q, k, v = (_shape(t) for t in inputs[:3])
    batch = math.prod(q[:-2])
    return batch * q[-2] * k[-2] * (q[-1] + v[-1])


EXTRA_HANDLES = {
    "hgrn::complex_scan": _scan_handle("hgrn::complex_scan"),
    "hgrn::bidirectional_scan": _scan_handle("hgrn::bidirectional_scan"),
    "hgrn::real_scan": _scan_handle("hgrn::real_scan"),
    "hgrn::hgru": hgru_handle,
    "hgrn::hgru2d": hgru2d_handle,
    "hgrn::norm_gate": norm_gate_handle,
    "aten::scaled_dot_product_attention": sdpa_handle,
}


# ------------------------------------------------------------------------------- models
def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def analyse(model: torch.nn.Module, inputs: torch.Tensor):
    """fvcore's FlopCountAnalysis with the extra handles, warnings off (we list instead)."""
    from fvcore.nn import FlopCountAnalysis
    fa = FlopCountAnalysis(model, inputs)
    for op, fn in EXTRA_HANDLES.items():
        fa.set_op_handle(op, fn)
    fa.unsupported_ops_warnings(False)
    fa.uncalled_modules_warnings(False)
    fa.tracer_warnings("none")
    return fa


def _uncalled(model: torch.nn.Module, names) -> Dict[str, Any]:
    """Modules the trace never entered: those holding parameters by name (their cost is
    missing from the totals); parameter-free ones (Identity, Dropout, ...) by type."""
    mods = dict(model.named_modules())
    with_params = sorted(n for n in names if any(True for _ in mods[n].parameters()))
    free = Counter(type(mods[n]).__name__ for n in names if n not in with_params)
    return {"uncalled_modules": with_params,
            "uncalled_parameter_free_modules": dict(sorted(free.items()))}


def _depth(name: str) -> int:
    return 0 if name == "" else name.count(".") + 1


def measure(name: str, img_size: int, batch_size: int = 1, *, backend: Optional[str] = None,
            by_module: Optional[int] = None, in_chans: int = 3,
            model: Optional[torch.nn.Module] = None) -> Dict[str, Any]:
    """One report record: params, MACs (total for the batch), per-op counts, skipped ops,
    uncalled modules and (``by_module=depth``) the per-module breakdown."""
    if model is None:
        model = create_model(name, img_size, backend)
    model.eval()
    x = torch.randn(batch_size, in_chans, img_size, img_size)
    fa = analyse(model, x)
    with torch.no_grad():
        macs = int(fa.total())
    rec: Dict[str, Any] = {
        "model": name, "img_size": img_size, "batch_size": batch_size,
        "params": count_params(model),
        "macs": macs, "gmacs": macs / 1e9, "gflops": 2 * macs / 1e9,
        "gmacs_per_image": macs / 1e9 / batch_size,
        "macs_by_op": dict(sorted(fa.by_operator().items(), key=lambda kv: -kv[1])),
        "skipped_ops": dict(sorted(fa.unsupported_ops().items())),
    }
    rec.update(_uncalled(model, fa.uncalled_modules()))
    if by_module is not None:
        params = {n: count_params(m) for n, m in model.named_modules()}
        rec["by_module"] = [
            {"module": n, "params": params.get(n, 0), "macs": int(v), "gmacs": v / 1e9,
             "skipped_ops": dict(fa.unsupported_ops(n))}
            for n, v in fa.by_module().items() if 0 < _depth(n) <= by_module]
    return rec


# ------------------------------------------------------------------------------ reports
CSV_FIELDS = ["model", "img_size", "batch_size", "module", "params", "macs", "gmacs",
              "gflops", "gmacs_per_image", "skipped_ops", "uncalled_modules",
              "uncalled_parameter_free_modules", "error"]


def _ops_str(ops: Dict[str, int]) -> str:
    return ";".join(f"{k}:{v}" for k, v in ops.items())


def csv_rows(records: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    rows = []
    for r in records:
        base = {k: r.get(k, "") for k in ("model", "img_size", "batch_size")}
        if "error" in r:
            rows.append({**base, "module": "", "error": r["error"]})
            continue
        rows.append({**base, "module": "", "params": r["params"], "macs": r["macs"],
                     "gmacs": f"{r['gmacs']:.6f}", "gflops": f"{r['gflops']:.6f}",
                     "gmacs_per_image": f"{r['gmacs_per_image']:.6f}",
                     "skipped_ops": _ops_str(r["skipped_ops"]),
                     "uncalled_modules": ";".join(r["uncalled_modules"]),
                     "uncalled_parameter_free_modules":
                         _ops_str(r.get("uncalled_parameter_free_modules", {})),
                     "error": ""})
        for m in r.get("by_module", []):
            rows.append({**base, "module": m["module"], "params": m["params"],
                         "macs": m["macs"], "gmacs": f"{m['gmacs']:.6f}",
                         "gflops": f"{2 * m['gmacs']:.6f}",
                         "gmacs_per_image": f"{m['gmacs'] / r['batch_size']:.6f}",
                         "skipped_ops": _ops_str(m["skipped_ops"]), "error": ""})
    return rows


def write_reports(records: List[Dict[str, Any]], paths: Sequence[str]) -> None:
    for path in paths:
        d = os.path.dirname(path)
        if d:
            os.makedirs(d, exist_ok=True)
        if path.endswith(".csv"):
            with open(path, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=CSV_FIELDS, restval="")
                w.writeheader()
                w.writerows(csv_rows(records))
        elif path.endswith(".json"):
            with open(path, "w") as f:
                json.dump({"tool": "hgrn-flops", "conventions": CONVENTIONS,
                           "torch": torch.__version__, "results": records}, f, indent=2)
        else:
            raise ValueError(f"--out {path!r}: use a .json or .csv file name")


def format_table(records: List[Dict[str, Any]]) -> str:
    head = f"{'model':<28} {'img':>5} {'batch':>5} {'params (M)':>11} {'GMACs':>10} {'GFLOPs':>10}"
    lines = [head, "-" * len(head)]
    notes = []
    for r in records:
        if "error" in r:
            lines.append(f"{r['model']:<28} {r['img_size']:>5} {r['batch_size']:>5}  ERROR: {r['error']}")
            continue
        lines.append(f"{r['model']:<28} {r['img_size']:>5} {r['batch_size']:>5} "
                     f"{r['params'] / 1e6:>11.3f} {r['gmacs']:>10.4f} {r['gflops']:>10.4f}")
        for m in r.get("by_module", []):
            indent = "  " * _depth(m["module"])
            lines.append(f"  {indent}{m['module']:<{26 - len(indent)}} {'':>5} {'':>5} "
                         f"{m['params'] / 1e6:>11.3f} {m['gmacs']:>10.4f} {2 * m['gmacs']:>10.4f}")
        key = f"{r['model']} @ {r['img_size']}"
        if r["skipped_ops"]:
            notes.append(f"  {key}: not counted (op: calls): "
                         + ", ".join(f"{k}: {v}" for k, v in r["skipped_ops"].items()))
        if r["uncalled_modules"]:
            notes.append(f"  {key}: modules WITH parameters never called: "
                         + ", ".join(r["uncalled_modules"]))
        if r.get("uncalled_parameter_free_modules"):
            notes.append(f"  {key}: parameter-free modules without traced ops (type: count): "
                         + ", ".join(f"{k}: {v}" for k, v in
                                     r["uncalled_parameter_free_modules"].items()))
    lines.append("")
    lines.append("GMACs as fvcore counts them (1 multiply-add = 1 MAC), for the whole batch; "
                 "GFLOPs = 2 x GMACs.")
    lines.append(f"HGRN scans counted by formula: bidirectional {BIDIRECTIONAL_SCAN_MACS}, "
                 f"complex {COMPLEX_SCAN_MACS}, real {REAL_SCAN_MACS} MACs per batch*token*channel; "
                 f"the 2-D HGRU (rows and columns) twice that.")
    if notes:
        lines.append("Skipped by fvcore (NOT in the totals):")
        lines.extend(notes)
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hgrn-flops", description=__doc__.split("\n\n")[0],
        epilog="GMACs count multiply-adds (fvcore's 'flops'); GFLOPs = 2 x GMACs.")
    p.add_argument("models", nargs="+", help="timm model names, e.g. hgrn_deit_tiny deit_tiny_patch16_224")
    p.add_argument("--img-size", type=int, nargs="+", default=[224], help="square image sizes (default 224)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--in-chans", type=int, default=3)
    p.add_argument("--backend", default=None, help="scan backend for hgrn models (does not change counts)")
    p.add_argument("--by-module", type=int, nargs="?", const=2, default=None, metavar="DEPTH",
                   help="per-module breakdown down to DEPTH (default 2)")
    p.add_argument("--out", nargs="+", default=[], help="report files: .json and/or .csv")
    p.add_argument("--import", dest="imports", nargs="+", default=[], metavar="MODULE",
                   help="extra modules to import (plugins registering timm models)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.getLogger("fvcore").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning, module="torch.jit")
    warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
    for note in import_plugins(args.imports):
        print(f"note: {note}", file=sys.stderr)
    records = []
    for name in args.models:
        for size in args.img_size:
            try:
                records.append(measure(name, size, args.batch_size, backend=args.backend,
                                       by_module=args.by_module, in_chans=args.in_chans))
            except Exception as err:  # report and go on with the other models
                records.append({"model": name, "img_size": size, "batch_size": args.batch_size,
                                "error": f"{type(err).__name__}: {err}"})
    print(format_table(records))
    write_reports(records, args.out)
    for path in args.out:
        print(f"wrote {path}", file=sys.stderr)
    return 1 if any("error" in r for r in records) else 0


if __name__ == "__main__":
    sys.exit(main())
