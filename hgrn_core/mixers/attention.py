"""Softmax self-attention as a token mixer: the DeiT-style baseline for ablations.

It wraps timm's ``Attention`` (``F.scaled_dot_product_attention`` when fused attention
is enabled) and ignores the lower bound and the grid.
"""
from __future__ import annotations

from typing import Optional

from timm.layers import Attention
from torch import Tensor

from .base import TokenMixer, check_tokens, register_mixer


@register_mixer("attention")
class AttentionMixer(TokenMixer):
    def __init__(self, dim: int, num_heads: Optional[int] = None, qkv_bias: bool = True,
                 attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        # 64 channels per head, as DeiT-Tiny/Small (3 and 6 heads)
        num_heads = num_heads or max(1, dim // 64)
        if dim % num_heads:
            raise ValueError(f"attention width {dim} is not divisible by {num_heads} heads")
        self.dim = dim
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=qkv_bias,
                              attn_drop=attn_drop, proj_drop=proj_drop)

    @classmethod
    def options_from_model(cls, num_heads=None, attn_drop=0.0, proj_drop=0.0, **_):
        return dict(num_heads=num_heads, attn_drop=attn_drop, proj_drop=proj_drop)

    def forward(self, x: Tensor, lower_bound: Optional[Tensor] = None, grid_width: int = 0
                ) -> Tensor:
        check_tokens(x, self.dim, "AttentionMixer")
        return self.attn(x)
