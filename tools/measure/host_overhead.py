"""Host (CPU) time per call of the HGRU ops, layer by layer: where the microseconds of one
``hgrn::hgru`` / ``hgrn::norm_gate`` / ``hgrn::hgru2d`` call go before the GPU sees a kernel.

    python -m tools.measure.host_overhead [--device cpu|cuda] [--json OUT] [--quick]
    hgrn-benchmark --report host-overhead [...]

At small batches the models are bound by host time (docs/benchmarks.md), so each layer of
a call is timed on its own, best of ``--repeat`` runs of ``--iters`` calls (robust to other
load on the machine): the public entry's checks, the backend resolution, ``run_backend``,
the Triton wrapper's launch configuration and scratch buffers, the wrapper with its kernel
launches stubbed (no-op launchers: the argument dicts are built, nothing is launched), the
op body without the dispatcher, ``torch.ops.hgrn.*`` (custom-op dispatch), the public
entry, and forward + backward through autograd. The last lines estimate Triton's own
``JITFunction.run`` front half (the binder's specialisation of every argument and the
cache key) for the wrappers' actual launch arguments, with Triton's binder for sm_90.

``--device cpu`` (no GPU needed): an H200 is simulated. ``torch.cuda`` answers capability
9.0 and 132 SMs, ``auto`` resolves as for a CUDA tensor, the wrappers choose their GPU
launch configurations (so the segmented scheme's two launches and scratch buffers happen as
on the GPU), the value checks are skipped as on a GPU, and the JIT kernels are stubbed: the
tensors stay on the CPU (allocation costs differ from CUDA's caching allocator by ~1 us;
the backward wrappers' ``.sum`` of per-program partials computes on the CPU here, where the
GPU launches a kernel: norm_gate's backward most, (1024, W) partials at the default shape).
``--device cuda``: real CUDA tensors; layers as above with stubbed launches, plus the
wrappers and entries with real launches (host time to enqueue, no sync).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
import types
from typing import Callable, Dict, List, Optional, Sequence, Tuple

# the shape of hgrn_deit_tiny's mixer at 224 px, batch 64 (16 x 16 patches of 14 px, d = 192)
SHAPE = (64, 256, 192)


def best_us(fn: Callable[[], object], iters: int, repeat: int, warmup: int = 20) -> float:
    """Microseconds per call: the best of ``repeat`` means over ``iters`` calls (gc off)."""
    for _ in range(warmup):
        fn()
    on = gc.isenabled()
    gc.disable()
    try:
        runs = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            for _ in range(iters):
                fn()
            runs.append(time.perf_counter() - t0)
    finally:
        if on:
            gc.enable()
    return min(runs) / iters * 1e6


# ------------------------------------------------------------------------- kernels stubbed
class _NoLaunch:
    """Stands in for a JIT kernel: ``kernel[grid](**kwargs)`` builds the call, launches
    nothing; the last launch's arguments are kept (for the Triton binder estimate)."""

    def __init__(self, fn):
        self.fn, self.last = fn, None

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.last = (grid, kwargs)
        return launch


def _kernel_modules():
    from hgrn_core.kernels import triton_hgru, triton_norm_gate
    return (triton_hgru, triton_norm_gate)


def _jit_kernels() -> List[Tuple[object, str, object]]:
    from triton.runtime.jit import JITFunction
    return [(m, n, v) for m in _kernel_modules() for n, v in vars(m).items()
            if isinstance(v, (JITFunction, _NoLaunch))]


class Patches:
    """Attribute patches undone in reverse order."""

    def __init__(self):
        self.saved = []

    def set(self, obj, name, value):
        self.saved.append((obj, name, getattr(obj, name)))
        setattr(obj, name, value)

    def undo(self):
        while self.saved:
            obj, name, value = self.saved.pop()
            setattr(obj, name, value)


def stub_kernels(p: Patches) -> Dict[str, _NoLaunch]:
    stubs = {}
    for mod, name, val in _jit_kernels():
        if isinstance(val, _NoLaunch):
            stubs[name] = val
            continue
        stubs[name] = _NoLaunch(val)
        p.set(mod, name, stubs[name])
    return stubs


