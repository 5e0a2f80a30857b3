"""Shared test set-up.

Without a GPU, Triton kernels run in Triton's interpreter, which must be switched on
before any kernel is defined: set it here, before test modules import hgrn_core.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

torch.set_num_threads(min(2, torch.get_num_threads()))
