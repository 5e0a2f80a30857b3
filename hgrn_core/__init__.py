"""hgrn_core: HGRU token mixers and the complex linear-recurrence scan on pluggable backends."""
from .backends import get_backend, list_backends, register_backend, resolve_backend
from .scan import bidirectional_scan, complex_scan, real_scan

__version__ = "0.1.0"
