"""HGRU: the hierarchically gated recurrent token mixer (spec §1).

    c_t   = SiLU(x_t W_c + b_c)              complex input (d real, d imaginary channels)
    lam_t = gamma + (1 - gamma) sigmoid(x_t W_mu + b_mu)
    h_t   = lam_t e^{i theta} h_{t-1} + (1 - lam_t) c_t
    y_t   = (LayerNorm([Re h_t, Im h_t]) * SiLU(x_t W_g + b_g)) W_o + b_o

The three input maps run as one GEMM (``in_proj``, rows ordered [Re c | Im c | mu | gate]);
the authors' interleaved (real, imag) layout of ``W_c`` is converted when their weights
are loaded (``hgrn_vision``). Bidirectional (the vision mixer): a forward and a reverse
scan with their own phases, summed. Causal: the forward scan alone, with a recurrent
``step``. ``complex_valued=False`` gives the real-valued HGRU (theta = 0, width d).
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..scan import bidirectional_scan, complex_scan, real_scan
from .base import TokenMixer, check_tokens, register_mixer

State = Union[Tensor, Tuple[Tensor, Tensor]]


def _at_least_fp32(t: Tensor) -> Tensor:
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def phase_init(dim: int) -> Tensor:
    """theta_j = 10000^(-2j/d), j = 0..d-1 (spec §1)."""
    return 10000.0 ** (-2.0 * torch.arange(dim, dtype=torch.float32) / dim)


@register_mixer("hgru")
class HGRU(TokenMixer):
    def __init__(self, dim: int, *, causal: bool = False, complex_valued: bool = True,
                 backend: str = "auto", norm_eps: float = 1e-5):
        super().__init__()
        self.dim, self.causal, self.complex_valued, self.backend = dim, causal, complex_valued, backend
        self.state_width = 2 * dim if complex_valued else dim  # the state as real numbers
        self.in_proj = nn.Linear(dim, 2 * self.state_width + dim)
        self.norm = nn.LayerNorm(self.state_width, eps=norm_eps)
        self.out_proj = nn.Linear(self.state_width, dim)
        if complex_valued:
            self.theta_forward = nn.Parameter(phase_init(dim))
            self.theta_reverse = None if causal else nn.Parameter(phase_init(dim))

    def extra_repr(self) -> str:
        kind = "causal" if self.causal else "bidirectional"
        return (f"dim={self.dim}, {kind}, {'complex' if self.complex_valued else 'real'}, "
                f"backend={self.backend!r}")

    # ------------------------------------------------------------------------------ pieces
    def _gates(self, x: Tensor, lower_bound: Optional[Tensor]):
        """Scan inputs ((1 - lam) c, as (B, N, 2, d) for complex), lam and the output gate.
        The recurrence inputs are computed in fp32 even under autocast: in bf16 a decay of
        0.997 already rounds to 1, which would switch forgetting off in the upper layers."""
        c, mu, gate = self.in_proj(x).split([self.state_width, self.dim, self.state_width], -1)
        lam = torch.sigmoid(_at_least_fp32(mu))
        if lower_bound is not None:
            lam = lower_bound + (1 - lower_bound) * lam
        c = F.silu(_at_least_fp32(c))
        if self.complex_valued:
            inputs = c.unflatten(-1, (2, self.dim)) * (1 - lam).unsqueeze(-2)
        else:
            inputs = c * (1 - lam)
        return inputs, lam, F.silu(gate)

    def _output(self, h: Tensor, gate: Tensor) -> Tensor:
        # the state is fp32 (see _gates); a model cast to bf16/fp16 wants its own dtype here
        return self.out_proj(self.norm(h.to(self.norm.weight.dtype)) * gate)

    # ----------------------------------------------------------------------------- forward
    def forward(self, x: Tensor, lower_bound: Optional[Tensor] = None) -> Tensor:
        check_tokens(x, self.dim, "HGRU")
        inputs, lam, gate = self._gates(x, lower_bound)
        if self.causal:
            h, _ = self._causal_scan(inputs, lam, None)
        elif self.complex_valued:
            u, v = inputs.unbind(-2)
            hr, hi = bidirectional_scan(u, v, lam, self.theta_forward, self.theta_reverse,
                                        backend=self.backend)
            h = torch.cat([hr, hi], -1)
        else:
            h = (real_scan(inputs, lam, backend=self.backend)
                 + real_scan(inputs, lam, reverse=True, backend=self.backend))
        return self._output(h, gate)

    def _causal_scan(self, inputs: Tensor, lam: Tensor, state: Optional[State]):
        if self.complex_valued:
            u, v = inputs.unbind(-2)
            hr, hi, final = complex_scan(u, v, lam, self.theta_forward, initial_state=state,
                                         return_final_state=True, backend=self.backend)
            return torch.cat([hr, hi], -1), final
        return real_scan(inputs, lam, initial_state=state, return_final_state=True,
                         backend=self.backend)

    # ------------------------------------------------------------------ causal, with state
    def _require_causal(self, what: str) -> None:
        if not self.causal:
            raise RuntimeError(f"HGRU.{what} needs a causal mixer (HGRU(dim, causal=True)); "
                               f"a bidirectional mixer has no running state")

    def forward_with_state(self, x: Tensor, lower_bound: Optional[Tensor] = None,
                           state: Optional[State] = None) -> Tuple[Tensor, State]:
        """Causal forward over a segment, continuing from ``state``; returns the outputs
        and the state after the segment (to continue with ``step`` or another segment)."""
        self._require_causal("forward_with_state")
        check_tokens(x, self.dim, "HGRU")
        inputs, lam, gate = self._gates(x, lower_bound)
        h, final = self._causal_scan(inputs, lam, state)
        return self._output(h, gate), final

    def step(self, x: Tensor, state: Optional[State] = None,
             lower_bound: Optional[Tensor] = None) -> Tuple[Tensor, State]:
        """One recurrent step: ``x`` (B, C) and the previous state -> output (B, C) and the
        new state. Written as the plain recurrence, independently of the scan backends."""
        self._require_causal("step")
        if x.dim() != 2:
            raise ValueError(f"HGRU.step expects one token per sequence, shape (B, {self.dim}); "
                             f"got shape {tuple(x.shape)}")
        inputs, lam, gate = self._gates(x.unsqueeze(1), lower_bound)
        inputs, lam, gate = inputs[:, 0], lam[:, 0], gate[:, 0]
        if self.complex_valued:
            u, v = inputs.unbind(-2)
            hr, hi = state if state is not None else (torch.zeros_like(u), torch.zeros_like(v))
            a = lam * torch.cos(self.theta_forward)
            b = lam * torch.sin(self.theta_forward)
            hr, hi = a * hr - b * hi + u, a * hi + b * hr + v
            new_state, h = (hr, hi), torch.cat([hr, hi], -1)
        else:
            prev = state if state is not None else torch.zeros_like(inputs)
            h = new_state = lam * prev + inputs
        return self._output(h, gate), new_state
