"""A diagnostic HGRU with its recurrence removed, for benchmarks only.

``HGRUWithoutRecurrence`` has the HGRU's parameters and runs everything around the scan
(``in_proj``, the norm-gate, ``out_proj``) but takes ``h = c`` (the projection's state
columns, copied once, as the fused op writes its output once) instead of running the
recurrence. A model built with ``mixer="hgru_no_recurrence"`` therefore measures the most
that any scan implementation could reach: if it is slower than a goal, no scan work will
meet that goal. It computes nothing meaningful; do not train it.
"""
from __future__ import annotations

from typing import Optional

from torch import Tensor

from .base import check_tokens, register_mixer
from .hgru import HGRU


@register_mixer("hgru_no_recurrence")
class HGRUWithoutRecurrence(HGRU):
    def forward(self, x: Tensor, lower_bound: Optional[Tensor] = None, grid_width: int = 0
                ) -> Tensor:
        check_tokens(x, self.dim, "HGRUWithoutRecurrence")
        core, gate = self.in_proj(x)
        return self._output(core[..., :self.state_width].contiguous(), gate)

    def forward_with_state(self, x, lower_bound=None, state=None):
        raise RuntimeError("HGRUWithoutRecurrence is a benchmark diagnostic: it has no state")

    def step(self, x, state=None, lower_bound=None):
        raise RuntimeError("HGRUWithoutRecurrence is a benchmark diagnostic: it has no state")
