"""Scan backends by name.

``reference`` (sequential loop, ground truth), ``torch`` (chunked, any device) and
``triton`` (fused GPU kernels, loaded lazily so that the package works without Triton).

Choosing a backend: an explicit name wins; with ``"auto"`` the environment variable
``HGRN_BACKEND`` decides if set, otherwise the fastest backend for the tensors' device
(Triton for CUDA tensors when triton >= 3.6 is installed, else torch). CPU tensors never
reach a GPU kernel unless ``triton`` is asked for by name under ``TRITON_INTERPRET=1``.
"""
from __future__ import annotations

import importlib.metadata
import os
import re
from typing import Callable, Dict, Optional, Union

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


def triton_version() -> Optional[str]:
    """The installed Triton's version, or None (read without importing triton)."""
    for dist in ("triton", "pytorch-triton"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def triton_usable() -> bool:
    """Whether a Triton new enough for the kernels is installed."""
    version = triton_version()
    if version is None:
        return False
    return tuple(int(p) for p in re.findall(r"\d+", version)[:2]) >= MIN_TRITON


def auto_backend_name(device: torch.device) -> str:
    if device.type == "cuda" and triton_usable() and "triton" in _REGISTRY:
        return "triton"
    return "torch"


def resolve_backend(name: str | None, device: torch.device) -> ScanBackend:
    """Turn a user's choice (name, ``"auto"`` or None) into a backend usable on ``device``."""
    if name is None or name == "auto":
        name = os.environ.get(ENV_VAR, "").strip() or "auto"
        if name == "auto":
            name = auto_backend_name(device)
    backend = get_backend(name)
    if not backend.is_available(device):
        usable = [n for n in list_backends() if _usable(n, device)]
        raise ValueError(
            f"scan backend {name!r} cannot run on {device.type} tensors; "
            f"usable here: {usable} (or 'auto')")
    return backend


def op_backend(name: str, device: torch.device) -> str:
    """The backend a custom op runs: ``name``, or for ``"auto"`` the one ``resolve_backend``
    picks for ``device`` at run time (the ops' own resolution, for TorchScript, which calls
    them directly)."""
    return resolve_backend(name, device).name if name == "auto" else name


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


register_backend("reference", ReferenceBackend())
register_backend("torch", TorchBackend())
register_backend("triton", _load_triton)

__all__ = ["ScanBackend", "register_backend", "list_backends", "get_backend",
           "resolve_backend", "op_backend", "auto_backend_name", "triton_usable", "MIN_TRITON", "ENV_VAR"]
