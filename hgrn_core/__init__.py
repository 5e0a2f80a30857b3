"""hgrn_core: HGRU token mixers and the complex linear-recurrence scan on pluggable backends.

    from hgrn_core import HGRU, HierarchicalLowerBound, bidirectional_scan
"""
from .backends import get_backend, list_backends, register_backend, resolve_backend
from .lower_bound import HierarchicalLowerBound
from .mixers import HGRU, AttentionMixer, TokenMixer, create_mixer, list_mixers, register_mixer
from .scan import bidirectional_scan, complex_scan, real_scan

__version__ = "0.1.0"

__all__ = [
    "complex_scan", "bidirectional_scan", "real_scan",
    "get_backend", "list_backends", "register_backend", "resolve_backend",
    "HGRU", "AttentionMixer", "TokenMixer", "create_mixer", "list_mixers", "register_mixer",
    "HierarchicalLowerBound",
]
