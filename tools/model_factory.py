"""Building timm models by name for the report tools (flops, benchmark)."""
from __future__ import annotations

import importlib
from typing import Dict, Iterable, List, Optional, Tuple

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


def _value(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"True": True, "False": False, "None": None}.get(text, text)


def parse_model_spec(spec: str) -> Tuple[str, Dict[str, object]]:
    """``"name"`` or ``"name:key=value,key=value"`` (a model with constructor arguments,
    e.g. ``hgrn_deit_tiny:mixer=hgru_no_recurrence``) -> (name, kwargs); values are ints,
    floats, True/False/None or strings."""
    name, _, args = spec.partition(":")
    kwargs = {}
    for item in filter(None, args.split(",")):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"model {spec!r}: expected name:key=value[,key=value...], "
                             f"got {item!r}")
        kwargs[key.strip()] = _value(value.strip())
    return name, kwargs


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
