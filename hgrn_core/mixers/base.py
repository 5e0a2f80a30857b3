"""The token-mixer interface and the registry of mixers by name.

A token mixer maps ``(B, N, C) -> (B, N, C)`` and receives its layer's forget-gate lower
bound ``gamma_k`` of shape (C,) (``None`` outside a hierarchical model) and the width of the
patch grid the N tokens form row-major (``grid_width``; 0 where there is no grid). Mixers
that have no use for them (attention; the 1-D HGRU has none for the grid) ignore them, so
every mixer plugs into the same blocks.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Type

from torch import Tensor, nn


class TokenMixer(nn.Module):
    """Base class: subclasses implement ``forward(x, lower_bound=None, grid_width=0)``.

    A mixer says what it needs from the model that holds it: ``uses_lower_bound`` (the model
    then owns a ``HierarchicalLowerBound`` and passes each layer its row), and
    ``options_from_model`` picks its constructor arguments from the model's options, so
    that models never branch on mixer names."""

    uses_lower_bound: bool = False

    @classmethod
    def options_from_model(cls, **model_options) -> Dict[str, object]:
        """Constructor keywords taken from the model's options (``mixer_backend``,
        ``num_heads``, ``attn_drop``, ``proj_drop``, ...): none by default."""
        return {}

    def forward(self, x: Tensor, lower_bound: Optional[Tensor] = None, grid_width: int = 0
                ) -> Tensor:
        raise NotImplementedError


_MIXERS: Dict[str, Type[TokenMixer]] = {}


def register_mixer(name: str) -> Callable[[Type[TokenMixer]], Type[TokenMixer]]:
    def wrap(cls: Type[TokenMixer]) -> Type[TokenMixer]:
        _MIXERS[name] = cls
        return cls
    return wrap


def list_mixers() -> list[str]:
    return sorted(_MIXERS)


def get_mixer_class(name: str) -> Type[TokenMixer]:
    """The mixer class registered as ``name`` (ValueError naming the choices if unknown)."""
    if name not in _MIXERS:
        raise ValueError(f"unknown token mixer {name!r}; choose one of {list_mixers()}")
    return _MIXERS[name]


def create_mixer(name: str, dim: int, **kwargs) -> TokenMixer:
    """Build the mixer registered as ``name`` for width ``dim``."""
    return get_mixer_class(name)(dim, **kwargs)


def shape_str(x: Tensor) -> str:
    """``str(tuple(x.shape))``, written so that TorchScript compiles it (it cannot turn a
    shape of unknown length into a tuple)."""
    dims = [str(s) for s in x.shape]
    return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"


def check_tokens(x: Tensor, dim: int, who: str) -> None:
    """Clear errors for the most common misuse: wrong rank or width. Scriptable: under
    TorchScript the same message comes as ``torch.jit.Error`` ("... builtins.ValueError:
    <message>"), TorchScript's wrapper of every exception raised in scripted code."""
    if x.dim() != 3:
        raise ValueError(f"{who} expects tokens of shape (B, N, {dim}); got a {x.dim()}-D "
                         f"tensor of shape {shape_str(x)}")
    if x.shape[-1] != dim:
        raise ValueError(f"{who} was built for {dim} channels; got tokens of shape "
                         f"{shape_str(x)}")
