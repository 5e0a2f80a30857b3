"""Export a timm model (the hgrn models included) to ONNX and check it with onnxruntime.

    hgrn-export hgrn_deit_tiny --onnx hgrn_deit_tiny.onnx
    hgrn-export hgrn_deit_small --onnx small.onnx --img-size 224 --batch-size 4 --opset 20
    hgrn-export hgrn_deit_tiny --onnx tiny.onnx --model-kwargs embed_dim=32 depth=2 num_classes=10
    hgrn-export hgrn_deit_tiny --onnx tiny.onnx --img-size 224 --batch-size 8 --bench 3

1. builds the model with ``timm.create_model`` (``hgrn_vision`` imported first; no
   pretrained weights unless ``--pretrained``; eval mode, fp32, CPU);
2. exports it with ``torch.onnx.export(..., dynamo=True)``, the hgrn ops translated by
   ``hgrn_core.onnx_export``, with a dynamic batch and image size (height and width any
   multiple of the patch size);
3. unless ``--no-check``: runs the ONNX file with onnxruntime (CPU) against eager torch on
   the same random images, at the exported size and batch and at another size and batch,
   prints the max abs and relative error (max |onnx - torch| / max |torch|) and exits 1
   if a relative error exceeds ``--tolerance`` (1e-4);
4. with ``--bench R``: R interleaved rounds of eager torch and onnxruntime at the exported
   size, images per second of each.

Exit status: 0 ok, 1 parity above the tolerance, 2 bad arguments (unknown model, missing
onnx packages: ``pip install 'hgrn[onnx]'``).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from .model_factory import parse_kwargs as parse_model_kwargs

__all__ = ["main", "build_parser", "parse_model_kwargs", "check_parity"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hgrn-export",
        description="Export a timm model (hgrn_deit_* included) to ONNX with a dynamic batch "
                    "and image size, and check it against eager torch with onnxruntime.",
        epilog="needs the onnx extra: pip install 'hgrn[onnx]' (onnx, onnxscript, onnxruntime)")
    p.add_argument("model", help="timm model name, e.g. hgrn_deit_tiny")
    p.add_argument("--onnx", required=True, metavar="FILE", help="where to write the .onnx file")
    p.add_argument("--img-size", type=int, nargs="+", metavar=("H", "W"), default=None,
                   help="image size to export (and check) at: H, or H W (default: the "
                        "model's default input size)")
    p.add_argument("--batch-size", type=int, default=2, metavar="B",
                   help="batch to export (and check) at (default 2; the exported batch is "
                        "dynamic either way)")
    p.add_argument("--opset", type=int, default=None, metavar="N",
                   help="ONNX opset (default: the exporter's, 20 with torch 2.14; >= 18)")
    p.add_argument("--model-kwargs", nargs="*", default=[], metavar="K=V",
                   help="extra timm.create_model arguments, e.g. embed_dim=32 depth=2 "
                        "(values read as Python literals, else as strings)")
    p.add_argument("--pretrained", action="store_true", help="load the model's pretrained weights")
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime parity check")
    p.add_argument("--tolerance", type=float, default=1e-4,
                   help="largest accepted relative error (default 1e-4)")
    p.add_argument("--check-size", type=int, nargs=2, metavar=("H", "W"), default=None,
                   help="the other image size to check (default: H + 2 patches, W + 1 patch)")
    p.add_argument("--check-batch-size", type=int, default=None, metavar="B",
                   help="the other batch to check (default: batch + 1)")
    p.add_argument("--bench", type=int, default=0, metavar="ROUNDS",
                   help="time eager torch and onnxruntime (CPU) at the exported size, "
                        "interleaved, ROUNDS rounds each")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch and onnxruntime (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    return p


def _fail(msg: str) -> int:
    print(f"hgrn-export: error: {msg}", file=sys.stderr)
    return 2


def _build(name: str, kwargs: Dict[str, Any], pretrained: bool) -> torch.nn.Module:
    import timm
    try:
        import hgrn_vision  # noqa: F401  registers the hgrn models
    except ModuleNotFoundError as err:
        if err.name != "hgrn_vision":
            raise
    if not timm.is_model(name):
        hgrn = ", ".join(timm.list_models("hgrn*"))
        raise LookupError(f"unknown model {name!r} (not a timm model; the hgrn models are: "
                          f"{hgrn or 'none registered'})")
    model = timm.create_model(name, pretrained=pretrained, **kwargs)
    return model.eval().float().to("cpu")


def _image_size(model: torch.nn.Module, img_size: Optional[List[int]]) -> Tuple[int, int]:
    if img_size:
        if len(img_size) > 2:
            raise ValueError(f"--img-size takes H or H W, got {len(img_size)} values")
        return (img_size[0], img_size[-1])
    cfg = getattr(model, "pretrained_cfg", None) or {}
    _, h, w = cfg.get("input_size", (3, 224, 224))
    return int(h), int(w)


def _relative(out, ref) -> Tuple[float, float]:
    import numpy as np
    err = float(np.abs(out - ref).max())
    scale = float(np.abs(ref).max())
    return err, err / scale if scale > 0 else err


def check_parity(model: torch.nn.Module, session, cases: Sequence[Tuple[int, int, int, str]],
                 in_chans: int, seed: int, tolerance: float) -> bool:
    """Run ``session`` and ``model`` on the same random images for each (B, H, W, label);
    print the errors; True if every relative error is within ``tolerance``."""
    gen = torch.Generator().manual_seed(seed)
    name = session.get_inputs()[0].name
    ok = True
    print("parity, onnxruntime (CPU) vs eager torch, fp32 (relative = max abs / max |torch|):")
    for b, h, w, label in cases:
        x = torch.randn(b, in_chans, h, w, generator=gen)
        with torch.no_grad():
            ref = model(x).numpy()
        out = session.run(None, {name: x.numpy()})[0]
        if out.shape != ref.shape:
            print(f"  batch {b}, {h}x{w}{label}: output shape {out.shape} != {ref.shape}  FAIL")
            ok = False
            continue
        err, rel = _relative(out, ref)
        good = rel <= tolerance
        ok &= good
        print(f"  batch {b}, {h}x{w}{label}: max abs {err:.3e}, relative {rel:.3e}  "
              f"{'ok' if good else f'FAIL (> {tolerance:g})'}")
    return ok


def bench(model: torch.nn.Module, session, batch: int, size: Tuple[int, int], in_chans: int,
          rounds: int) -> None:
    """Interleaved rounds: eager torch, then onnxruntime, on the same batch; img/s."""
    x = torch.randn(batch, in_chans, *size)
    name = session.get_inputs()[0].name
    feed = {name: x.numpy()}
    with torch.no_grad():
        model(x)  # warm-up
        session.run(None, feed)
        times: Dict[str, List[float]] = {"eager torch": [], "onnxruntime": []}
        for r in range(rounds):
            t = time.perf_counter()
            model(x)
            times["eager torch"].append(time.perf_counter() - t)
            t = time.perf_counter()
            session.run(None, feed)
            times["onnxruntime"].append(time.perf_counter() - t)
            print(f"  round {r + 1}: eager torch {batch / times['eager torch'][-1]:.2f} img/s, "
                  f"onnxruntime {batch / times['onnxruntime'][-1]:.2f} img/s")
    for key, ts in times.items():
        print(f"  {key}: median {batch / statistics.median(ts):.2f} img/s "
              f"(best {batch / min(ts):.2f}), batch {batch}, {size[0]}x{size[1]}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from hgrn_core.onnx_export import export_onnx, require_onnx
        require_onnx("onnx", "onnxscript", *(() if args.no_check and not args.bench
                                              else ("onnxruntime",)))
    except ImportError as err:
        return _fail(str(err))
    try:
        kwargs = parse_model_kwargs(args.model_kwargs)
        model = _build(args.model, kwargs, args.pretrained)
        h, w = _image_size(model, args.img_size)
    except (LookupError, ValueError) as err:
        return _fail(str(err))
    if args.batch_size < 1:
        return _fail("--batch-size must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    in_chans = getattr(model, "in_chans", 3)

    # torch.export specialises a dimension of size 1: trace with a batch of >= 2 (the
    # exported batch is dynamic, and the check below runs at --batch-size itself)
    trace_batch = max(args.batch_size, 2)
    example = torch.randn(trace_batch, in_chans, h, w)
    t0 = time.perf_counter()
    try:
        export_onnx(model, example, args.onnx, opset=args.opset)
    except Exception as err:
        print(f"hgrn-export: export failed: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    import onnx
    proto = onnx.load(args.onnx)
    onnx.checker.check_model(proto)
    dims = [d.dim_param or str(d.dim_value) for d in proto.graph.input[0].type.tensor_type.shape.dim]
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    size_mb = os.path.getsize(args.onnx) / 2 ** 20
    print(f"exported {args.model} to {args.onnx} ({size_mb:.1f} MiB, opset {opset}) in "
          f"{time.perf_counter() - t0:.1f} s; traced at batch {trace_batch}, {h}x{w}; "
          f"input {proto.graph.input[0].name} ({', '.join(dims)})")
    if args.no_check and not args.bench:
        return 0

    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads or torch.get_num_threads()
    session = ort.InferenceSession(args.onnx, options, providers=["CPUExecutionProvider"])
    ok = True
    if not args.no_check:
        from hgrn_core.onnx_export import model_patch_size
        ph, pw = model_patch_size(model)
        other = tuple(args.check_size) if args.check_size else (h + 2 * ph, w + pw)
        other_batch = args.check_batch_size or args.batch_size + 1
        cases = [(args.batch_size, h, w, " (exported size)"),
                 (other_batch, other[0], other[1], "")]
        ok = check_parity(model, session, cases, in_chans, args.seed, args.tolerance)
    if args.bench:
        print(f"throughput, {options.intra_op_num_threads} threads, interleaved rounds:")
        bench(model, session, args.batch_size, (h, w), in_chans, args.bench)
    if not ok:
        print(f"hgrn-export: parity check failed (relative error above {args.tolerance:g})",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
