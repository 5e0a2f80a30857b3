"""hgrn_core: HGRU token mixers and the complex linear-recurrence scan on pluggable backends.

    from hgrn_core import HGRU, HierarchicalLowerBound, bidirectional_scan, hgru
"""
from . import ops  # noqa: F401  (registers the hgrn::* scan ops)
from .backends import get_backend, list_backends, register_backend, resolve_backend
from .hgru_op import hgru
from .hgru2d_op import hgru2d
from .lower_bound import HierarchicalLowerBound
from .norm_gate_op import norm_gate
from .mixers import (HGRU, HGRU2d, AttentionMixer, TokenMixer, create_mixer, get_mixer_class, list_mixers,
                     register_mixer)
from .scan import bidirectional_scan, complex_scan, real_scan
from . import onnx_export as _onnx_export

# torch.onnx.export (both exporters) translates the hgrn ops once hgrn_core is imported;
# onnxscript is not imported here (see hgrn_core.onnx_export.install)
_onnx_export.install()

__version__ = "0.1.0"

__all__ = [
    "hgru", "hgru2d", "complex_scan", "bidirectional_scan", "real_scan",
    "get_backend", "list_backends", "register_backend", "resolve_backend",
    "HGRU", "HGRU2d", "AttentionMixer", "TokenMixer", "create_mixer", "get_mixer_class", "list_mixers", "register_mixer",
    "HierarchicalLowerBound", "norm_gate",
]
