"""Inference and training-step throughput (img/s) and peak memory of timm models
(HGRN and timm's own) over models x image sizes x batch sizes.

    hgrn-benchmark --models hgrn_deit_tiny deit_tiny_patch16_224 --img-size 224 448 896 \\
        --batch-size 32 448=8 896=2 --mode infer --out bench.csv bench.json --plot bench.png

* Device: ``--device auto`` picks CUDA when present. ``--amp bf16|fp16``, ``--compile``,
  ``--backend NAME`` (scan backend of the hgrn models), ``--threads N`` (CPU threads;
  default: all cores).
* Timing: ``--warmup`` untimed steps, then ``--iters`` timed steps (synchronised on CUDA);
  img/s = batch / median step time. ``--rounds R`` repeats the sweep R times, models
  interleaved, and reports the median over rounds (for noisy, shared machines).
* Training step: forward, cross-entropy on random labels, backward, optimizer step
  (``--optimizer sgd|adamw``), ``model.train()``.
* Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` (reset per case); on CPU the
  peak resident set size (VmHWM) of the process. By default every case runs in a fresh
  subprocess, so the CPU peak belongs to that case alone (it includes the ~0.3-0.5 GiB of
  the Python/torch runtime, reported separately as ``rss_base_mib``). ``--in-process``
  is quicker; there the peak is reset per case through /proc/self/clear_refs where
  Linux allows it, else it is the process's peak so far (``mem_scope`` says which).
* A case that fails (out of memory, bad size, crash, timeout) is recorded with its error
  and the sweep goes on. The exit status is 0 when at least one case succeeded.
* Reports: ``--report gpu OUTDIR [--quick]`` (every GPU goal of issue 9 in one run,
  ``gpu_report.py``), ``--report tune-hgru OUTDIR`` (the fused HGRU kernel's launch
  configurations on a GPU, ``tune_hgru.py``), ``--report gpu-profile OUTDIR`` (host and GPU
  time per op and model step, profiler tables, ``gpu_profile.py``), ``--report host-overhead``
  (host microseconds per call of each layer of the ops, kernels stubbed; runs on the CPU,
  ``host_overhead.py``), ``--report saved-activations [OUTDIR]
  [--cpu-speed]`` (the CPU activation-memory measure, ``saved_activations.py``),
  ``--report cpu-recurrence [OUTDIR]`` (what the recurrence costs on the CPU: hgrn_deit_tiny
  against its twin without it, ``cpu_recurrence.py``), ``--report cpu-ops [OUTDIR]`` (the
  fused ops alone on each CPU backend at the model's layer shapes, against the bytes they
  must move, ``cpu_ops.py``); the
  arguments after the report's name go to that report (``--report gpu --help``).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

from ..model_factory import create_model, import_plugins

MIB = 1024 * 1024


# ------------------------------------------------------------------------------ helpers
def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _status_kib(field: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_mib() -> Optional[float]:
    kib = _status_kib("VmRSS")
    return None if kib is None else kib / 1024


def peak_rss_mib() -> Optional[float]:
    kib = _status_kib("VmHWM")
    if kib is None:
        import resource
        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return kib / 1024


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def is_oom(err: BaseException) -> bool:
    if isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError":
        return True
    msg = str(err).lower()
    return "out of memory" in msg or "can't allocate memory" in msg


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# ---------------------------------------------------------------------------- one case
def run_case(case: Dict[str, Any]) -> Dict[str, Any]:
    """Time one (model, img_size, batch_size, mode) case in this process. Never raises:
    failures come back as ``status`` 'oom' or 'error' with the message."""
    rec = dict(case)
    device = resolve_device(case["device"])
    rec.update(device=str(device), status="ok", error="")
    try:
        if case.get("threads"):
            torch.set_num_threads(int(case["threads"]))
        rec["threads"] = torch.get_num_threads()
        if case.get("backend"):
            os.environ["HGRN_BACKEND"] = case["backend"]
        import_plugins(case.get("imports", ()))
        _measure(case, device, rec)
    except BaseException as err:  # noqa: BLE001 - the sweep must go on
        if isinstance(err, KeyboardInterrupt):
            raise
        rec["status"] = "oom" if is_oom(err) else "error"
        rec["error"] = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"[:500]
        rec["traceback"] = traceback.format_exc(limit=4)[-2000:]
        rec.setdefault("img_per_s", None)
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rec


def build_step(model: torch.nn.Module, x: torch.Tensor, mode: str,
               amp: Optional[torch.dtype] = None, optimizer: str = "sgd",
               compile: bool = False) -> Callable[[], None]:
    """One benchmark step of ``model`` on the batch ``x``: inference (``mode`` 'infer',
    ``torch.inference_mode``) or training ('train': forward, cross-entropy on random
    labels, backward, optimizer step), under autocast when ``amp`` is a dtype."""
    device = x.device
    bs = x.shape[0]
    train = mode == "train"
    model.train(train)
    fn = torch.compile(model) if compile else model
    autocast = (lambda: torch.autocast(device.type, dtype=amp)) if amp else None

    if train:
        opt_cls = {"sgd": lambda p: torch.optim.SGD(p, lr=1e-3, momentum=0.9),
                   "adamw": lambda p: torch.optim.AdamW(p, lr=1e-4)}[optimizer]
        opt = opt_cls(model.parameters())
        scaler = torch.amp.GradScaler(device.type, enabled=amp is torch.float16 and device.type == "cuda")
        y = None

        def step():
            nonlocal y
            opt.zero_grad(set_to_none=True)
            if autocast:
                with autocast():
                    out = fn(x)
            else:
                out = fn(x)
            if y is None:
                y = torch.randint(0, out.shape[-1], (bs,), device=device)
            loss = torch.nn.functional.cross_entropy(out.float(), y)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
    else:
        def step():
            with torch.inference_mode():
                if autocast:
                    with autocast():
                        fn(x)
                else:
                    fn(x)
    return step


def _measure(case: Dict[str, Any], device: torch.device, rec: Dict[str, Any]) -> None:
    bs, size, mode = int(case["batch_size"]), int(case["img_size"]), case["mode"]
    amp = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[case.get("amp") or "none"]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        rec["mem_scope"] = "cuda_max_allocated"
    else:
        base = None
        rec["mem_scope"] = ("case (fresh process)" if case.get("isolated")
                            else "case (VmHWM reset)" if reset_peak_rss() else "process so far")
    rec["rss_base_mib"] = rss_mib()

    model = create_model(case["model"], size, case.get("backend")).to(device)
    rec["params"] = sum(p.numel() for p in model.parameters())
    x = torch.randn(bs, 3, size, size, device=device)
    step = build_step(model, x, mode, amp, case.get("optimizer", "sgd"), bool(case.get("compile")))

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(int(case["warmup"])):
        step()
    sync()
    times = []
    for _ in range(int(case["iters"])):
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    q = statistics.quantiles(times, n=4) if len(times) >= 2 else [med, med, med]
    rec.update(img_per_s=bs / med, median_ms=med * 1e3, min_ms=min(times) * 1e3,
               p25_ms=q[0] * 1e3, p75_ms=q[2] * 1e3)
    if device.type == "cuda":
        rec["peak_mem_mib"] = torch.cuda.max_memory_allocated(device) / MIB
        rec["base_mem_mib"] = base / MIB
    else:
        rec["peak_mem_mib"] = peak_rss_mib()


def run_case_subprocess(case: Dict[str, Any], timeout: Optional[float]) -> Dict[str, Any]:
    """``run_case`` in a fresh Python process (peak RSS then belongs to this case alone;
    a crash or kill by the OOM killer does not take the sweep down)."""
    case = dict(case, isolated=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([p or os.getcwd() for p in sys.path])
    cmd = [sys.executable, "-m", f"{__package__}.benchmark", "--_worker", json.dumps(case)]
    rec = dict(case, status="error", error="", img_per_s=None)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        rec.update(status="timeout", error=f"no result within {timeout:g} s")
        return rec
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                break
    tail = (proc.stderr or "").strip().splitlines()[-3:]
    if proc.returncode in (-9, 137):
        rec.update(status="oom", error="worker killed (SIGKILL: likely the OOM killer)")
    else:
        rec["error"] = f"worker exited with {proc.returncode}: " + " | ".join(tail)
    return rec


# ------------------------------------------------------------------------------- sweep
def parse_batch_sizes(specs: Sequence[str], sizes: Sequence[int]) -> Dict[int, List[int]]:
    """``['32', '448=8']`` -> {224: [32], 448: [8]}: ``SIZE=B`` applies to that size only,
    plain values to every size without its own entry."""
    plain, per = [], {}
    for s in specs:
        if "=" in s:
            k, v = s.split("=", 1)
            per.setdefault(int(k), []).append(int(v))
        else:
            plain.append(int(s))
    out = {}
    for size in sizes:
        out[size] = per.get(size) or plain
        if not out[size]:
            raise ValueError(f"no batch size given for image size {size}")
    return out


def make_cases(args) -> List[Dict[str, Any]]:
    """Sizes outermost, models innermost: the models of one size run back to back."""
    batches = parse_batch_sizes(args.batch_size, args.img_size)
    cases = []
    for size in args.img_size:
        for bs in batches[size]:
            for mode in args.mode:
                for model in args.models:
                    cases.append(dict(model=model, img_size=size, batch_size=bs, mode=mode,
                                      device=args.device, amp=args.amp, compile=args.compile,
                                      backend=args.backend, threads=args.threads,
                                      warmup=args.warmup, iters=args.iters,
                                      optimizer=args.optimizer, imports=list(args.imports)))
    return cases


KEY = ("model", "img_size", "batch_size", "mode")


def aggregate(rounds: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """One record per case: median img/s over the successful rounds, max peak memory."""
    groups: Dict[tuple, List[Dict[str, Any]]] = {}
    for r in rounds:
        groups.setdefault(tuple(r[k] for k in KEY), []).append(r)
    out = []
    for recs in groups.values():
        ok = [r for r in recs if r["status"] == "ok"]
        if not ok:
            out.append(dict(recs[-1], rounds=len(recs), rounds_ok=0))
            continue
        agg = dict(ok[0])
        ips = [r["img_per_s"] for r in ok]
        agg.update(img_per_s=statistics.median(ips),
                   img_per_s_rounds=ips,
                   median_ms=statistics.median(r["median_ms"] for r in ok),
                   peak_mem_mib=max((r.get("peak_mem_mib") or 0) for r in ok) or None,
                   rounds=len(recs), rounds_ok=len(ok),
                   error="; ".join(r["error"] for r in recs if r["status"] != "ok"))
        out.append(agg)
    return out


def run_sweep(args, cases: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is optional: plain lines instead of a bar
        tqdm = None
    jobs = cases * args.rounds
    bar = tqdm(jobs, desc="benchmark", unit="case", disable=args.quiet) if tqdm else jobs
    write = tqdm.write if tqdm else print
    results = []
    for case in bar:
        if tqdm and not args.quiet:
            bar.set_postfix_str(f"{case['model']} {case['img_size']}px b{case['batch_size']} {case['mode']}")
        rec = run_case(case) if args.in_process else run_case_subprocess(case, args.timeout)
        results.append(rec)
        if not args.quiet:
            write(_line(rec))
    return aggregate(results)


# ----------------------------------------------------------------------------- reports
CSV_FIELDS = ["model", "img_size", "batch_size", "mode", "status", "img_per_s", "median_ms",
              "p25_ms", "p75_ms", "min_ms", "peak_mem_mib", "mem_scope", "rss_base_mib",
              "params", "device", "amp", "compile", "backend", "threads", "warmup", "iters",
              "rounds", "rounds_ok", "error"]


def _fmt(v, nd=1):
    return "-" if v is None else f"{v:.{nd}f}"


def _line(r: Dict[str, Any]) -> str:
    head = f"{r['model']:<26} {r['img_size']:>5} {r['batch_size']:>5} {r['mode']:<5}"
    if r["status"] != "ok":
        return f"{head} {r['status'].upper()}: {r['error']}"
    return (f"{head} {_fmt(r['img_per_s']):>9} img/s  {_fmt(r['median_ms']):>9} ms  "
            f"peak {_fmt(r.get('peak_mem_mib'), 0):>7} MiB")


def format_table(results: List[Dict[str, Any]]) -> str:
    head = (f"{'model':<26} {'img':>5} {'batch':>5} {'mode':<5} {'img/s':>9}       "
            f"{'median':>9}     {'peak mem':>12}")
    return "\n".join([head, "-" * len(head)] + [_line(r) for r in results])


def write_reports(results: List[Dict[str, Any]], paths: Sequence[str], meta: Dict[str, Any]) -> None:
    for path in paths:
        d = os.path.dirname(path)
        if d:
            os.makedirs(d, exist_ok=True)
        if path.endswith(".csv"):
            with open(path, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore", restval="")
                w.writeheader()
                w.writerows(results)
        elif path.endswith(".json"):
            with open(path, "w") as f:
                json.dump({"tool": "hgrn-benchmark", "meta": meta, "results": results}, f, indent=2)
        else:
            raise ValueError(f"--out {path!r}: use a .json or .csv file name")


def plot(results: List[Dict[str, Any]], path: str, title: str = "") -> None:
    """img/s against image size, one line per model (and batch size where several), one
    panel per mode; log-log, so the linear-vs-quadratic slopes are visible."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    modes = [m for m in ("infer", "train") if any(r["mode"] == m for r in results)]
    fig, axes = plt.subplots(1, len(modes), figsize=(6.2 * len(modes), 4.4), squeeze=False)
    for ax, mode in zip(axes[0], modes):
        rs = [r for r in results if r["mode"] == mode]
        for model in dict.fromkeys(r["model"] for r in rs):
            pts = sorted((r["img_size"], r["img_per_s"], r["batch_size"]) for r in rs
                         if r["model"] == model and r["status"] == "ok")
            if not pts:
                continue
            style = "-o" if model.startswith("hgrn") else "--s"
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=model)
            for s, ips, b in pts:
                ax.annotate(f"{ips:.3g} (b{b})", (s, ips), textcoords="offset points",
                            xytext=(4, 4), fontsize=7)
            for r in rs:
                if r["model"] == model and r["status"] != "ok":
                    ax.annotate(f"{r['status']}", (r["img_size"], ax.get_ylim()[0]), fontsize=7,
                                color="red")
        sizes = sorted({r["img_size"] for r in rs})
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(sizes)
        ax.set_xticklabels([str(s) for s in sizes])
        ax.minorticks_off()
        ax.set_xlabel("image size (px, square)")
        ax.set_ylabel(f"{'inference' if mode == 'infer' else 'training step'} img/s")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    d = os.path.dirname(path)
    if d:
        os.makedirs(d, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hgrn-benchmark", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--models", nargs="+", default=["hgrn_deit_tiny", "deit_tiny_patch16_224"],
                   help="timm model names; NAME:key=value,... passes constructor arguments, "
                        "e.g. hgrn_deit_tiny:mixer=hgru_no_recurrence (the HGRU without its "
                        "recurrence: the most any scan implementation can reach)")
    p.add_argument("--img-size", type=int, nargs="+", default=[224])
    p.add_argument("--batch-size", nargs="+", default=["32"],
                   help="batch sizes; SIZE=B sets the batch for one image size only")
    p.add_argument("--mode", nargs="+", choices=["infer", "train"], default=["infer"])
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:1")
    p.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--backend", default=None, help="scan backend of the hgrn models (default: auto)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=10, help="timed steps; img/s uses their median")
    p.add_argument("--rounds", type=int, default=1, help="repeat the sweep, median over rounds")
    p.add_argument("--optimizer", choices=["sgd", "adamw"], default="sgd")
    p.add_argument("--in-process", action="store_true",
                   help="run cases in this process (quicker; CPU peak memory less isolated)")
    p.add_argument("--timeout", type=float, default=None, help="seconds per case (subprocess mode)")
    p.add_argument("--out", nargs="+", default=[], help="result files: .csv and/or .json")
    p.add_argument("--plot", default=None, help="PNG of img/s against image size")
    p.add_argument("--import", dest="imports", nargs="+", default=[], metavar="MODULE",
                   help="extra modules to import (plugins registering timm models)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-case lines")
    p.add_argument("--from-json", nargs="+", default=None, metavar="JSON",
                   help="no run: merge earlier JSON results and write --out / --plot from them")
    p.add_argument("--report", choices=sorted(REPORTS), default=None,
                   help="run a report instead of a sweep; the arguments after its name go to "
                        "it (e.g. --report gpu OUTDIR --quick; --report gpu --help)")
    p.add_argument("--_worker", help=argparse.SUPPRESS)
    return p


