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
model passes to every block (``grid_width``); traced (``torch.jit.trace``), the 1-D op on
the rows and columns instead, so that the trace keeps the grid's width dynamic. There is
no running state, so
``forward_with_state`` and ``step`` are not available.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..hgru2d_op import hgru2d
from ..hgru_op import hgru
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
        elif torch.jit.is_tracing():
            h = self._traced_rows_and_columns(core, lower_bound, grid_width)
        else:
            h = hgru2d(core, lower_bound, self.theta_forward, self.theta_reverse,
                       grid_width=grid_width, direction=self.direction, backend=self.backend)
        return self._output(h, gate)

    @torch.jit.unused
    def _traced_rows_and_columns(self, core: Tensor, lower_bound: Optional[Tensor],
                                 grid_width) -> Tensor:
        """The recurrence for ``torch.jit.trace`` (and the TorchScript ONNX exporter, which
        traces): the tracer records an int argument of a custom op as a constant, so the
        ``hgrn::hgru2d`` op would silently keep the traced image's width at every other size.
        Here the 1-D op runs on the rows and on the columns, reshaped with the traced (so
        dynamic) sizes: the composition of the op's base backend, valid at any size."""
        B, N, P = core.shape
        grid = core.reshape(B, -1, grid_width, P)                       # (B, H, Wg, P)
        H = grid.shape[1]
        theta_r = self.theta_reverse if self.direction == "both" else None
        run = lambda seq: hgru(seq, lower_bound, self.theta_forward, theta_r,  # noqa: E731
                               direction=self.direction, backend=self.backend)
        rows = run(grid.reshape(-1, grid_width, P))                      # (B * H, Wg, W)
        cols = run(grid.transpose(1, 2).reshape(-1, H, P))               # (B * Wg, H, W)
        W = rows.shape[-1]
        return rows.reshape(B, N, W) + cols.reshape(B, grid_width, H, W).transpose(1, 2).reshape(B, N, W)

    def forward_with_state(self, x, lower_bound=None, state=None):
        raise RuntimeError("HGRU2d scans a whole grid: it has no running state")

    def step(self, x, state=None, lower_bound=None):
        raise RuntimeError("HGRU2d scans a whole grid: it has no running state")
