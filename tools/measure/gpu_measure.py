"""The measurement half of the GPU report (``gpu_report.py``): the parts that touch the device.

Environment and versions, timing helpers (CUDA events; the L2 flush for op timings), the
GPU-test runner and its pytest-output parsing, one model's inference / training step, the
``hgrn::hgru`` bandwidth against a device-to-device copy, and the real-valued causal case
against fla. Each returns plain records (dicts); ``gpu_report.collect`` runs them in order
and ``gpu_report`` evaluates and renders them. On the CPU they run with tiny shapes (the
``cpu-smoke`` plan, tests of this tool).
"""
from __future__ import annotations

import dataclasses
import gc
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout
MIB = 1024 * 1024
GIB = 1024 * MIB
GPU_TEST_FILES = ("tests/test_triton_backend.py", "tests/test_triton_hgru.py",
                  "tests/test_norm_gate.py", "tests/test_hgru2d_triton.py")


# ----------------------------------------------------------------------------------- plan
@dataclasses.dataclass
class Plan:
    name: str
    batch: int = 256                      # goal points of the small models
    size: int = 224
    tiny_points: Tuple[Tuple[int, int, float], ...] = ((896, 8, 2.0), (1248, 8, 3.0))
    sweep_sizes: Tuple[int, ...] = (224, 448, 672, 896, 1120, 1248)
    sweep_tokens: int = 16384             # sweep batch = sweep_tokens / HGRN tokens
    sweep_max_batch: int = 64
    warmup: int = 3
    iters: int = 15
    sweep_warmup: int = 2
    sweep_iters: int = 8
    op_shapes: Tuple[Tuple[int, int, int], ...] = ((256, 256, 384), (8, 16384, 384))
    fla_shapes: Tuple[Tuple[int, int, int], ...] = ((128, 256, 384), (8, 4096, 192),
                                                    (8, 16384, 384))
    op_warmup: int = 5
    op_iters: int = 20
    copy_bytes: int = GIB
    test_timeout: float = 150.0
    budget_s: float = 330.0               # everything after start-up; the sweep is cut first
    hgru_fwd_target: float = 0.6
    hgru_fwdbwd_target: float = 0.4

    def sweep_batch(self, size: int) -> int:
        tokens = (size // 14) ** 2
        return max(1, min(self.sweep_max_batch, round(self.sweep_tokens / tokens)))



# label -> (timm name, extra kwargs, patch size, what the table calls it)
MODELS: Dict[str, Tuple[str, Dict[str, Any], int, str]] = {
    "hgrn_deit_small": ("hgrn_deit_small", {}, 14, "hgrn_deit_small"),
    "deit_small_p14": ("deit_small_patch16_224", {"patch_size": 14}, 14,
                       "deit_small_patch16_224 at patch 14"),
    "deit_small_patch16_224": ("deit_small_patch16_224", {}, 16, "deit_small_patch16_224"),
    # diagnostic: everything but the recurrence (hgrn_core.mixers.hgru_no_recurrence), the
    # ceiling of any scan kernel; the "scan replaced by a no-op" row
    "hgrn_deit_small_no_recurrence": ("hgrn_deit_small", {"mixer": "hgru_no_recurrence"}, 14,
                                      "hgrn_deit_small without its recurrence (diagnostic)"),
    "hgrn_deit_tiny": ("hgrn_deit_tiny", {}, 14, "hgrn_deit_tiny"),
    "deit_tiny_patch16_224": ("deit_tiny_patch16_224", {}, 16, "deit_tiny_patch16_224"),
    # information beside the goals (no goal of their own): the 2-D HGRU models
    "hgrn2d_deit_small": ("hgrn2d_deit_small", {}, 14,
                          "hgrn2d_deit_small (2-D HGRU; information, no goal)"),
    "hgrn2d_deit_tiny": ("hgrn2d_deit_tiny", {}, 14,
                         "hgrn2d_deit_tiny (2-D HGRU; information, no goal)"),
}


def side_for(label: str, size: int) -> int:
    patch = MODELS[label][2]
    return size - size % patch


def tokens_for(label: str, size: int) -> int:
    patch = MODELS[label][2]
    return (side_for(label, size) // patch) ** 2


# ------------------------------------------------------------------------------- helpers
def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _version(module: str, dist: Optional[str] = None) -> str:
    try:
        mod = __import__(module)
        return getattr(mod, "__version__", "installed")
    except ImportError:
        pass
    except Exception as err:  # noqa: BLE001 - a broken optional package is reported, not fatal
        return f"import failed: {type(err).__name__}"
    if dist:
        try:
            from importlib.metadata import version
            return version(dist)
        except Exception:  # noqa: BLE001
            pass
    return "not installed"


def git_commit() -> Optional[str]:
    if os.environ.get("HGRN_COMMIT"):  # a copy of the tree without .git (a lent GPU machine)
        return os.environ["HGRN_COMMIT"]
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        if not sha:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + (" + uncommitted changes" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device) -> Dict[str, Any]:
    import torch
    env: Dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "torch": torch.__version__, "cuda": torch.version.cuda,
        "triton": _version("triton"), "timm": _version("timm"),
        "fvcore": _version("fvcore"), "fla": _version("fla", "fla-core"),
        "python": platform.python_version(), "commit": git_commit(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(device=torch.cuda.get_device_name(device),
                   device_memory_gib=round(props.total_memory / GIB, 1),
                   sm_count=props.multi_processor_count,
                   capability=f"{props.major}.{props.minor}")
        env["hgru_config_file"] = os.environ.get("HGRN_HGRU_CONFIG") or None
        try:  # the fused HGRU kernels' launch configuration on this device
            from hgrn_core.kernels.triton_hgru import gpu_config
            env["hgru_launch"] = {"forward": gpu_config(device, False),
                                  "backward": gpu_config(device, True)}
        except Exception as err:  # noqa: BLE001 - no Triton: nothing launched
            env["hgru_launch"] = f"unavailable ({_err(err)})"
    else:
        env["device"] = f"CPU ({platform.processor() or platform.machine()}, " \
                        f"{torch.get_num_threads()} threads)"
    return env


def is_oom(err: BaseException) -> bool:
    if isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError":
        return True
    return "out of memory" in str(err).lower()


def _err(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:300]


def _cleanup(device) -> None:
    import torch
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


# -------------------------------------------------------------------------------- timing
def time_steps(step: Callable[[], Any], warmup: int, iters: int, device) -> List[float]:
    """Milliseconds of each of ``iters`` steps run back to back after ``warmup`` steps.
    CUDA: events recorded between consecutive steps, one sync at the end."""
    import torch
    for _ in range(warmup):
        step()
    if device.type != "cuda":
        out = []
        for _ in range(iters):
            t0 = time.perf_counter()
            step()
            out.append((time.perf_counter() - t0) * 1e3)
        return out
    torch.cuda.synchronize(device)
    events = [torch.cuda.Event(enable_timing=True) for _ in range(iters + 1)]
    events[0].record()
    for i in range(iters):
        step()
        events[i + 1].record()
    torch.cuda.synchronize(device)
    return [events[i].elapsed_time(events[i + 1]) for i in range(iters)]


def time_op(fn: Callable[[], Any], warmup: int, iters: int, device) -> float:
    """Median milliseconds of ``fn`` with the L2 cache flushed before every timed call."""
    import torch
    for _ in range(warmup):
        fn()
    if device.type != "cuda":
        return statistics.median(time_steps(fn, 0, iters, device))
    props = torch.cuda.get_device_properties(device)
    l2 = int(getattr(props, "L2_cache_size", 0) or 50 * MIB)
    flush = torch.empty(max(2 * l2, 64 * MIB), dtype=torch.int8, device=device)
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    torch.cuda.synchronize(device)
    for i in range(iters):
        flush.zero_()
        starts[i].record()
        fn()
        ends[i].record()
    torch.cuda.synchronize(device)
    return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends))


# ----------------------------------------------------------------------------- GPU tests
_COUNT = re.compile(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed|deselected)")
_PROGRESS = re.compile(r"^([.FsExX]+)\s*(\[\s*\d+%\])?\s*$")


def parse_pytest_output(text: str) -> Dict[str, int]:
    """Counts from pytest's summary line; from the progress characters when there is none
    (a run killed by the timeout)."""
    counts = {"passed": 0, "failed": 0, "skipped": 0, "errors": 0, "xfailed": 0, "xpassed": 0}
    for line in reversed(text.strip().splitlines()):
        found = _COUNT.findall(line)
        if found and (" in " in line or line.startswith("=")):
            for n, what in found:
                key = "errors" if what.startswith("error") else what
                if key in counts:
                    counts[key] = int(n)
            counts["summary"] = True
            return counts
    chars = {".": "passed", "F": "failed", "s": "skipped", "E": "errors", "x": "xfailed",
             "X": "xpassed"}
    for line in text.splitlines():
        m = _PROGRESS.match(line.strip())
        if m:
            for ch in m.group(1):
                counts[chars[ch]] += 1
    counts["summary"] = False
    return counts


def run_gpu_tests(timeout: float, root: str = ROOT) -> Dict[str, Any]:
    files = [f for f in GPU_TEST_FILES if os.path.exists(os.path.join(root, f))]
    rec: Dict[str, Any] = {"files": files, "missing": [f for f in GPU_TEST_FILES if f not in files],
                           "timeout_s": timeout}
    if not files:
        rec.update(status="not run", error=f"none of {', '.join(GPU_TEST_FILES)} under {root}")
        return rec
    if timeout <= 0:
        rec.update(status="not run", error="no time left for the tests")
        return rec
    # compiling the kernels' specialisations is what takes the time: spread it over processes
    # when pytest-xdist is there (every failure then counts, up to 20; else stop at the first)
    try:
        import xdist  # noqa: F401
        workers = max(1, min(8, (os.cpu_count() or 1) // 2))
        stop = ["-n", str(workers), "--maxfail=20"]
    except ImportError:
        stop = ["-x"]
    cmd = [sys.executable, "-m", "pytest", "-q", *stop, "-p", "no:cacheprovider", *files]
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)  # the real kernels on the GPU
    rec["command"] = " ".join(["pytest", "-q", *stop, *files])
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
        rec["timed_out"] = False
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            proc.kill()
        out, _ = proc.communicate()
        rec["timed_out"] = True
    rec["seconds"] = round(time.monotonic() - t0, 1)
    rec["returncode"] = proc.returncode
    rec.update(parse_pytest_output(out or ""))
    rec["tail"] = "\n".join((out or "").strip().splitlines()[-15:])
    ran = sum(rec[k] for k in ("passed", "failed", "skipped", "errors", "xfailed", "xpassed"))
    if not rec["summary"] and not ran and not rec["timed_out"]:  # pytest itself did not run
        lines = (out or "").strip().splitlines()
        rec.update(status="error", error=f"pytest exited with {proc.returncode}: "
                                         f"{lines[-1] if lines else 'no output'}"[:300])
    else:
        rec["status"] = "ok"
    return rec


# -------------------------------------------------------------------------------- models
def _build(label: str, side: int, backend: Optional[str]):
    from ..model_factory import create_model, import_plugins
    import_plugins()
    name, kwargs, _, _ = MODELS[label]
    return create_model(name, side, backend if name.startswith("hgrn") else None, **kwargs)


def measure_model(label: str, size: int, batch: int, modes: Sequence[str], warmup: int,
                  iters: int, device, backend: Optional[str] = None) -> List[Dict[str, Any]]:
    """Inference and/or training step of one model at one (nominal) size and batch."""
    import torch
    import torch.nn.functional as F
    base = dict(label=label, model=MODELS[label][0], kwargs=MODELS[label][1], img_size=size,
                side=side_for(label, size), tokens=tokens_for(label, size), batch=batch,
                warmup=warmup, iters=iters)
    recs = []
    amp = torch.autocast(device.type, dtype=torch.bfloat16)
    model = x = y = opt = None
    try:
        torch.manual_seed(0)
        model = _build(label, base["side"], backend).to(device)
        x = torch.randn(batch, 3, base["side"], base["side"], device=device)
        y = torch.randint(0, getattr(model, "num_classes", 1000) or 1000, (batch,), device=device)
    except Exception as err:  # noqa: BLE001 - recorded, the report goes on
        status = "oom" if is_oom(err) else "error"
        recs = [dict(base, mode=m, status=status, error=_err(err)) for m in modes]
        del model, x, y
        _cleanup(device)
        return recs
    for mode in modes:
        rec = dict(base, mode=mode, status="ok", error="")
        try:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            if mode == "infer":
                model.eval()

                def step():
                    with torch.inference_mode(), amp:
                        model(x)
            else:
                model.train()
                opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

                def step():
                    opt.zero_grad(set_to_none=True)
                    with amp:
                        out = model(x)
                    F.cross_entropy(out.float(), y).backward()
                    opt.step()
            times = time_steps(step, warmup, iters, device)
            med = statistics.median(times)
            rec.update(median_ms=med, min_ms=min(times), img_per_s=batch / med * 1e3)
            if device.type == "cuda":
                rec["peak_mem_mib"] = torch.cuda.max_memory_allocated(device) / MIB
        except Exception as err:  # noqa: BLE001 - an OOM point is recorded, the report goes on
            rec.update(status="oom" if is_oom(err) else "error", error=_err(err))
        finally:
            if opt is not None:
                opt = None
                model.zero_grad(set_to_none=True)
            _cleanup(device)
        recs.append(rec)
    del model, x, y
    _cleanup(device)
    return recs


# ------------------------------------------------------------------------------ the ops
def _hgru_fn():
    """``hgrn_core.hgru`` when the tree has it, else the unfused composition the models used
    before it (gates in torch + the scan ops): (function, description)."""
    import hgrn_core
    if hasattr(hgrn_core, "hgru"):
        return hgrn_core.hgru, "hgrn::hgru"
    import torch
    import torch.nn.functional as F

    def unfused(proj, lower_bound, theta_f, theta_r, direction="both"):
        d = proj.shape[-1] // (3 if theta_f is not None else 2)
        c, mu = proj[..., :-d].float(), proj[..., -d:].float()
        lam = torch.sigmoid(mu)
        if lower_bound is not None:
            lam = lower_bound + (1 - lower_bound) * lam
        x = F.silu(c)
        if theta_f is None:
            h = hgrn_core.real_scan(x * (1 - lam), lam)
            return h.to(proj.dtype)
        u, v = x[..., :d] * (1 - lam), x[..., d:] * (1 - lam)
        hr, hi = hgrn_core.bidirectional_scan(u, v, lam, theta_f, theta_r)
        return torch.cat([hr, hi], -1).to(proj.dtype)
    return unfused, "unfused gates + hgrn_core scans (hgrn_core.hgru not in this tree)"


def _call(fn, *args, **kw):
    out = fn(*args, **kw)
    return out[0] if isinstance(out, (tuple, list)) else out


def copy_bandwidth(nbytes: int, device, warmup: int, iters: int) -> Dict[str, Any]:
    import torch
    src = torch.empty(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    ms = time_op(lambda: dst.copy_(src), warmup, iters, device)
    del src, dst
    _cleanup(device)
    return {"bytes": nbytes, "ms": ms, "gb_per_s": 2 * nbytes / ms / 1e6,
            "counting": "bytes read + bytes written"}


def _randn(shape, device, dtype, gen):
    import torch
    return torch.randn(*shape, generator=gen, device=device, dtype=dtype)


def measure_hgru_bandwidth(plan: Plan, device, copy_gbs: Optional[float]) -> List[Dict[str, Any]]:
    import torch
    fn, impl = _hgru_fn()
    rows = []
    for B, N, d in plan.op_shapes:
        for pass_name in ("forward", "forward+backward"):
            rec = dict(shape=[B, N, d], passes=pass_name, impl=impl, dtype="bfloat16",
                       direction="both", status="ok", error="")
            nbytes = (5 if pass_name == "forward" else 13) * d * B * N * 2  # bf16
            rec["min_bytes"] = nbytes
            proj = lb = tf = tr = dh = leaves = None
            try:
                g = torch.Generator(device=device).manual_seed(0)
                proj = _randn((B, N, 3 * d), device, torch.bfloat16, g)
                lb = 0.9 * torch.rand(d, generator=g, device=device)
                tf, tr = _randn((d,), device, torch.float32, g), _randn((d,), device, torch.float32, g)
                if pass_name == "forward":
                    def run():
                        with torch.no_grad():
                            _call(fn, proj, lb, tf, tr, direction="both")
                else:
                    leaves = [t.requires_grad_() for t in (proj, lb, tf, tr)]
                    dh = _randn((B, N, 2 * d), device, torch.bfloat16, g)

                    def run():
                        for t in leaves:
                            t.grad = None
                        h = _call(fn, proj, lb, tf, tr, direction="both")
                        torch.autograd.backward(h, dh)
                ms = time_op(run, plan.op_warmup, plan.op_iters, device)
                rec.update(ms=ms, gb_per_s=nbytes / ms / 1e6)
                if copy_gbs:
                    rec["copy_gb_per_s"] = copy_gbs
                    rec["fraction_of_copy"] = rec["gb_per_s"] / copy_gbs
            except Exception as err:  # noqa: BLE001
                rec.update(status="oom" if is_oom(err) else "error", error=_err(err))
            finally:
                proj = lb = tf = tr = dh = leaves = run = None  # noqa: F841
                _cleanup(device)
            rows.append(rec)
            _log(f"  hgru {B}x{N}x{d} {pass_name:<16} " + (
                f"{rec['ms']:.3f} ms {rec['gb_per_s']:.0f} GB/s" if rec["status"] == "ok"
                else rec["status"] + " " + rec["error"]))
    return rows


def _fla():
    try:
        from fla.ops.hgrn import chunk_hgrn, fused_recurrent_hgrn
    except Exception as err:  # noqa: BLE001 - optional
        return None, ("fla not installed" if isinstance(err, ImportError)
                      else f"fla import failed ({_err(err)})")
    return {"fla_chunk": chunk_hgrn, "fla_fused_recurrent": fused_recurrent_hgrn}, None


def measure_real_vs_fla(plan: Plan, device) -> Tuple[List[Dict[str, Any]], Optional[str]]:
    import torch
    import torch.nn.functional as F
    fn, impl = _hgru_fn()
    fla, fla_note = _fla()
    impls: Dict[str, Any] = {"ours": None}
    if fla:
        impls.update(fla)
    rows = []
    for B, N, d in plan.fla_shapes:
        for name, kernel in impls.items():
            for pass_name in ("forward", "forward+backward"):
                rec = dict(shape=[B, N, d], passes=pass_name, impl=name, dtype="bfloat16",
                           status="ok", error="")
                if name == "ours":
                    rec["op"] = impl
                proj = xx = gg = leaves = dout = None
                try:
                    g = torch.Generator(device=device).manual_seed(0)
                    if name == "ours":
                        proj = _randn((B, N, 2 * d), device, torch.bfloat16, g)
                        leaves = [proj]

                        def f():
                            return _call(fn, proj, None, None, None, direction="forward")
                    else:
                        xx = _randn((B, N, d), device, torch.bfloat16, g)
                        gg = F.logsigmoid(_randn((B, N, d), device, torch.float32, g)
                                          ).to(torch.bfloat16)
                        leaves = [xx, gg]

                        def f(kernel=kernel):
                            return _call(kernel, xx, gg)
                    if pass_name == "forward":
                        def run():
                            with torch.no_grad():
                                f()
                    else:
                        for t in leaves:
                            t.requires_grad_()
                        dout = _randn((B, N, d), device, torch.bfloat16, g)

                        def run():
                            for t in leaves:
                                t.grad = None
                            torch.autograd.backward(f(), dout)
                    rec["ms"] = time_op(run, plan.op_warmup, plan.op_iters, device)
                except Exception as err:  # noqa: BLE001
                    rec.update(status="oom" if is_oom(err) else "error", error=_err(err))
                finally:
                    proj = xx = gg = leaves = dout = run = f = None  # noqa: F841
                    _cleanup(device)
                rows.append(rec)
                _log(f"  real causal {B}x{N}x{d} {name:<20} {pass_name:<16} " + (
                    f"{rec['ms']:.3f} ms" if rec["status"] == "ok"
                    else rec["status"] + " " + rec["error"]))
    return rows, fla_note


