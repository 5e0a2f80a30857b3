"""Launch helpers shared by the Triton kernel modules: launch parameters forced for tests and
tuning, and the host-side integer math of the launch configurations."""
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


# ``triton.cdiv`` / ``triton.next_power_of_2`` are constexpr functions in recent Triton (about
# 3 us a call on the host); the wrappers compute their launches on every call.
def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def next_pow2(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1)."""
    return 1 << (max(n, 1) - 1).bit_length()
