"""The public scan API: validated entry points over the ``hgrn::*`` ops.

All tensors are batch first: sequences ``(B, N, D)``, states ``(B, D)``, phases ``(D,)``.
Inputs may be non-contiguous. bf16/fp16 inputs are accumulated in fp32 and returned in
the input dtype. Every tensor input that requires grad gets its gradient.

    complex_scan        h_t = lam_t e^{i theta} h_{t-1} + (u_t + i v_t)    (the causal scan;
                        reverse=True runs from the end: h_{t+1} in place of h_{t-1})
    bidirectional_scan  forward scan with theta_forward + reverse scan with theta_reverse,
                        over the same (u, v, lam), states summed (both include token t)
    real_scan           h_t = lam_t h_{t-1} + x_t                           (theta = 0)
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from .backends import resolve_backend
from .checks import check_float, describe, values_checked
from .ops import bidirectional_scan_op, complex_scan_op, real_scan_op

State = Tuple[Tensor, Tensor]


# ------------------------------------------------------------------------------ validation
def _like(outputs, like: Tensor):
    """A differentiable backend's outputs (computed in fp64) in the inputs' dtype."""
    return tuple(o.to(like.dtype) for o in outputs)


def _check_sequences(**named: Tensor) -> Tensor:
    """Same-shape (B, N, D) sequences on one device with one dtype; returns the first."""
    first_name, first = next(iter(named.items()))
    for name, t in named.items():
        check_float(name, t)
        if t.dim() != 3:
            raise ValueError(f"{name} must be a 3-D tensor (B, N, D), batch first; got "
                             f"{t.dim()}-D with shape {tuple(t.shape)}")
        if t.shape != first.shape:
            raise ValueError(f"{name} must have the shape of {first_name} "
                             f"{tuple(first.shape)}, got {tuple(t.shape)}")
        if t.device != first.device:
            raise ValueError(f"{name} is on {t.device} but {first_name} is on {first.device}")
        if t.dtype != first.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but {first_name} has {first.dtype}")
    if first.shape[1] == 0:
        raise ValueError(f"{first_name} has an empty sequence (N = 0): {describe(first)}")
    return first


def _check_vector(name: str, t: Tensor, like: Tensor, shape: tuple, what: str) -> None:
    check_float(name, t)
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {shape} ({what}), got {tuple(t.shape)}")
    if t.device != like.device:
        raise ValueError(f"{name} is on {t.device} but the sequences are on {like.device}")


def _check_lam(lam: Tensor) -> None:
    if values_checked(lam) and lam.numel():
        lo, hi = torch.aminmax(lam.detach())
        if not (lo >= 0 and hi <= 1):  # also catches NaN
            raise ValueError(f"lam must lie in [0, 1] (a decay); got values in "
                             f"[{lo.item():.4g}, {hi.item():.4g}]")


def _check_state(name: str, state, like: Tensor, complex_: bool) -> Tuple:
    if state is None:
        return (None, None) if complex_ else (None,)
    parts = tuple(state) if complex_ and isinstance(state, (tuple, list)) else (state,)
    if complex_ and len(parts) != 2:
        raise ValueError(f"{name} must be a pair (real, imag) of (B, D) tensors")
    shape = (like.shape[0], like.shape[2])
    for i, part in enumerate(parts):
        _check_vector(f"{name}[{i}]" if complex_ else name, part, like, shape, "batch, width")
    return parts


# ------------------------------------------------------------------------------ entry points
def complex_scan(u: Tensor, v: Tensor, lam: Tensor, theta: Tensor, *, reverse: bool = False,
                 initial_state: Optional[State] = None, return_final_state: bool = False,
                 backend: Optional[str] = "auto"
                 ) -> Union[Tuple[Tensor, Tensor], Tuple[Tensor, Tensor, State]]:
    """The complex scan in one direction (the causal scan when ``reverse=False``).

    Returns ``(hr, hi)``, or ``(hr, hi, (hNr, hNi))`` with ``return_final_state=True``,
    where the final state is the state after the last step taken (t = N forward, t = 1
    reverse), ready to be the ``initial_state`` of the next segment.
    """
    first = _check_sequences(u=u, v=v, lam=lam)
    _check_vector("theta", theta, first, (first.shape[2],), "one phase per channel")
    h0r, h0i = _check_state("initial_state", initial_state, first, True)
    _check_lam(lam)
    impl = resolve_backend(backend, first.device)
    if impl.autograd_loop:  # the reference loop, differentiated by autograd (no op)
        hr, hi, hNr, hNi = _like(impl.complex_forward(u, v, lam, theta, h0r, h0i, reverse), u)
    else:
        hr, hi, hNr, hNi = complex_scan_op(u, v, lam, theta, h0r, h0i, reverse, impl.name)
    return (hr, hi, (hNr, hNi)) if return_final_state else (hr, hi)


def bidirectional_scan(u: Tensor, v: Tensor, lam: Tensor, theta_forward: Tensor,
                       theta_reverse: Tensor, *, backend: Optional[str] = "auto"
                       ) -> Tuple[Tensor, Tensor]:
    """Forward and reverse scans over the same inputs, each with its own phase, summed:
    the HGRN vision mixer's recurrence. Returns ``(hr, hi)``."""
    first = _check_sequences(u=u, v=v, lam=lam)
    D = first.shape[2]
    _check_vector("theta_forward", theta_forward, first, (D,), "one phase per channel")
    _check_vector("theta_reverse", theta_reverse, first, (D,), "one phase per channel")
    _check_lam(lam)
    impl = resolve_backend(backend, first.device)
    if impl.autograd_loop:
        return _like(impl.bidirectional_forward(u, v, lam, theta_forward, theta_reverse), u)
    return bidirectional_scan_op(u, v, lam, theta_forward, theta_reverse, impl.name)


def real_scan(x: Tensor, lam: Tensor, *, reverse: bool = False,
              initial_state: Optional[Tensor] = None, return_final_state: bool = False,
              backend: Optional[str] = "auto") -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """The real-valued scan ``h_t = lam_t h_{t-1} + x_t`` (theta = 0, no imaginary part).
    Returns ``h``, or ``(h, hN)`` with ``return_final_state=True``."""
    first = _check_sequences(x=x, lam=lam)
    (h0,) = _check_state("initial_state", initial_state, first, False)
    _check_lam(lam)
    impl = resolve_backend(backend, first.device)
    if impl.autograd_loop:
        h, hN = _like(impl.real_forward(x, lam, h0, reverse), x)
    else:
        h, hN = real_scan_op(x, lam, h0, reverse, impl.name)
    return (h, hN) if return_final_state else h
