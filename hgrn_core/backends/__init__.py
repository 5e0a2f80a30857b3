"""Scan backends by name.

``reference`` (sequential loop, ground truth), ``torch`` (chunked, any device), ``triton``
(fused GPU kernels) and ``numba`` (compiled CPU loops for the fused HGRU op); the last two
are loaded lazily, so that the package works without Triton or Numba.

Choosing a backend: an explicit name wins; with ``"auto"`` the environment variable
``HGRN_BACKEND`` decides if set, otherwise the fastest backend known to run on the tensors'
device: Triton for CUDA GPUs of compute capability >= 8.0 with triton >= 3.6 (the kernels
are compile-checked for sm_80 and sm_90), else torch, with one log line saying why; for CPU
tensors numba where Numba imports (``pip install "hgrn[cpu]"``), else torch. CPU tensors
never reach a GPU kernel unless ``triton`` is asked for by name under ``TRITON_INTERPRET=1``.

Safety net of the automatic choice (``run_backend``): when Triton or Numba was chosen
automatically and a kernel fails to compile or launch, the op runs on the torch backend
instead, one warning names the error and ``HGRN_BACKEND``, and ``auto`` picks torch for the
rest of the process (on that kind of device). A backend named explicitly (argument or
``HGRN_BACKEND``) raises its errors.
"""
from __future__ import annotations

import functools
import importlib.metadata
import logging
import os
import re
import warnings
from typing import Callable, Dict, Optional, Tuple, TypeVar, Union

import torch

from .base import ScanBackend
from .reference import ReferenceBackend
from .torch_chunked import TorchBackend

ENV_VAR = "HGRN_BACKEND"

# name -> backend instance, or a zero-argument loader for backends with optional deps
_REGISTRY: Dict[str, Union[ScanBackend, Callable[[], ScanBackend]]] = {}


def register_backend(name: str, backend: Union[ScanBackend, Callable[[], ScanBackend]]) -> None:
    """Register a backend instance, or a loader called on first use."""
    _REGISTRY[name] = backend


def list_backends() -> list[str]:
    return list(_REGISTRY)


def get_backend(name: str) -> ScanBackend:
    """The backend registered as ``name`` (ValueError naming the choices if unknown)."""
    if name not in _REGISTRY:
        raise ValueError(
            f"unknown scan backend {name!r}; choose one of {['auto'] + list_backends()}")
    entry = _REGISTRY[name]
    if not isinstance(entry, ScanBackend):
        try:
            entry = entry()
        except ImportError as err:
            raise ValueError(f"scan backend {name!r} is not available here: {err}") from err
        _REGISTRY[name] = entry
    return entry


# The Triton kernels were tested with Triton 3.6 (GPU) and 3.8 (interpreter); older releases
# (e.g. 3.3, which torch 2.7's CUDA wheels pin) cannot run them.
MIN_TRITON = (3, 6)


