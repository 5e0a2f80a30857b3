"""Compile every Triton kernel launch of the wrappers for a GPU target, without a GPU.

The wrappers (``triton_hgru``, ``triton_norm_gate``, ``triton_scan_given``) are called on fake
CUDA tensors (``FakeTensorMode``: no memory, no device) while ``torch.cuda`` answers as an
A100 (sm_80, 108 SMs) or an H100 (sm_90, 132 SMs), so they choose the launch configuration
they would choose there. Each ``kernel[grid](...)`` is recorded instead of run, specialised
exactly as ``JITFunction.run`` would on that GPU (Triton's own binder: an int equal to 1
becomes a constant, one divisible by 16 gets ``tt.divisibility``; pointers are taken as
16-byte aligned) and compiled with ``triton.compile`` for the target (the wheel's ptxas).
Registers and spills come from ``ptxas -v`` on the kernel's PTX (``n_regs`` / ``n_spills``
exist only once a GPU has loaded the binary).

Triton's interpreter (``TRITON_INTERPRET=1``, the CPU tests) replaces every ``@triton.jit``
function, Triton's own ``tl.sum`` included, at import: this runs in a process without it
(``run_in_subprocess``). CLI: ``python -m hgrn_core.kernels.offline_compile [--full]``.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from types import SimpleNamespace
from typing import Callable, Dict, List, Optional, Tuple

ARCHS = {80: ("NVIDIA A100", 108), 90: ("NVIDIA H100", 132)}  # capability -> (name, SMs)
WRAPPER_MODULES = ("triton_hgru", "triton_norm_gate", "triton_scan_given")
_PKG = __package__ or "hgrn_core.kernels"


@dataclasses.dataclass
class Launch:
    """One recorded ``kernel[grid](**kwargs)`` of one case."""
    case: str          # what was called: wrapper, shape, dtype, options
    group: str         # 'model' (the models' path at model shapes), 'edge', 'scan', ...
    arch: int
    kernel: str        # module:qualname of the JITFunction
    grid: tuple
    kwargs: dict       # tensors replaced by _Ptr


class _Ptr:
    """A tensor argument as the specialiser sees it: a dtype and a 16-byte aligned address."""

    def __init__(self, dtype):
        self.dtype = dtype

    def data_ptr(self):
        return 0


# ------------------------------------------------------------------------- fake GPU + capture
@contextlib.contextmanager
def fake_gpu(arch: int):
    """``torch.cuda`` answers as a GPU of capability ``arch`` (no CUDA is touched), tensors
    created in ``device='cuda'`` are fake, and the interpreter is off for the wrappers."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode
    from . import triton_hgru, triton_norm_gate
    name, sms = ARCHS[arch]
    props = SimpleNamespace(name=name, major=arch // 10, minor=arch % 10,
                            multi_processor_count=sms, total_memory=80 << 30)
    patches = dict(get_device_capability=lambda *a, **k: (arch // 10, arch % 10),
                   get_device_properties=lambda *a, **k: props,
                   current_device=lambda: 0)
    saved = {k: getattr(torch.cuda, k) for k in patches}
    env = os.environ.pop("TRITON_INTERPRET", None)
    # kept per device: the SM count, the launch configurations (per fake GPU)
    triton_norm_gate._sm_count.cache_clear()
    triton_hgru.clear_launch_configs()
    try:
        for k, v in patches.items():
            setattr(torch.cuda, k, v)
        with FakeTensorMode(allow_non_fake_inputs=True):
            yield
    finally:
        for k, v in saved.items():
            setattr(torch.cuda, k, v)
        triton_norm_gate._sm_count.cache_clear()
        triton_hgru.clear_launch_configs()
        if env is not None:
            os.environ["TRITON_INTERPRET"] = env


class _Recorder:
    def __init__(self, fn, sink: Callable):
        self.fn, self.sink = fn, sink

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            if args:  # the wrappers pass keywords only; positional ones are bound by name
                kwargs.update(zip(self.fn.arg_names, args))
            self.sink(self.fn, tuple(grid), kwargs)
        return launch


@contextlib.contextmanager
def recording(sink: Callable):
    """Replace every JIT kernel referenced by the wrapper modules with a recorder."""
    from triton.runtime.jit import JITFunction
    mods = [importlib.import_module(f"{_PKG}.{m}") for m in WRAPPER_MODULES]
    if any(type(v).__name__ == "InterpretedFunction" for m in mods for v in vars(m).values()):
        raise RuntimeError("Triton's interpreter is on in this process (TRITON_INTERPRET): "
                           "use run_in_subprocess")
    saved = [(m, n, v) for m in mods for n, v in vars(m).items() if isinstance(v, JITFunction)]
    try:
        for mod, name, val in saved:
            setattr(mod, name, _Recorder(val, sink))
        yield
    finally:
        for mod, name, val in saved:
            setattr(mod, name, val)


def capture(cases: Callable, archs) -> Tuple[List[Launch], List[dict]]:
    """Run each case (label, group, fn) of ``cases(arch)`` under a fake GPU of each
    capability: the launches they make, and a failed row for each case that raised."""
    import torch
    out: List[Launch] = []
    failed: List[dict] = []
    for arch in archs:
        for label, group, fn in cases(arch):
            def sink(kernel, grid, kwargs, label=label, group=group, arch=arch):
                kw = {k: _Ptr(v.dtype) if isinstance(v, torch.Tensor) else v
                      for k, v in kwargs.items()}
                out.append(Launch(label, group, arch, f"{kernel.fn.__module__}:"
                                  f"{kernel.fn.__qualname__}", grid, kw))
            try:
                with fake_gpu(arch), recording(sink):
                    fn(torch.device("cuda", 0))
            except Exception as e:  # noqa: BLE001 -- the wrapper itself failed: report it
                failed.append(dict(kernel=f"({label.split()[0]} wrapper)", arch=arch,
                                   spec=f"sm_{arch}", cases=[label], groups=[group],
                                   ok=False, error=f"{type(e).__name__}: {e}", seconds=0.0))
    return out, failed


# ----------------------------------------------------------------------- specialise + compile
def _kernel(ref: str):
    mod, name = ref.split(":")
    return getattr(importlib.import_module(mod), name)


def specialise(launch: Launch):
    """What ``JITFunction.run`` would compile on the GPU: (key, signature, constexprs, attrs,
    options) from Triton's own binder for the target's backend."""
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature
    fn = _kernel(launch.kernel)
    backend = make_backend(GPUTarget("cuda", launch.arch, 32))
    kw = dict(launch.kwargs)
    kw["debug"] = kw.get("debug", fn.debug) or knobs.runtime.debug
    kw["instrumentation_mode"] = knobs.compilation.instrumentation_mode
    bind = create_function_from_signature(fn.signature, fn.params, backend)
    bound, spec, opts = bind(**kw)
    options, signature, constexprs, attrs = fn._pack_args(backend, kw, bound, spec, opts)
    key = (launch.kernel, launch.arch, str(spec), str(sorted(opts.items())))
    return key, signature, constexprs, attrs, options.__dict__


def describe(launch: Launch, sig: dict, attrs: dict, opts: dict) -> str:
    """The launch's specialisation in short: phase flags, tiling and the int args (``[const]``:
    specialised to a constant, ``[%16]``: divisible by 16)."""
    fn = _kernel(launch.kernel)
    names = [p.name for p in fn.params]
    ints = []
    for i, p in enumerate(fn.params):
        v = launch.kwargs.get(p.name)
        if isinstance(v, int) and not isinstance(v, bool) and not p.is_constexpr:
            ints.append(f"{p.name}={v}" + ("[const]" if sig[p.name] == "constexpr"
                                           else "[%16]" if attrs.get((i,)) else ""))
    flags = [p.name for p in fn.params if p.is_constexpr and launch.kwargs.get(p.name) is True]
    cfg = [f"{n}={launch.kwargs[n]}" for n in ("BLOCK_T", "BLOCK_D", "BLOCK_M", "BLOCK_W",
                                               "VEC") if n in names]
    return (f"sm_{launch.arch} grid={launch.grid} {' '.join(cfg)} warps={opts['num_warps']} "
            f"{' '.join(ints)} {'+'.join(flags) or '-'}")


_PTXAS_RE = dict(regs=r"Used (\d+) registers", stack=r"(\d+) bytes stack frame",
                 spill_stores=r"(\d+) bytes spill stores", spill_loads=r"(\d+) bytes spill loads")


def _parse_ptxas(log: str) -> Optional[Dict[str, int]]:
    found = {k: re.search(r, log) for k, r in _PTXAS_RE.items()}
    return {k: int(m.group(1)) for k, m in found.items()} if all(found.values()) else None


def _rerun_ptxas(ptx: str, arch: int, fp_fusion: bool) -> Dict[str, int]:
    """``ptxas -v`` as Triton's make_cubin runs it (for a kernel from Triton's cache)."""
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        cmd = [get_ptxas(arch).path, "-lineinfo", "-v", "--regAllocOptLevel=2",
               f"--gpu-name={sm_arch_from_capability(arch)}", src, "-o", src + ".o"]
        if not fp_fusion:
            cmd.insert(2, "--fmad=false")
        log = subprocess.run(cmd, check=True, capture_output=True, text=True).stderr
    return _parse_ptxas(log) or dict(regs=-1, stack=-1, spill_stores=-1, spill_loads=-1)


def compile_one(job) -> dict:
    """Compile one specialisation (in a worker); never raises: errors are in the result."""
    kernel, arch, signature, constexprs, attrs, options = job
    import io
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.cache import get_cache_manager
    t0 = time.time()
    try:
        src = ASTSource(_kernel(kernel), signature, constexprs, attrs)
        log = io.StringIO()
        knobs.nvidia.dump_ptxas_log = True  # make_cubin prints ptxas' -v log: keep it
        with contextlib.redirect_stdout(log):
            k = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
        # the usage is kept next to the kernel in Triton's cache (a cached kernel runs no ptxas)
        cache = get_cache_manager(k.hash)
        usage = _parse_ptxas(log.getvalue())
        path = cache.get_file("ptxas_usage.json")
        if usage is None and path:
            with open(path) as f:
                usage = json.load(f)
        if usage is None:
            usage = _rerun_ptxas(k.asm["ptx"], arch, options.get("enable_fp_fusion", True))
        if not path:
            cache.put(json.dumps(usage), "ptxas_usage.json", binary=False)
        return dict(ok=True, error="", seconds=time.time() - t0, **usage)
    except Exception as e:  # noqa: BLE001 -- reported per specialisation
        msg = f"{type(e).__name__}: {e}".strip()
        return dict(ok=False, error=msg[-3000:], seconds=time.time() - t0)


def compile_all(launches: List[Launch], workers: Optional[int] = None) -> List[dict]:
    """One row per distinct specialisation: its launches' cases and the compile result."""
    uniq: Dict[tuple, dict] = {}
    for ln in launches:
        key, sig, consts, attrs, opts = specialise(ln)
        row = uniq.get(key)
        if row is None:
            row = uniq[key] = dict(kernel=ln.kernel.split(":")[1], arch=ln.arch,
                                   spec=describe(ln, sig, attrs, opts), cases=[], groups=[],
                                   job=(ln.kernel, ln.arch, sig, consts, attrs, opts))
        if ln.case not in row["cases"]:
            row["cases"].append(ln.case)
        if ln.group not in row["groups"]:
            row["groups"].append(ln.group)
    rows = list(uniq.values())
    # the backward kernels take longest: start them first
    order = sorted(rows, key=lambda r: ("bwd" not in r["kernel"], r["kernel"]))
    workers = workers or max(1, os.cpu_count() or 1)
    if workers == 1:
        results = [compile_one(r["job"]) for r in order]
    else:
        import multiprocessing
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as ex:
            results = list(ex.map(compile_one, [r["job"] for r in order]))
    for r, res in zip(order, results):
        r.update(res)
        del r["job"]
    return rows


# ------------------------------------------------------------------------------------ report
def table(rows: List[dict], group: Optional[str] = None, case: Optional[str] = None) -> str:
    """A compact table (kernel, sm, registers, stack frame bytes, spill store/load bytes,
    compile seconds, the first case and the specialisation), optionally of one group /
    of the rows with a case containing ``case``."""
    lines = [f"{'kernel':<24}{'sm':>3}{'regs':>6}{'stack':>6}{'spill':>7}{'s':>6}  case / spec"]
    for r in sorted(rows, key=lambda r: (r["kernel"], r["arch"], r["cases"][0], r["spec"])):
        if (group and group not in r["groups"]) or (case and not any(case in c for c in
                                                                     r["cases"])):
            continue
        if r["ok"]:
            spill = f"{r['spill_stores']}/{r['spill_loads']}"
            nums = f"{r['regs']:>6}{r['stack']:>6}{spill:>7}"
        else:
            nums = f"{'FAILED':>19}"
        label = next(c for c in r["cases"] if not case or case in c)
        more = f" (+{len(r['cases']) - 1})" if len(r["cases"]) > 1 else ""
        lines.append(f"{r['kernel']:<24}{r['arch']:>3}{nums}{r['seconds']:>6.1f}  "
                     f"{label}{more}\n{'':>46}{r['spec']}")
    return "\n".join(lines)


def run(full: bool = False, archs=(80, 90), workers: Optional[int] = None,
        only: Optional[str] = None) -> List[dict]:
    """Capture and compile the cases of ``offline_compile_cases`` (those whose label contains
    ``only``) in this process."""
    from .offline_compile_cases import cases
    launches, failed = capture(lambda arch: [c for c in cases(full, arch)
                                             if not only or only in c[0]], archs)
    return failed + compile_all(launches, workers)


def run_in_subprocess(full: bool = False, archs=(80, 90), timeout: float = 900) -> List[dict]:
    """:func:`run` in a fresh interpreter without ``TRITON_INTERPRET`` (see the docstring)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in [env.get("PYTHONPATH")] if p])
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "rows.json")
        cmd = [sys.executable, "-m", f"{_PKG}.offline_compile", "--json", out, "--quiet",
               "--arch", ",".join(map(str, archs))] + (["--full"] if full else [])
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        if not os.path.exists(out):  # exit status 1 with rows: some failed to compile
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n"
                               f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
        with open(out) as f:
            return json.load(f)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--full", action="store_true", help="the larger set of specialisations")
    p.add_argument("--arch", default="80,90", help="compute capabilities, e.g. 80,90")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--json", help="write the rows to this file")
    p.add_argument("--only", help="only the cases whose label contains this, e.g. "
                                  "'(256,256,384) bf16 both'")
    p.add_argument("--group", help="table: only this group (model, long, features, ...)")
    p.add_argument("--quiet", action="store_true", help="no table")
    a = p.parse_args(argv)
    t0 = time.time()
    rows = run(a.full, tuple(int(x) for x in a.arch.split(",")), a.workers, a.only)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1, default=str)
    if not a.quiet:
        print(table(rows, a.group, a.only))
        bad = [r for r in rows if not r["ok"]]
        print(f"{len(rows)} specialisations, {len(bad)} failed, {time.time() - t0:.0f} s")
        for r in bad:
            print(f"FAILED {r['kernel']} {r['spec']}\n  cases: {r['cases']}\n  {r['error']}")
    return 1 if any(not r["ok"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
