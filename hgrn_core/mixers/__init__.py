"""Token mixers: HGRU (bidirectional, causal, real-valued) and softmax attention; a diagnostic
HGRU without its recurrence (``hgru_no_recurrence``, benchmarks only)."""
from .attention import AttentionMixer
from .base import TokenMixer, create_mixer, get_mixer_class, list_mixers, register_mixer
from .hgru import HGRU, phase_init
from .hgru_no_recurrence import HGRUWithoutRecurrence

__all__ = ["TokenMixer", "create_mixer", "get_mixer_class", "list_mixers", "register_mixer", "HGRU",
           "AttentionMixer", "HGRUWithoutRecurrence", "phase_init"]
