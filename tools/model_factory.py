"""Building timm models by name for the report tools (flops, benchmark)."""
from __future__ import annotations

import ast
import importlib
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import torch


def import_plugins(extra: Iterable[str] = ()) -> List[str]:
    """Import ``hgrn_vision`` (registers the hgrn_* timm models) when present, and any
    module named with ``--import``. Returns notes for the report."""
    notes = []
    try:
        importlib.import_module("hgrn_vision")
    except ModuleNotFoundError as err:
        if err.name != "hgrn_vision":
            raise
        notes.append("hgrn_vision not importable: hgrn_* models unavailable")
    for name in extra:
        importlib.import_module(name)
    return notes


def parse_kwargs(items: Sequence[str], what: str = "--model-kwargs") -> Dict[str, Any]:
    """``["embed_dim=32", "mixer=hgru"]`` -> ``{"embed_dim": 32, "mixer": "hgru"}``: values
    are Python literals where they parse as one (numbers, True/False/None, tuples), else
    strings. ``what`` names the option in the error."""
    out: Dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{what} takes KEY=VALUE items, got {item!r}")
        try:
            out[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            out[key.strip()] = value.strip()
    return out


def parse_model_spec(spec: str) -> Tuple[str, Dict[str, Any]]:
    """``"name"`` or ``"name:key=value,key=value"`` (a model with constructor arguments,
    e.g. ``hgrn_deit_tiny:mixer=hgru_no_recurrence``) -> (name, kwargs); values as in
    ``parse_kwargs`` (without commas)."""
    name, _, args = spec.partition(":")
    return name, parse_kwargs([a for a in args.split(",") if a],
                              f"model {spec!r}: name:key=value[,key=value...]")


def create_model(name: str, img_size: Optional[int] = None, backend: Optional[str] = None,
                 **kwargs) -> torch.nn.Module:
    """A timm model by name (or ``name:key=value,...``, ``parse_model_spec``), built for
    ``img_size`` where the model takes that argument (ViTs / HGRN; convnets take any size),
    without pretrained weights."""
    import timm
    name, spec_kwargs = parse_model_spec(name)
    kwargs = {**spec_kwargs, **kwargs}
    if backend and name.startswith("hgrn"):
        kwargs.setdefault("mixer_backend", backend)
    if img_size is not None:
        try:
            return timm.create_model(name, pretrained=False, img_size=img_size, **kwargs)
        except TypeError as err:
            if "img_size" not in str(err):
                raise
    return timm.create_model(name, pretrained=False, **kwargs)