def simulate_gpu(p: Patches) -> None:
    """CPU tensors take the code paths of CUDA tensors on an H200 (see the module doc)."""
    import torch
    from hgrn_core import backends, hgru_op as hgru_mod
    from hgrn_core.backends.triton_backend import TritonBackend
    from hgrn_core.checks import values_checked
    from hgrn_core.kernels import triton_hgru, triton_norm_gate
    cuda = torch.device("cuda", 0)
    props = types.SimpleNamespace(name="simulated H200", major=9, minor=0,
                                  multi_processor_count=132, total_memory=141 << 30)
    p.set(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    p.set(torch.cuda, "get_device_properties", lambda device=None: props)
    p.set(torch.cuda, "current_device", lambda: 0)
    for cached in (backends._capability_of, triton_norm_gate._sm_count):
        cached.cache_clear()
    getattr(triton_hgru, "clear_launch_configs", lambda: None)()
    auto = backends.auto_backend_name
    p.set(backends, "auto_backend_name",
          lambda device: auto(cuda) if device.type == "cpu" else auto(device))
    available = TritonBackend.is_available
    p.set(TritonBackend, "is_available", lambda self, device: available(self, cuda))
    # the value checks' own decision, as for a CUDA tensor (no HGRN_DEBUG: no check)
    gpu_tensor = types.SimpleNamespace(device=cuda)
    p.set(hgru_mod, "values_checked", lambda t: values_checked(gpu_tensor))
    # the wrappers' launch configurations: as on the GPU
    cfg = triton_hgru._Cfg
    p.set(triton_hgru, "_Cfg", lambda B, N, d, device, *a, **k: cfg(B, N, d, cuda, *a, **k))
    programs = triton_norm_gate._bwd_programs
    p.set(triton_norm_gate, "_bwd_programs", lambda device: programs(cuda))


# ---------------------------------------------------------------------------------- layers
def layers(device, shape=SHAPE) -> List[Tuple[str, Callable[[], object]]]:
    """(name, call) per measured layer, in the order of the report."""
    import torch
    import hgrn_core
    from hgrn_core import backends, hgru_op as hgru_mod, hgru2d_op as hgru2d_mod
    from hgrn_core import norm_gate_op as ng_mod
    from hgrn_core.kernels import triton_hgru, triton_norm_gate
    B, N, d = shape
    W = 2 * d
    dt = torch.bfloat16
    g = torch.Generator().manual_seed(0)

    def rand(*s, dtype=torch.float32, scale=1.0):
        return (scale * torch.randn(*s, generator=g)).to(device=device, dtype=dtype)

    proj = rand(B, N, 3 * d, dtype=dt)
    lb = (0.9 * torch.rand(d, generator=g)).to(device)
    tf, tr = rand(d), rand(d)
    dh = rand(B, N, W, dtype=dt)
    proj_g = proj.clone().requires_grad_(True)
    # norm_gate as the mixer calls it: h (B, N, W), gate a (B, N, W) tensor, fp32 LayerNorm
    h, gate, dy = rand(B, N, W, dtype=dt), rand(B, N, W, dtype=dt), rand(B, N, W, dtype=dt)
    weight, bias = rand(W), rand(W)
    h_g = h.clone().requires_grad_(True)
    y, mean, rstd = triton_norm_gate.norm_gate_forward(h, gate, weight, bias, 1e-5)
    grid = 16
    dev = proj.device
    op_fn = hgru_mod.hgru_op._init_fn
    ng_fn = ng_mod.norm_gate_op._init_fn

    config = getattr(triton_hgru, "_launch_config", None) or triton_hgru._Cfg

    def cfg_fwd():  # what the wrapper calls for its launch configuration
        return config(B, N, d, dev, bwd=False)

    cfg = cfg_fwd()

    def fwd_bwd():
        out = hgrn_core.hgru(proj_g, lb, tf, tr)
        return torch.autograd.grad(out, proj_g, dh)

    def ng_fwd_bwd():
        out = ng_mod.norm_gate(h_g, gate, weight, bias)
        return torch.autograd.grad(out, h_g, dy)

    out = [
        ("hgru  entry checks (_check_inputs)",
         lambda: hgru_mod._check_inputs(proj, lb, tf, tr, "both")),
        ("hgru  entry backend choice (resolve + chosen_automatically)",
         lambda: (backends.resolve_backend("auto", dev), backends.chosen_automatically("auto"))),
        ("hgru  run_backend('auto'), empty call", lambda: backends.run_backend(
            "auto", dev, lambda impl: None)),
        (f"hgru  wrapper launch config ({config.__name__}, forward)", cfg_fwd),
        ("hgru  wrapper scratch (forward 'both')", lambda: triton_hgru._scratch(
            cfg, B, W, torch.float32, True, proj, bwd=False)),
        ("hgru  kernel wrapper hgru_forward (launch stubbed)",
         lambda: triton_hgru.hgru_forward(proj, lb, tf, tr, None, "both")),
        ("hgru  op body, no dispatcher (_init_fn, 'auto')",
         lambda: op_fn(proj, lb, tf, tr, None, "both", "auto")),
        ("hgru  torch.ops.hgrn.hgru(..., 'auto')",
         lambda: torch.ops.hgrn.hgru(proj, lb, tf, tr, None, "both", "auto")),
        ("hgru  hgrn_core.hgru (auto)", lambda: hgrn_core.hgru(proj, lb, tf, tr)),
        ("hgru  hgrn_core.hgru (triton)",
         lambda: hgrn_core.hgru(proj, lb, tf, tr, backend="triton")),
        ("hgru  hgrn_core.hgru (auto), input requires grad",
         lambda: hgrn_core.hgru(proj_g, lb, tf, tr)),
        ("hgru  kernel wrapper hgru_backward (launch stubbed)",
         lambda: triton_hgru.hgru_backward(dh, None, proj, lb, tf, tr, None, "both")),
        ("hgru  torch.ops.hgrn.hgru_backward(..., 'auto')",
         lambda: torch.ops.hgrn.hgru_backward(dh, None, proj, lb, tf, tr, None, "both", "auto")),
        ("hgru  forward + autograd.grad (auto)", fwd_bwd),
        ("norm_gate  kernel wrapper forward (launch stubbed)",
         lambda: triton_norm_gate.norm_gate_forward(h, gate, weight, bias, 1e-5)),
        ("norm_gate  op body, no dispatcher (_init_fn, 'auto')",
         lambda: ng_fn(h, gate, weight, bias, 1e-5, "auto")),
        ("norm_gate  torch.ops.hgrn.norm_gate(..., 'auto')",
         lambda: torch.ops.hgrn.norm_gate(h, gate, weight, bias, 1e-5, "auto")),
        ("norm_gate  norm_gate (auto)", lambda: ng_mod.norm_gate(h, gate, weight, bias)),
        ("norm_gate  kernel wrapper backward (launch stubbed)",
         lambda: triton_norm_gate.norm_gate_backward(dy, h, gate, weight, bias, mean, rstd,
                                                     1e-5)),
        ("norm_gate  forward + autograd.grad (auto)", ng_fwd_bwd),
        ("hgru2d  kernel wrapper hgru2d_forward (launch stubbed)",
         lambda: triton_hgru.hgru2d_forward(proj, lb, tf, tr, grid, "both")),
        ("hgru2d  hgrn_core.hgru2d (auto)",
         lambda: hgru2d_mod.hgru2d(proj, lb, tf, tr, grid_width=grid)),
    ]
    return out


# ------------------------------------------------------------------ Triton's launch front half
def triton_bind_lines(stubs: Dict[str, _NoLaunch], iters: int, repeat: int
                      ) -> List[Tuple[str, float]]:
    """Per recorded launch: Triton's binder (every argument specialised: ints equal to 1 or
    divisible by 16, pointer alignment, dtypes) and cache key, as ``JITFunction.run`` does
    before the driver launch, with the backend of an sm_90 target."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import compute_cache_key, create_function_from_signature
    from triton import knobs
    backend = make_backend(GPUTarget("cuda", 90, 32))
    out = []
    for name, stub in stubs.items():
        if stub.last is None:
            continue
        _, kwargs = stub.last
        fn = stub.fn
        kw = dict(kwargs)
        kw["debug"] = kw.get("debug", fn.debug) or knobs.runtime.debug
        kw["instrumentation_mode"] = knobs.compilation.instrumentation_mode
        bind = create_function_from_signature(fn.signature, fn.params, backend)
        key_cache: dict = {}

        def front(bind=bind, kw=kw, key_cache=key_cache):
            bound, spec, opts = bind(**kw)
            return compute_cache_key(key_cache, spec, opts)

        n_args = sum(1 for p in fn.params if not p.is_constexpr)
        out.append((f"triton {name}: binder + cache key ({n_args} runtime args, "
                    f"{len(fn.params) - n_args} constexpr)", best_us(front, iters, repeat)))
    return out


# --------------------------------------------------------------------------------------- run
def measure(device_name: str, iters: int, repeat: int, shape=SHAPE) -> Dict[str, object]:
    import torch
    p = Patches()
    try:
        stubs = stub_kernels(p)
        if device_name == "cpu":
            simulate_gpu(p)
        device = torch.device(device_name)
        rows = []
        for name, fn in layers(device, shape):
            grad = "autograd" in name or "requires grad" in name
            with torch.set_grad_enabled(grad):
                rows.append((name, best_us(fn, iters, repeat)))
        rows += triton_bind_lines(stubs, iters, repeat)
    finally:
        p.undo()
    if device_name == "cuda":
        rows += real_launch_rows(device, iters, repeat, shape)
    return dict(device=device_name, shape=list(shape), iters=iters, repeat=repeat, rows=rows)


def real_launch_rows(device, iters: int, repeat: int, shape) -> List[Tuple[str, float]]:
    """On a GPU: the wrappers and entries with their real launches (host time, no sync)."""
    import torch
    import hgrn_core
    from hgrn_core.kernels import triton_hgru
    from hgrn_core.norm_gate_op import norm_gate
    B, N, d = shape
    proj = torch.randn(B, N, 3 * d, device=device, dtype=torch.bfloat16)
    lb = 0.9 * torch.rand(d, device=device)
    tf, tr = torch.randn(d, device=device), torch.randn(d, device=device)
    h = torch.randn(B, N, 2 * d, device=device, dtype=torch.bfloat16)
    gate, w = torch.randn_like(h), torch.ones(2 * d, device=device)
    calls = [
        ("real launch: hgru kernel wrapper",
         lambda: triton_hgru.hgru_forward(proj, lb, tf, tr, None, "both")),
        ("real launch: hgrn_core.hgru (auto)", lambda: hgrn_core.hgru(proj, lb, tf, tr)),
        ("real launch: norm_gate (auto)", lambda: norm_gate(h, gate, w, None)),
    ]
    rows = []
    with torch.no_grad():
        for name, fn in calls:
            # few iterations per run: the enqueue must not fill the launch queue
            rows.append((name, best_us(fn, min(iters, 200), repeat)))
            torch.cuda.synchronize()
    return rows


def render(result: Dict[str, object]) -> str:
    sim = " (H200 simulated on the CPU, launches stubbed)" if result["device"] == "cpu" else ""
    lines = [f"host time per call, us: device {result['device']}{sim}, shape (B, N, d) = "
             f"{tuple(result['shape'])} bf16, best of {result['repeat']} x {result['iters']} "
             f"calls"]
    width = max(len(n) for n, _ in result["rows"])
    lines += [f"  {n:<{width}}  {us:8.2f}" for n, us in result["rows"]]
    return "\n".join(lines)


def _prepare_process(device_name: str) -> None:
    """The JIT kernels must be real ``JITFunction``s (not the interpreter's), to stub them
    and to run Triton's binder: TRITON_INTERPRET off before the kernels are imported."""
    if os.environ.pop("TRITON_INTERPRET", None) not in (None, "", "0"):
        if "hgrn_core.kernels.triton_hgru" in sys.modules:
            raise RuntimeError("the Triton kernels were imported under TRITON_INTERPRET=1: "
                               "run the tool in a fresh process without it")
    import torch
    torch.set_num_threads(1)
    if device_name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda needs a CUDA GPU")
    _kernel_modules()


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.measure.host_overhead",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="cuda where available, else cpu (an H200 simulated)")
    p.add_argument("--iters", type=int, default=200, help="calls per timed run")
    p.add_argument("--repeat", type=int, default=15, help="timed runs per layer (best kept)")
    p.add_argument("--quick", action="store_true", help="--iters 50 --repeat 3")
    p.add_argument("--shape", type=int, nargs=3, default=list(SHAPE), metavar=("B", "N", "d"))
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = p.parse_args(argv)
    import torch
    device_name = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    _prepare_process(device_name)
    iters, repeat = (50, 3) if args.quick else (args.iters, args.repeat)
    result = measure(device_name, iters, repeat, tuple(args.shape))
    print(render(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
