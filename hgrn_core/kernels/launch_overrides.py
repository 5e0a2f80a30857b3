"""Launch parameters forced for tests and tuning, shared by the Triton kernel modules."""
from __future__ import annotations

import contextlib


class LaunchOverrides(dict):
    """A module's forced launch parameters: empty unless inside ``forcing(...)``."""

    @contextlib.contextmanager
    def forcing(self, **kwargs):
        old = dict(self)
        self.update(kwargs)
        try:
            yield
        finally:
            self.clear()
            self.update(old)
