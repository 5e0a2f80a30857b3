"""Token mixers: HGRU (bidirectional, causal, real-valued) and softmax attention."""
from .attention import AttentionMixer
from .base import TokenMixer, create_mixer, get_mixer_class, list_mixers, register_mixer
from .hgru import HGRU, phase_init

__all__ = ["TokenMixer", "create_mixer", "get_mixer_class", "list_mixers", "register_mixer", "HGRU",
           "AttentionMixer", "phase_init"]
