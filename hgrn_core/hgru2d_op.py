"""The 2-D HGRU core over a patch grid as one op: ``hgrn::hgru2d`` (and its backward).

From ``in_proj``'s core output ``proj = [c (W) | mu (d)]`` of the grid's tokens, row-major,
(B, H * Wg, W + d), to the state ``h`` (B, H * Wg, W) in the same dtype (docs/spec.md §8):
the 1-D core's gates, and its ``direction`` scan(s) run along every row of the grid and
along every column, all summed. ``direction="both"`` is the authors' ``BiHgru2d`` /
``HgruReal2d`` (four scans; ``theta_f`` serves both forward scans, ``theta_r`` both reverse
ones), ``"forward"`` their ``Hgru2d`` (one scan per axis, ``theta_f`` for both).

As the 1-D op: the gates and states live in fp32 (fp64 for fp64) inside the backend, the op
saves only its inputs and backward recomputes; ``torch.compile`` sees one op, fvcore one
named node. A fused backend walks the columns in place through strides; the base class
composes the 1-D core over the rows and a transposed copy of the columns.
"""
from __future__ import annotations

from typing import List, Optional

import torch
from torch import Tensor

from .backends import get_backend, op_backend, resolve_choice, run_backend
from .hgru_op import _check_inputs, _grads_out
from .ops import fresh


def _for_backward(backend):
    # the reference loop has no backward formulas: the torch backend's stand in (as in 1-D)
    return get_backend("torch") if backend.name == "reference" else backend


def _width(proj: Tensor, theta_f: Optional[Tensor], theta_r: Optional[Tensor]) -> int:
    per_token = 3 if (theta_f is not None or theta_r is not None) else 2
    return proj.shape[-1] - proj.shape[-1] // per_token


@torch.library.custom_op("hgrn::hgru2d", mutates_args=())
def hgru2d_op(proj: Tensor, lower_bound: Optional[Tensor], theta_f: Optional[Tensor],
              theta_r: Optional[Tensor], grid_width: int, direction: str, backend: str
              ) -> Tensor:
    h = run_backend(backend, proj.device, lambda impl: impl.hgru2d_forward(
        proj, lower_bound, theta_f, theta_r, grid_width, direction))
    if h is None:  # (as out_like(h, <a (B, N, W) tensor like proj>), without allocating one)
        return proj.new_zeros(proj.shape[0], proj.shape[1], _width(proj, theta_f, theta_r))
    return fresh(h, proj.dtype)


@hgru2d_op.register_fake
def _(proj, lower_bound, theta_f, theta_r, grid_width, direction, backend):
    return proj.new_empty(proj.shape[0], proj.shape[1], _width(proj, theta_f, theta_r))


@torch.library.custom_op("hgrn::hgru2d_backward", mutates_args=())
def hgru2d_backward_op(dh: Tensor, proj: Tensor, lower_bound: Optional[Tensor],
                       theta_f: Optional[Tensor], theta_r: Optional[Tensor], grid_width: int,
                       direction: str, backend: str) -> List[Tensor]:
    grads = run_backend(backend, proj.device, lambda impl: _for_backward(impl).hgru2d_backward(
        dh, proj, lower_bound, theta_f, theta_r, grid_width, direction))
    return _grads_out(grads, proj, (lower_bound, theta_f, theta_r))


def _fake_grads(proj, lower_bound, theta_f, theta_r) -> List[Tensor]:
    """Gradients in the inputs' dtypes; an absent input gets an empty placeholder."""
    none = proj.new_empty(0)
    return [torch.empty(proj.shape, dtype=proj.dtype, device=proj.device)] + [
        torch.empty_like(t) if t is not None else none for t in (lower_bound, theta_f, theta_r)]


@hgru2d_backward_op.register_fake
def _(dh, proj, lower_bound, theta_f, theta_r, grid_width, direction, backend):
    return _fake_grads(proj, lower_bound, theta_f, theta_r)


def _setup(ctx, inputs, output):
    proj, lower_bound, theta_f, theta_r, ctx.grid_width, ctx.direction, backend = inputs
    ctx.backend = op_backend(backend, proj.device)  # backward runs what forward resolved
    ctx.save_for_backward(proj, lower_bound, theta_f, theta_r)


def _backward(ctx, dh):
    proj, lower_bound, theta_f, theta_r = ctx.saved_tensors
    grads = hgru2d_backward_op(dh, proj, lower_bound, theta_f, theta_r, ctx.grid_width,
                               ctx.direction, ctx.backend)
    present = (proj, lower_bound, theta_f, theta_r)
    return (*[g if t is not None else None for g, t in zip(grads, present)], None, None, None)


hgru2d_op.register_autograd(_backward, setup_context=_setup)


# ------------------------------------------------------------------------------ public API
def check_grid(n_tokens: int, grid_width: int) -> int:
    """Clear errors for a grid that does not tile the tokens; returns the grid's height."""
    # an int, or a symbolic one under torch.export / torch.compile with dynamic sizes
    if not isinstance(grid_width, (int, torch.SymInt)) or isinstance(grid_width, bool) \
            or grid_width < 1:
        raise ValueError(f"grid_width must be a positive int, got {grid_width!r}")
    if n_tokens % grid_width:
        raise ValueError(f"the tokens do not form a grid of width {grid_width}: N = {n_tokens} "
                         f"is not a multiple of it")
    return n_tokens // grid_width


def hgru2d(proj: Tensor, lower_bound: Optional[Tensor] = None,
           theta_forward: Optional[Tensor] = None, theta_reverse: Optional[Tensor] = None, *,
           grid_width: int, direction: str = "both", backend: Optional[str] = "auto") -> Tensor:
    """The 2-D HGRU core (one ``hgrn::hgru2d`` op): the 1-D core's scans along the rows and
    the columns of a patch grid, summed.

    ``proj``: (B, H * grid_width, W + d), the grid's tokens row-major, as in ``hgru``
    (W = 2d with phases, d without); ``direction``: 'both' (forward and reverse along each
    axis: four scans) or 'forward' (one per axis). Returns ``h`` (B, N, W) in ``proj``'s dtype.
    """
    if direction == "reverse":
        raise ValueError("direction must be 'both' or 'forward' for the 2-D HGRU, got 'reverse'")
    _check_inputs(proj, lower_bound, theta_forward, theta_reverse, direction)
    check_grid(proj.shape[1], grid_width)
    impl, automatic = resolve_choice(backend, proj.device)
    tf = theta_forward
    tr = theta_reverse if direction == "both" else None
    if impl.autograd_loop:  # the reference loop, differentiated by autograd (no op)
        return impl.hgru2d_forward(proj, lower_bound, tf, tr, grid_width, direction).to(proj.dtype)
    name = "auto" if automatic else impl.name
    return hgru2d_op(proj, lower_bound, tf, tr, grid_width, direction, name)
