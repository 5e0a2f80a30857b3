"""The torch backend's scan core: a chunked first-order scan in a time-major layout.

A sequence of N positions is cut into n_chunks chunks of C positions (C ~ sqrt(N)). It is
stored *time-major*: position ``t = k C + j`` of batch row ``b`` lives at ``[j, b, k]`` of a
``(C, B, n_chunks, D)`` tensor, so that the slice every step works on (position j of all
chunks at once) is one contiguous block. The values are one tensor, complex (the HGRU's
state, with its decay ``lam e^{i theta}``) or real, so a step is a single
``addcmul``: h_j = x_j + a_j h_{j-1}. Three loops, ~3 sqrt(N) ops in all:

1. each chunk from a zero state, keeping only its end state;
2. the state entering each chunk, carried across chunks with each chunk's total decay
   (the product of its decays: products only shrink, nothing is divided);
3. each chunk again from its entering state, writing the outputs over the decays.

Why this shape: on a CPU the cost of the old planar scan was its op count (8 ops a step
over strided slices of real and imaginary planes) and its fresh full-size tensors (a new
tensor's pages cost more than the arithmetic on them); here a step is one op on contiguous
memory and the outputs reuse the decays' storage.

Padding (N not a multiple of C) sits at the end of the sequence with decay 1 and input 0:
a state passes through it unchanged, in either direction, so both directions share one
layout and the initial state of a reverse scan still enters at position N - 1.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor


class ChunkLayout:
    """Where position t of a length-``n`` sequence lives in the time-major chunked layout."""

    def __init__(self, n: int, chunk: Optional[int] = None):
        if n < 1:
            raise ValueError(f"a scan needs at least one position, got N={n}")
        self.n = n
        self.chunk = chunk or max(1, math.ceil(math.sqrt(n)))  # balances loops 1/3 and 2
        self.n_chunks = -(-n // self.chunk)
        self.pad = self.n_chunks * self.chunk - n

    def empty(self, batch: int, *rest: int, dtype, device) -> Tensor:
        return torch.empty(self.chunk, batch, self.n_chunks, *rest, dtype=dtype, device=device)

    def pairs(self, chunked: Sequence[Tensor], natural: Sequence[Tensor]
              ) -> List[Tuple[Tensor, ...]]:
        """Matching views ``(chunked parts..., natural parts...)`` of time-major tensors
        ``(C, B, n_chunks, ...)`` and batch-first ones ``(B, N, ...)``: one tuple when N is
        a multiple of C, else one for the full chunks and one for the last, partial one."""
        C, full = self.chunk, self.n_chunks - (1 if self.pad else 0)
        views = [t.movedim(0, 2) for t in chunked]  # (B, n_chunks, C, ...)
        parts = []
        if full:
            parts.append((*(v[:, :full] for v in views),
                          *(t[:, :full * C].unflatten(1, (full, C)) for t in natural)))
        if self.pad:
            parts.append((*(v[:, full, :C - self.pad] for v in views),
                          *(t[:, full * C:] for t in natural)))
        return parts

    def fill_padding(self, chunked: Tensor, value: float) -> None:
        if self.pad:
            chunked.movedim(0, 2)[:, -1, self.chunk - self.pad:].fill_(value)

    def last(self, chunked: Tensor, reverse: bool) -> Tensor:
        """The state after the whole sequence, (B, ...): at position N - 1 (forward; the
        padding after it keeps it unchanged) or at position 0 (reverse)."""
        return chunked[0, :, 0] if reverse else chunked[-1, :, -1]


def scan_in_place(x: Tensor, a: Tensor, h0: Optional[Tensor], reverse: bool) -> Tensor:
    """``h_t = a_t h_{t-1} + x_t`` (``h_{t+1}`` when ``reverse``), time-major chunked.

    ``x``, ``a``: ``(C, B, n_chunks, D)`` of one dtype (complex or real), contiguous;
    ``h0``: ``(B, D)`` or None (zero). The states are written over ``a``, which is returned.
    """
    C, B, n_chunks, D = x.shape
    steps = list(range(C - 1, -1, -1) if reverse else range(C))
    first = steps[0]
    if n_chunks == 1:
        entering = None if h0 is None else h0.unsqueeze(1)
    else:
        # 1. each chunk's end state from a zero state (two buffers, used in turn)
        buffers = (x.new_empty(B, n_chunks, D), x.new_empty(B, n_chunks, D))
        end = x[first]
        for n, j in enumerate(steps[1:]):
            end = torch.addcmul(x[j], a[j], end, out=buffers[n % 2])
        # 2. the state entering each chunk, chunk-major so that each step is contiguous
        total = a.prod(dim=0).transpose(0, 1).contiguous()   # (n_chunks, B, D)
        end = end.transpose(0, 1).contiguous()
        entering = x.new_empty(n_chunks, B, D)
        order = list(range(n_chunks - 1, -1, -1) if reverse else range(n_chunks))
        if h0 is None:
            entering[order[0]].zero_()
        else:
            entering[order[0]].copy_(h0)
        for k_prev, k in zip(order, order[1:]):
            torch.addcmul(end[k_prev], total[k_prev], entering[k_prev], out=entering[k])
        entering = entering.transpose(0, 1)  # (B, n_chunks, D)
    # 3. each chunk again from its entering state; states overwrite the decays
    prev = entering
    for j in steps:
        if prev is None:
            a[j].copy_(x[j])
        else:
            torch.addcmul(x[j], a[j], prev, out=a[j])
        prev = a[j]
    return a