@functools.lru_cache(maxsize=None)
def triton_version() -> Optional[str]:
    """The installed Triton's version, or None (read without importing triton). Cached: the
    metadata lookup scans site-packages (about 1 ms with a few hundred packages), and the ops
    resolve "auto" on every call."""
    for dist in ("triton", "pytorch-triton"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def triton_usable() -> bool:
    """Whether a Triton new enough for the kernels is installed."""
    version = triton_version()
    return version is not None and _release(version) >= MIN_TRITON


@functools.lru_cache(maxsize=None)
def _release(version: str) -> Tuple[int, ...]:
    # (major, minor) of a version string; parsed once: "auto" asks on every op call
    return tuple(int(p) for p in re.findall(r"\d+", version)[:2])


# the oldest GPU architecture the kernels are compile-checked for (tests/test_triton_compile.py)
MIN_CAPABILITY = (8, 0)

_log = logging.getLogger("hgrn")
_said: set = set()               # log lines already given (one per reason)
_failed: Dict[str, str] = {}     # backend name -> why ``auto`` no longer picks it


def triton_unsupported(device: torch.device) -> Optional[str]:
    """Why ``auto`` does not run the Triton kernels on ``device`` (a CUDA device), or None."""
    if "triton" not in _REGISTRY:
        return "no 'triton' backend is registered"
    if not triton_usable():
        wanted = ".".join(map(str, MIN_TRITON))
        return f"triton >= {wanted} is not installed (found {triton_version() or 'none'})"
    if getattr(torch.version, "hip", None):
        return "the Triton kernels are not checked on ROCm GPUs"
    cap = _capability(device)
    if cap < MIN_CAPABILITY:
        return (f"compute capability {cap[0]}.{cap[1]} is below "
                f"{MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]}, the oldest the kernels are checked for")
    if "triton" in _failed:
        return _failed["triton"]
    return None


def _capability(device: torch.device):
    index = device.index if device.index is not None else torch.cuda.current_device()
    return _capability_of(index)


@functools.lru_cache(maxsize=None)
def _capability_of(index: int):
    return tuple(torch.cuda.get_device_capability(index))


def numba_unsupported() -> Optional[str]:
    """Why ``auto`` does not run the Numba loops on CPU tensors, or None. The first call
    imports numba (about half a second); the answer is kept."""
    if "numba" not in _REGISTRY:
        return "no 'numba' backend is registered"
    if "numba" in _failed:
        return _failed["numba"]
    try:
        get_backend("numba")
    except ValueError as err:
        _failed["numba"] = str(err)
        return _failed["numba"]
    return None


def auto_backend_name(device: torch.device) -> str:
    """The compiled backend for ``device`` where it is known to run (numba on the CPU, Triton
    on CUDA), else torch, with one log line per reason saying why."""
    if device.type == "cpu":
        name, why = "numba", numba_unsupported()
    elif device.type == "cuda":
        name, why = "triton", triton_unsupported(device)
    else:
        return "torch"
    if why is None:
        return name
    if why not in _said:
        _said.add(why)
        _log.info("hgrn: the torch backend runs on %s: %s", device, why)
    return "torch"


def chosen_automatically(name: Optional[str]) -> bool:
    """Whether ``name`` leaves the choice to ``auto`` (no name and no ``HGRN_BACKEND``)."""
    return name in (None, "auto") and os.environ.get(ENV_VAR, "").strip() in ("", "auto")


def resolve_choice(name: Optional[str], device: torch.device) -> Tuple[ScanBackend, bool]:
    """``(resolve_backend(name, device), chosen_automatically(name))``, reading
    ``HGRN_BACKEND`` once (the ops ask on every call; an environment read costs ~1 us)."""
    automatic = False
    if name is None or name == "auto":
        name = os.environ.get(ENV_VAR, "").strip() or "auto"
        if name == "auto":
            name, automatic = auto_backend_name(device), True
    backend = get_backend(name)
    if not backend.is_available(device):
        usable = [n for n in list_backends() if _usable(n, device)]
        raise ValueError(
            f"scan backend {name!r} cannot run on {device.type} tensors; "
            f"usable here: {usable} (or 'auto')")
    return backend, automatic


T = TypeVar("T")


def run_backend(name: Optional[str], device: torch.device, call: Callable[[ScanBackend], T]) -> T:
    """``call(backend)`` on the backend ``name`` resolves to on ``device``. Where Triton or
    Numba was chosen automatically and its kernel fails (a compile or launch error; not an
    input error, not out of memory), warn once and run ``call`` on the torch backend
    instead; ``auto`` then picks torch for the rest of the process."""
    backend, automatic = resolve_choice(name, device)
    if backend.name not in ("triton", "numba") or not automatic:
        return call(backend)
    kind = backend.name
    try:
        return call(backend)
    except (ValueError, TypeError, torch.OutOfMemoryError):
        raise
    except Exception as err:  # noqa: BLE001 - any kernel failure: compile, resources, launch
        text = f"{type(err).__name__}: {err}".strip().splitlines()[0][:300]
        _failed[kind] = f"its kernels failed on this machine ({text})"
        label = kind.capitalize()
        warnings.warn(
            f"hgrn: a {label} kernel failed ({text}); running the torch backend instead, for "
            f"the rest of this process. Set {ENV_VAR}=torch to skip {label}, or "
            f"{ENV_VAR}={kind} to see the full error.", RuntimeWarning, stacklevel=2)
        return call(get_backend("torch"))


def resolve_backend(name: str | None, device: torch.device) -> ScanBackend:
    """Turn a user's choice (name, ``"auto"`` or None) into a backend usable on ``device``."""
    return resolve_choice(name, device)[0]


def op_backend(name: str, device: torch.device) -> str:
    """The backend name a custom op hands its backward: ``name``; for ``"auto"`` with
    ``HGRN_BACKEND`` set, the backend that names (resolved for ``device``); an automatic
    choice stays ``"auto"``, so that the backward keeps ``run_backend``'s fallback."""
    if name != "auto" or chosen_automatically(name):
        return name
    return resolve_backend(name, device).name


def _usable(name: str, device: torch.device) -> bool:
    try:
        return get_backend(name).is_available(device)
    except ValueError:
        return False


def _load_triton() -> ScanBackend:
    if not triton_usable():
        wanted = ".".join(map(str, MIN_TRITON))
        raise ImportError(f"the Triton kernels need triton >= {wanted} (installed: "
                          f"{triton_version() or 'none'}); pip install 'hgrn[gpu]'")
    from .triton_backend import TritonBackend  # imports triton: only on demand
    return TritonBackend()


def _load_numba() -> ScanBackend:
    try:
        from .numba_cpu import NumbaBackend  # imports numba: only on demand
    except ImportError as err:
        raise ImportError(f"the compiled CPU loops need numba ({err}); "
                          f"pip install 'hgrn[cpu]'") from err
    return NumbaBackend()


register_backend("reference", ReferenceBackend())
register_backend("torch", TorchBackend())
register_backend("triton", _load_triton)
register_backend("numba", _load_numba)

__all__ = ["ScanBackend", "register_backend", "list_backends", "get_backend",
           "resolve_backend", "resolve_choice", "op_backend", "run_backend",
           "chosen_automatically",
           "auto_backend_name", "triton_unsupported", "numba_unsupported", "triton_usable", "MIN_TRITON",
           "MIN_CAPABILITY", "ENV_VAR"]
