"""HGRU2d: the HGRU over the rows and the columns of the patch grid (docs/spec.md §8).

The 1-D HGRU's parameters, gates, phases, norm and output gate; only the recurrence differs:
instead of one scan per direction over the row-major sequence, the same scans run along
every row of the grid and along every column, and their states are summed before the norm.
A row-major sequence keeps vertical neighbours a whole row apart; the column scans join them
directly.

* bidirectional (default): forward and reverse along each axis, four scans;
  ``theta_forward`` serves both forward scans, ``theta_reverse`` both reverse ones (the
  authors' ``BiHgru2d``; with ``complex_valued=False`` their ``HgruReal2d``);
* ``causal=True``: one forward scan per axis, ``theta_forward`` for both (their ``Hgru2d``).

The recurrence is one op, ``hgrn::hgru2d``; the mixer needs the grid's width, which the
model passes to every block (``grid_width``). There is no running state, so
``forward_with_state`` and ``step`` are not available.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..hgru2d_op import hgru2d
from .base import check_tokens, register_mixer
from .hgru import HGRU


@register_mixer("hgru2d")
class HGRU2d(HGRU):
    def extra_repr(self) -> str:
        return super().extra_repr() + ", 2-D (rows and columns)"

    def forward(self, x: Tensor, lower_bound: Optional[Tensor] = None, grid_width: int = 0
                ) -> Tensor:
        check_tokens(x, self.dim, "HGRU2d")
        if grid_width < 1 or x.shape[1] % grid_width != 0:
            raise ValueError(f"HGRU2d needs the width of the patch grid its {x.shape[1]} tokens "
                             f"form row-major (grid_width), got {grid_width}")
        core, gate = self.in_proj(x)
        if torch.jit.is_scripting():  # the op itself; it resolves "auto" at run time
            h = torch.ops.hgrn.hgru2d(core, lower_bound, self.theta_forward, self.theta_reverse,
                                      grid_width, self.direction, self.backend)
        else:
            h = hgru2d(core, lower_bound, self.theta_forward, self.theta_reverse,
                       grid_width=grid_width, direction=self.direction, backend=self.backend)
        return self._output(h, gate)

    def forward_with_state(self, x, lower_bound=None, state=None):
        raise RuntimeError("HGRU2d scans a whole grid: it has no running state")

    def step(self, x, state=None, lower_bound=None):
        raise RuntimeError("HGRU2d scans a whole grid: it has no running state")
