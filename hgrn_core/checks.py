"""Input checks shared by the public entry points (scans, the HGRU op, the norm-gate op):
clear errors that name the argument, before anything reaches a kernel."""
from __future__ import annotations

import os

import torch
from torch import Tensor

DEBUG_ENV_VAR = "HGRN_DEBUG"
FLOAT_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def describe(t: Tensor) -> str:
    return f"shape {tuple(t.shape)}, dtype {t.dtype}, device {t.device}"


def check_float(name: str, t) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating-point tensor (float32, float64, bfloat16 "
                        f"or float16), got {t.dtype}")


def values_checked(t: Tensor) -> bool:
    """Value checks cost a device sync: on CPU always, elsewhere under HGRN_DEBUG=1;
    never while compiling or tracing (they would break the graph)."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return False
    return t.device.type == "cpu" or os.environ.get(DEBUG_ENV_VAR, "0") not in ("", "0")
