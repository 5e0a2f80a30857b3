"""The scans as ``torch.library`` custom ops: ``hgrn::complex_scan``,
``hgrn::bidirectional_scan``, ``hgrn::real_scan`` (and their ``*_backward`` ops).

One op per scan, whatever the backend (its name is a string argument), so that
autograd, ``torch.compile`` (fake implementations: no graph break inside a mixer) and
tracing tools such as fvcore or ``torch.jit.trace`` see a single named op. The ops save
only their inputs; backends recompute states in backward.

These ops do not validate their inputs: call them through ``hgrn_core.scan``.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor

from .backends import get_backend


def fresh(t: Tensor, dtype: torch.dtype) -> Tensor:
    """A contiguous tensor of its own in ``dtype`` (custom ops must not return views)."""
    t = t.to(dtype)
    if t._base is not None or not t.is_contiguous():
        t = t.clone(memory_format=torch.contiguous_format)
    return t


def out_like(t: Optional[Tensor], like: Tensor) -> Tensor:
    """An op output in ``like``'s dtype: ``t`` made fresh, or zeros where a backend gave None."""
    return torch.zeros_like(like) if t is None else fresh(t, like.dtype)


def _state_like(u: Tensor) -> Tensor:
    return u.new_empty(u.shape[0], u.shape[2])


def _zeros_if_none(g: Optional[Tensor], like: Tensor) -> Tensor:
    return torch.zeros_like(like) if g is None else g


# ---------------------------------------------------------------------------- complex scan
@torch.library.custom_op("hgrn::complex_scan", mutates_args=())
def complex_scan_op(u: Tensor, v: Tensor, lam: Tensor, theta: Tensor,
                    h0r: Optional[Tensor], h0i: Optional[Tensor],
                    reverse: bool, backend: str) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    hr, hi, hNr, hNi = get_backend(backend).complex_forward(u, v, lam, theta, h0r, h0i, reverse)
    s = _state_like(u)
    return out_like(hr, u), out_like(hi, u), out_like(hNr, s), out_like(hNi, s)


@complex_scan_op.register_fake
def _(u, v, lam, theta, h0r, h0i, reverse, backend):
    return torch.empty_like(u), torch.empty_like(u), _state_like(u), _state_like(u)


@torch.library.custom_op("hgrn::complex_scan_backward", mutates_args=())
def complex_scan_backward_op(ghr: Tensor, ghi: Tensor, ghNr: Optional[Tensor],
                             ghNi: Optional[Tensor], u: Tensor, v: Tensor, lam: Tensor,
                             theta: Tensor, h0r: Optional[Tensor], h0i: Optional[Tensor],
                             reverse: bool, backend: str) -> List[Tensor]:
    du, dv, dlam, dtheta, dh0r, dh0i = get_backend(backend).complex_backward(
        ghr, ghi, ghNr, ghNi, u, v, lam, theta, h0r, h0i, reverse)
    s = _state_like(u)
    return [out_like(du, u), out_like(dv, v), out_like(dlam, lam), out_like(dtheta, theta),
            out_like(dh0r, h0r if h0r is not None else s), out_like(dh0i, h0i if h0i is not None else s)]


@complex_scan_backward_op.register_fake
def _(ghr, ghi, ghNr, ghNi, u, v, lam, theta, h0r, h0i, reverse, backend):
    s = _state_like(u)
    return [torch.empty_like(u), torch.empty_like(v), torch.empty_like(lam),
            torch.empty_like(theta), torch.empty_like(h0r if h0r is not None else s),
            torch.empty_like(h0i if h0i is not None else s)]


def _complex_setup(ctx, inputs, output):
    u, v, lam, theta, h0r, h0i, reverse, backend = inputs
    ctx.save_for_backward(u, v, lam, theta, h0r, h0i)
    ctx.reverse, ctx.backend = reverse, backend


def _complex_backward(ctx, ghr, ghi, ghNr, ghNi):
    u, v, lam, theta, h0r, h0i = ctx.saved_tensors
    du, dv, dlam, dtheta, dh0r, dh0i = complex_scan_backward_op(
        _zeros_if_none(ghr, u), _zeros_if_none(ghi, u), ghNr, ghNi,
        u, v, lam, theta, h0r, h0i, ctx.reverse, ctx.backend)
    return (du, dv, dlam, dtheta, dh0r if h0r is not None else None,
            dh0i if h0i is not None else None, None, None)


