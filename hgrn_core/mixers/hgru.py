"""HGRU: the hierarchically gated recurrent token mixer (docs/spec.md §1).

    c_t   = SiLU(x_t W_c + b_c)              complex input (d real, d imaginary channels)
    lam_t = gamma + (1 - gamma) sigmoid(x_t W_mu + b_mu)
    h_t   = lam_t e^{i theta} h_{t-1} + (1 - lam_t) c_t
    y_t   = (LayerNorm([Re h_t, Im h_t]) * SiLU(x_t W_g + b_g)) W_o + b_o

One ``in_proj`` holds the input maps, rows ordered [Re c | Im c | mu | gate] (the authors'
interleaved (real, imag) layout of ``W_c`` is converted when their weights are loaded,
``hgrn_vision``); it runs as two GEMMs over slices of its weight, the core [c | mu] and the
gate, so that backward needs no split/cat of a (B, N, 5d) gradient. The rest is two ops:
``hgrn::hgru`` (gates and scans, from the core projection to the state ``h``, in the
activation dtype) and ``hgrn::norm_gate`` (LayerNorm(h) * SiLU(gate)); then ``out_proj``.

Bidirectional (the vision mixer): a forward and a reverse scan with their own phases,
summed. Causal: the forward scan alone, with a recurrent ``step``. ``complex_valued=False``
gives the real-valued HGRU (theta = 0, width d).

TorchScript: ``forward`` compiles. Under ``torch.jit.script`` it calls the two ops directly
(``torch.ops.hgrn.hgru`` / ``torch.ops.hgrn.norm_gate``, which resolve the backend name,
``"auto"`` included, from the tensors' device at run time), after ``check_tokens``; the
eager path goes through the Python entry points (``hgrn_core.hgru`` / ``norm_gate``), which
validate every input. The recurrent helpers (``forward_with_state``, ``step``) stay Python.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..gates import hgru_gates
from ..hgru_op import hgru
from ..norm_gate_op import norm_gate
from .base import TokenMixer, check_tokens, register_mixer

State = Union[Tensor, Tuple[Tensor, Tensor]]


def phase_init(dim: int) -> Tensor:
    """theta_j = 10000^(-2j/d), j = 0..d-1 (docs/spec.md §1.5)."""
    return 10000.0 ** (-2.0 * torch.arange(dim, dtype=torch.float32) / dim)


class SplitLinear(nn.Linear):
    """One Linear whose output rows are computed as two GEMMs over slices of its weight:
    ``forward`` returns ``(x W[:n]^T + b[:n], x W[n:]^T + b[n:])``. Its state dict is a plain
    Linear's; its backward sums two input gradients of width ``in_features`` instead of
    concatenating two output gradients into one (B, N, out_features) tensor."""

    def __init__(self, in_features: int, out_features: int, split: int):
        super().__init__(in_features, out_features)
        self.split = split

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        n, w, b = self.split, self.weight, self.bias
        return F.linear(x, w[:n], b[:n]), F.linear(x, w[n:], b[n:])


class NormGate(nn.LayerNorm):
    """``LayerNorm(h) * SiLU(gate)`` as one op (``hgrn::norm_gate``); a LayerNorm's parameters."""

    def forward(self, h: Tensor, gate: Tensor, backend: Optional[str] = "auto") -> Tensor:
        if torch.jit.is_scripting():  # the op itself; it resolves "auto"
            name = backend if backend is not None else "auto"
            return torch.ops.hgrn.norm_gate(h, gate, self.weight, self.bias, self.eps, name)[0]
        return norm_gate(h, gate, self.weight, self.bias, self.eps, backend=backend)