# report name -> module (in tools/measure/, installed as hgrn_tools.measure) whose main(argv) runs it
REPORTS = {"gpu": "gpu_report", "gpu-profile": "gpu_profile",
           "saved-activations": "saved_activations", "tune-hgru": "tune_hgru",
           "host-overhead": "host_overhead", "cpu-recurrence": "cpu_recurrence",
           "cpu-ops": "cpu_ops"}


def run_report(argv: Sequence[str]) -> Optional[int]:
    """``--report NAME ARGS...`` anywhere in ``argv``: run that report's ``main`` with the
    other arguments; None when there is no ``--report``."""
    argv = list(argv)
    for i, arg in enumerate(argv):
        if arg == "--report" or arg.startswith("--report="):
            if "=" in arg:
                name, rest = arg.split("=", 1)[1], argv[:i] + argv[i + 1:]
            elif i + 1 < len(argv):
                name, rest = argv[i + 1], argv[:i] + argv[i + 2:]
            else:
                break  # let argparse say what is missing
            if name not in REPORTS:
                break
            import importlib
            module = importlib.import_module(f"{__package__}.{REPORTS[name]}")
            return module.main(rest)
    return None


def main(argv: Optional[Sequence[str]] = None) -> int:
    report_rc = run_report(sys.argv[1:] if argv is None else argv)
    if report_rc is not None:
        return report_rc
    args = build_parser().parse_args(argv)
    if args._worker:  # child of run_case_subprocess: one case, one JSON line
        rec = run_case(json.loads(args._worker))
        sys.stdout.write("\n" + json.dumps(rec) + "\n")
        return 0
    if args.from_json:
        results, metas = [], []
        for path in args.from_json:
            with open(path) as f:
                data = json.load(f)
            results += data["results"]
            metas.append(data.get("meta", {}))
        print(format_table(results))
        write_reports(results, args.out, {"merged_from": args.from_json, "runs": metas})
        if args.plot:
            m = metas[0] if metas else {}
            dev = m.get("cuda") or f"{m.get('cpu', 'CPU')} ({results[0].get('threads')} threads)"
            plot(results, args.plot, title=f"{dev}; merged from {len(args.from_json)} run(s), "
                                           "timing per run in the JSON")
        return 0
    if args.threads is None:
        args.threads = os.cpu_count()
    for note in import_plugins(args.imports):
        print(f"note: {note}", file=sys.stderr)
    cases = make_cases(args)
    meta = {"cpu": cpu_name(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "python": platform.python_version(), "argv": list(argv) if argv is not None else sys.argv[1:],
            "isolation": "in-process" if args.in_process else "fresh subprocess per case",
            "timing": f"{args.warmup} warm-up steps, median of {args.iters} timed steps, "
                      f"median over {args.rounds} round(s)",
            "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    try:
        import timm
        meta["timm"] = timm.__version__
    except ImportError:
        pass
    results = run_sweep(args, cases)
    print(format_table(results))
    write_reports(results, args.out, meta)
    if args.plot:
        dev = meta["cuda"] or f"{meta['cpu']} ({args.threads} threads)"
        plot(results, args.plot, title=f"{dev}, {'AMP ' + args.amp if args.amp != 'none' else 'fp32'}")
    for path in args.out + ([args.plot] if args.plot else []):
        print(f"wrote {path}", file=sys.stderr)
    return 0 if any(r["status"] == "ok" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
