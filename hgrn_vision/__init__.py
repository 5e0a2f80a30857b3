"""hgrn_vision: HGRN-DeiT image models registered in timm.

    import hgrn_vision, timm
    model = timm.create_model('hgrn_deit_tiny', num_classes=100)

Importing this package registers ``hgrn_deit_tiny``, ``hgrn_deit_small`` and
``hgrn_deit_base`` in timm's model registry.
"""
from .hgrn_deit import Block, HgrnDeiT, WeightlessRMSNorm, checkpoint_filter_fn

__all__ = ['HgrnDeiT', 'Block', 'WeightlessRMSNorm', 'checkpoint_filter_fn']
