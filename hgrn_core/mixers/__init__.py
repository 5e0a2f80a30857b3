"""Token mixers: HGRU (bidirectional, causal, real-valued), its 2-D form over the patch grid
(HGRU2d) and softmax attention; a diagnostic
HGRU without its recurrence (``hgru_no_recurrence``, benchmarks only)."""
from .attention import AttentionMixer
from .base import TokenMixer, create_mixer, get_mixer_class, list_mixers, register_mixer
from .hgru import HGRU, phase_init
from .hgru2d import HGRU2d
from .hgru_no_recurrence import HGRUWithoutRecurrence

__all__ = ["TokenMixer", "create_mixer", "get_mixer_class", "list_mixers", "register_mixer", "HGRU", "HGRU2d",
           "AttentionMixer", "HGRUWithoutRecurrence", "phase_init"]