@register_mixer("hgru")
class HGRU(TokenMixer):
    uses_lower_bound = True

    def __init__(self, dim: int, *, causal: bool = False, complex_valued: bool = True,
                 backend: str = "auto", norm_eps: float = 1e-5):
        super().__init__()
        self.dim, self.causal, self.complex_valued, self.backend = dim, causal, complex_valued, backend
        self.state_width = 2 * dim if complex_valued else dim  # the state as real numbers
        self.direction = "forward" if causal else "both"
        # rows [Re c | Im c | mu | gate]: the core projection [c | mu] and the gate
        self.in_proj = SplitLinear(dim, 2 * self.state_width + dim, self.state_width + dim)
        self.norm = NormGate(self.state_width, eps=norm_eps)
        self.out_proj = nn.Linear(self.state_width, dim)
        # phases: None where absent (real-valued HGRU; reverse of a causal one)
        self.theta_forward = nn.Parameter(phase_init(dim)) if complex_valued else None
        self.theta_reverse = (nn.Parameter(phase_init(dim))
                              if complex_valued and not causal else None)

    @classmethod
    def options_from_model(cls, mixer_backend: str = "auto", **_) -> Dict[str, object]:
        return dict(backend=mixer_backend)

    def extra_repr(self) -> str:
        kind = "causal" if self.causal else "bidirectional"
        return (f"dim={self.dim}, {kind}, {'complex' if self.complex_valued else 'real'}, "
                f"backend={self.backend!r}")

    # ------------------------------------------------------------------------------ pieces
    def _output(self, h: Tensor, gate: Tensor) -> Tensor:
        return self.out_proj(self.norm(h, gate, backend=self.backend))

    def _split_state(self, state: Tensor) -> State:
        return tuple(state.chunk(2, -1)) if self.complex_valued else state

    # ----------------------------------------------------------------------------- forward
    def forward(self, x: Tensor, lower_bound: Optional[Tensor] = None, grid_width: int = 0
                ) -> Tensor:
        check_tokens(x, self.dim, "HGRU")  # a 1-D mixer: the grid does not matter
        core, gate = self.in_proj(x)
        if torch.jit.is_scripting():  # the op itself; it resolves "auto" at run time
            h = torch.ops.hgrn.hgru(core, lower_bound, self.theta_forward, self.theta_reverse,
                                    None, self.direction, self.backend)[0]
        else:
            h = hgru(core, lower_bound, self.theta_forward, self.theta_reverse,
                     direction=self.direction, backend=self.backend)
        return self._output(h, gate)

    # ------------------------------------------------------------------ causal, with state
    def _require_causal(self, what: str) -> None:
        if not self.causal:
            raise RuntimeError(f"HGRU.{what} needs a causal mixer (HGRU(dim, causal=True)); "
                               f"a bidirectional mixer has no running state")

    def forward_with_state(self, x: Tensor, lower_bound: Optional[Tensor] = None,
                           state: Optional[State] = None) -> Tuple[Tensor, State]:
        """Causal forward over a segment, continuing from ``state``; returns the outputs
        and the state after the segment (to continue with ``step`` or another segment).
        The state is fp32 (fp64 in an fp64 model): (real, imag) of (B, d), or (B, d) real."""
        self._require_causal("forward_with_state")
        check_tokens(x, self.dim, "HGRU")
        core, gate = self.in_proj(x)
        h, final = hgru(core, lower_bound, self.theta_forward, None, direction="forward",
                        initial_state=state, return_final_state=True, backend=self.backend)
        return self._output(h, gate), self._split_state(final)

    def step(self, x: Tensor, state: Optional[State] = None,
             lower_bound: Optional[Tensor] = None) -> Tuple[Tensor, State]:
        """One recurrent step: ``x`` (B, C) and the previous state -> output (B, C) and the
        new state. Written as the plain recurrence, independently of the scan backends."""
        self._require_causal("step")
        if x.dim() != 2:
            raise ValueError(f"HGRU.step expects one token per sequence, shape (B, {self.dim}); "
                             f"got shape {tuple(x.shape)}")
        core, gate = self.in_proj(x.unsqueeze(1))
        g = hgru_gates(core, lower_bound, self.complex_valued)
        inputs, lam = g.x[:, 0], g.lam[:, 0]
        if self.complex_valued:
            u, v = inputs.chunk(2, -1)
            hr, hi = state if state is not None else (torch.zeros_like(u), torch.zeros_like(v))
            a = lam * torch.cos(self.theta_forward)
            b = lam * torch.sin(self.theta_forward)
            hr, hi = a * hr - b * hi + u, a * hi + b * hr + v
            new_state, h = (hr, hi), torch.cat([hr, hi], -1)
        else:
            prev = state if state is not None else torch.zeros_like(inputs)
            h = new_state = lam * prev + inputs
        return self._output(h.unsqueeze(1).to(core.dtype), gate)[:, 0], new_state
