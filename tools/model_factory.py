"""Building timm models by name for the report tools (flops, benchmark)."""
from __future__ import annotations

import importlib
from typing import Iterable, List, Optional

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


def create_model(name: str, img_size: Optional[int] = None, backend: Optional[str] = None,
                 **kwargs) -> torch.nn.Module:
    """A timm model by name, built for ``img_size`` where the model takes that argument
    (ViTs / HGRN; convnets take any size), without pretrained weights."""
    import timm
    if backend and name.startswith("hgrn"):
        kwargs.setdefault("mixer_backend", backend)
    if img_size is not None:
        try:
            return timm.create_model(name, pretrained=False, img_size=img_size, **kwargs)
        except TypeError as err:
            if "img_size" not in str(err):
                raise
    return timm.create_model(name, pretrained=False, **kwargs)