complex_scan_op.register_autograd(_complex_backward, setup_context=_complex_setup)


# ---------------------------------------------------------------------- bidirectional scan
@torch.library.custom_op("hgrn::bidirectional_scan", mutates_args=())
def bidirectional_scan_op(u: Tensor, v: Tensor, lam: Tensor, theta_f: Tensor, theta_r: Tensor,
                          backend: str) -> Tuple[Tensor, Tensor]:
    hr, hi = get_backend(backend).bidirectional_forward(u, v, lam, theta_f, theta_r)
    return out_like(hr, u), out_like(hi, u)


@bidirectional_scan_op.register_fake
def _(u, v, lam, theta_f, theta_r, backend):
    return torch.empty_like(u), torch.empty_like(u)


@torch.library.custom_op("hgrn::bidirectional_scan_backward", mutates_args=())
def bidirectional_scan_backward_op(ghr: Tensor, ghi: Tensor, u: Tensor, v: Tensor, lam: Tensor,
                                   theta_f: Tensor, theta_r: Tensor, backend: str
                                   ) -> List[Tensor]:
    du, dv, dlam, dtf, dtr = get_backend(backend).bidirectional_backward(
        ghr, ghi, u, v, lam, theta_f, theta_r)
    return [out_like(du, u), out_like(dv, v), out_like(dlam, lam), out_like(dtf, theta_f), out_like(dtr, theta_r)]


@bidirectional_scan_backward_op.register_fake
def _(ghr, ghi, u, v, lam, theta_f, theta_r, backend):
    return [torch.empty_like(t) for t in (u, v, lam, theta_f, theta_r)]


def _bidir_setup(ctx, inputs, output):
    *tensors, ctx.backend = inputs
    ctx.save_for_backward(*tensors)


def _bidir_backward(ctx, ghr, ghi):
    u, v, lam, theta_f, theta_r = ctx.saved_tensors
    grads = bidirectional_scan_backward_op(_zeros_if_none(ghr, u), _zeros_if_none(ghi, u),
                                           u, v, lam, theta_f, theta_r, ctx.backend)
    return (*grads, None)


bidirectional_scan_op.register_autograd(_bidir_backward, setup_context=_bidir_setup)


# ------------------------------------------------------------------------------ real scan
@torch.library.custom_op("hgrn::real_scan", mutates_args=())
def real_scan_op(x: Tensor, lam: Tensor, h0: Optional[Tensor], reverse: bool, backend: str
                 ) -> Tuple[Tensor, Tensor]:
    h, hN = get_backend(backend).real_forward(x, lam, h0, reverse)
    return out_like(h, x), out_like(hN, _state_like(x))


@real_scan_op.register_fake
def _(x, lam, h0, reverse, backend):
    return torch.empty_like(x), _state_like(x)


@torch.library.custom_op("hgrn::real_scan_backward", mutates_args=())
def real_scan_backward_op(gh: Tensor, ghN: Optional[Tensor], x: Tensor, lam: Tensor,
                          h0: Optional[Tensor], reverse: bool, backend: str) -> List[Tensor]:
    dx, dlam, dh0 = get_backend(backend).real_backward(gh, ghN, x, lam, h0, reverse)
    return [out_like(dx, x), out_like(dlam, lam), out_like(dh0, h0 if h0 is not None else _state_like(x))]


@real_scan_backward_op.register_fake
def _(gh, ghN, x, lam, h0, reverse, backend):
    return [torch.empty_like(x), torch.empty_like(lam),
            torch.empty_like(h0) if h0 is not None else _state_like(x)]


def _real_setup(ctx, inputs, output):
    x, lam, h0, reverse, backend = inputs
    ctx.save_for_backward(x, lam, h0)
    ctx.reverse, ctx.backend = reverse, backend


def _real_backward(ctx, gh, ghN):
    x, lam, h0 = ctx.saved_tensors
    dx, dlam, dh0 = real_scan_backward_op(_zeros_if_none(gh, x), ghN, x, lam, h0,
                                          ctx.reverse, ctx.backend)
    return dx, dlam, dh0 if h0 is not None else None, None, None


real_scan_op.register_autograd(_real_backward, setup_context=_real_setup)
