"""The hierarchical forget-gate lower bound (docs/spec.md §2).

A model with L mixer layers owns one parameter ``Gamma`` (L, d), initialised to ones:

    P = softmax(Gamma, dim=0);   gamma_1 = 0;   gamma_k = sum_{i<k} P_i

so the bound rises monotonically with depth and stays in [0, 1): lower layers may
forget fast, upper layers are made to keep long-range memory.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


class HierarchicalLowerBound(nn.Module):
    def __init__(self, num_layers: int, dim: int):
        super().__init__()
        if num_layers < 1 or dim < 1:
            raise ValueError(f"need num_layers >= 1 and dim >= 1, got {num_layers}, {dim}")
        self.num_layers, self.dim = num_layers, dim
        self.logits = nn.Parameter(torch.ones(num_layers, dim))  # Gamma of docs/spec.md §2

    def forward(self) -> Tensor:
        """gamma_k for every layer, shape (L, d): row 0 is all zeros."""
        shares = torch.softmax(self.logits, dim=0)
        cumulative = torch.cumsum(shares, dim=0)
        return torch.cat([torch.zeros_like(cumulative[:1]), cumulative[:-1]], dim=0)

    def extra_repr(self) -> str:
        return f"num_layers={self.num_layers}, dim={self.dim}"
