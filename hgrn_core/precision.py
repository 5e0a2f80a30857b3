"""The project's precision policy, below every other module: what dtype the math runs in."""
from __future__ import annotations

import torch


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Low-precision inputs are accumulated in fp32; fp64 stays fp64 (for gradcheck)."""
    return torch.float64 if dtype == torch.float64 else torch.float32
