"""Fused Triton kernels (imported only on demand)."""
