"""Launch configurations of the fused HGRU kernels, per GPU architecture.

A configuration is one pass's launch parameters: ``block_t`` (tokens per tile), ``vec``
(channels per thread), ``block_d`` (= 32 * vec * num_warps), ``num_warps``, ``prefetch``
(load the next tile before walking this one), ``num_stages``. ``TABLE`` maps a compute
capability (major, minor) to the forward and backward configurations and names the device
whose sweep (``hgrn-benchmark --report tune-hgru``) chose them; a GPU without a row of its
own takes the row of the nearest older capability of its major version, else ``DEFAULT``.

``HGRN_HGRU_CONFIG=FILE`` replaces the table's choice on every GPU: FILE is a
``tune_hgru.json`` written by the sweep (its ``recommended`` entry) or a JSON object
``{"forward": {...}, "backward": {...}}`` with any of the keys above.
"""
from __future__ import annotations

import json
import os
from typing import Dict, Optional, Tuple

ENV_VAR = "HGRN_HGRU_CONFIG"
KEYS = ("block_t", "block_d", "num_warps", "vec", "prefetch", "num_stages")

Config = Dict[str, object]

# One warp per program, VEC = 2: the time axis of a tile lives inside each thread
# (docs/triton.md); chosen from register counts and an H200 sweep of an earlier version.
DEFAULT = {
    "forward": dict(block_t=8, block_d=64, num_warps=1, vec=2, prefetch=True, num_stages=1),
    "backward": dict(block_t=4, block_d=64, num_warps=1, vec=2, prefetch=False, num_stages=1),
    "measured": "not measured: the defaults (docs/triton.md)",
}

# Hopper (H100 / H200). The sweep's best per shape (ms, bf16, direction 'both'):
#   forward  (256, 256, 384)  8x64 VEC 2 prefetch 0.164;  (8, 16384, 384) 16x64 VEC 2 prefetch
#            0.372 (this row's 8x64: 0.394);  backward 4x64 VEC 2 prefetch 0.523 / 0.970
#            (without prefetch 0.534 / 0.999: within the run-to-run spread).
HOPPER = {
    "forward": dict(block_t=8, block_d=64, num_warps=1, vec=2, prefetch=True, num_stages=1),
    "backward": dict(block_t=4, block_d=64, num_warps=1, vec=2, prefetch=True, num_stages=1),
    "measured": "NVIDIA H200 (sm_90), Triton 3.6.0, torch 2.11, 2026-12-04: "
                "hgrn-benchmark --report tune-hgru, both shapes (docs/benchmarks.md)",
}

TABLE: Dict[Tuple[int, int], Dict[str, object]] = {
    (8, 0): DEFAULT,   # Ampere / Ada (A100, RTX 4090): not measured yet
    (9, 0): HOPPER,
}


def for_capability(capability: Tuple[int, int]) -> Dict[str, object]:
    """The table's row for a GPU of ``capability`` (nearest older row of its major version)."""
    major, minor = capability
    rows = [c for c in TABLE if c[0] == major and c[1] <= minor]
    return TABLE[max(rows)] if rows else DEFAULT


_file_cache: Dict[Tuple[str, float], Dict[str, Config]] = {}


def from_file(path: str) -> Dict[str, Config]:
    """The forward / backward configurations in a JSON file (see the module docstring)."""
    key = (path, os.path.getmtime(path))
    if key not in _file_cache:
        with open(path) as f:
            data = json.load(f)
        data = data.get("recommended", data) if isinstance(data, dict) else data
        if not isinstance(data, dict) or not set(data) & {"forward", "backward"}:
            raise ValueError(f"{ENV_VAR}={path}: expected a tune_hgru.json with 'recommended', "
                             f"or an object with 'forward' / 'backward' configurations")
        out = {}
        for pass_name in ("forward", "backward"):
            cfg = data.get(pass_name) or {}
            unknown = set(cfg) - set(KEYS)
            if unknown:
                raise ValueError(f"{ENV_VAR}={path}: unknown launch parameters "
                                 f"{sorted(unknown)} for the {pass_name} pass; known: {KEYS}")
            out[pass_name] = dict(cfg)
        _file_cache[key] = out
    return _file_cache[key]


def gpu_config(pass_name: str, capability: Optional[Tuple[int, int]]) -> Config:
    """The launch configuration of ``pass_name`` ('forward' / 'backward') on a GPU."""
    cfg = dict((for_capability(capability) if capability else DEFAULT)[pass_name])
    path = os.environ.get(ENV_VAR, "").strip()
    if path:
        forced = from_file(path)[pass_name]
        cfg.update(forced)
        if "block_d" not in forced:  # the layout: BLOCK_D = 32 * VEC * num_warps
            cfg["block_d"] = 32 * int(cfg["vec"]) * int(cfg["num_warps"])
    return cfg
