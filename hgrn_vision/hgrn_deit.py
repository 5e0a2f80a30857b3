""" HGRN-DeiT: Hierarchically Gated Recurrent Neural Network vision backbones for timm

Paper: `Hierarchically Gated Recurrent Neural Network for Sequence Modeling`
    - https://arxiv.org/abs/2311.04823 (Qin, Yang, Zhong, NeurIPS 2023)

A DeiT-shaped network whose token mixer is the bidirectional HGRU of ``hgrn_core``:
non-overlapping patches -> linear patch embedding -> L pre-norm blocks
``x + DropPath(HGRU(LN(x), gamma_k))``, ``x + DropPath(GLU(LN(x)))`` -> mean over tokens ->
``Linear(RMSNorm(x))`` with a weightless RMSNorm. The forget-gate lower bounds ``gamma_k``
come from one model-level parameter (``lower_bound.logits``, Gamma of the paper).

No positional embedding and no class token: the recurrence orders the tokens (row-major
patch order), so any image whose sides are multiples of the patch size runs on the same
weights without resampling anything.

Layout follows ``timm/models/vision_transformer.py``: ``Block``, the model class,
``checkpoint_filter_fn`` (also converts the authors' released image-classification
checkpoints), ``_create_hgrn_deit`` through ``build_model_with_cfg``, ``_cfg`` /
``default_cfgs`` and the ``@register_model`` entry points.

Feature layout: like timm's MambaOut, ``forward_features`` returns the token grid as
NHWC ``(B, H, W, C)`` (``output_fmt = 'NHWC'``); ``x.flatten(1, 2)`` gives the (B, N, C)
token sequence in scan order. ``global_pool=''`` keeps that grid.
"""
from contextlib import nullcontext
from functools import partial
from typing import Any, Callable, Dict, List, Optional, Set, Tuple, Union

import torch
import torch.nn as nn

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import (
    DropPath, GluMlp, LayerNorm, PatchEmbed, calculate_drop_path_rates, get_device_dtype,
    to_2tuple, trunc_normal_,
)
from timm.models._builder import build_model_with_cfg, resolve_pretrained_cfg
from timm.models._features import feature_take_indices
from timm.models._features_fx import register_notrace_function, register_notrace_module
from timm.models._manipulate import checkpoint, named_apply
from timm.models._registry import generate_default_cfgs, register_model

from hgrn_core import (AttentionMixer, HGRU, HGRU2d, HierarchicalLowerBound, TokenMixer, create_mixer,
                       get_mixer_class)

__all__ = ['HgrnDeiT', 'Block', 'WeightlessRMSNorm', 'checkpoint_filter_fn', 'check_image_input']

# The scan lives in custom ops: symbolic tracing (torch.fx / timm feature extraction) keeps
# token mixers whole, as leaf modules, instead of tracing through their Python checks.
for _mixer_cls in (TokenMixer, HGRU, HGRU2d, AttentionMixer):
    register_notrace_module(_mixer_cls)


@register_notrace_function
def check_image_input(x: torch.Tensor, in_chans: int, patch_size: Tuple[int, int]) -> None:
    """Clear errors for the two ways an image can be wrong for this model."""
    if x.dim() != 4:
        raise ValueError(
            f'HgrnDeiT expects images of shape (B, C, H, W), got a {x.dim()}-D tensor')
    if x.shape[1] != in_chans:
        raise ValueError(
            f'HgrnDeiT was built with in_chans={in_chans} but got an image with '
            f'{x.shape[1]} channels (shape {list(x.shape)})')
    H, W = x.shape[-2], x.shape[-1]
    if H % patch_size[0] != 0 or W % patch_size[1] != 0:
        raise ValueError(
            f'HgrnDeiT: image size {H}x{W} is not a multiple of the patch size '
            f'{patch_size[0]}x{patch_size[1]}; use sides that are multiples of the patch '
            f'(e.g. {max(1, H // patch_size[0]) * patch_size[0]}x'
            f'{max(1, W // patch_size[1]) * patch_size[1]})')


class WeightlessRMSNorm(nn.Module):
    """``x / (||x||_2 / sqrt(d) + eps)`` over the last dim, no parameters (the head norm of
    the released HGRN image models; note eps is added to the RMS, not under the root)."""

    def __init__(self, dim: int, eps: float = 1e-8):
        super().__init__()
        self.dim = dim
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rms = x.norm(2, dim=-1, keepdim=True) * (self.dim ** -0.5)
        return x / (rms + self.eps)

    def extra_repr(self) -> str:
        return f'{self.dim}, eps={self.eps}'


class Block(nn.Module):
    """Pre-norm block: token mixer (HGRU by default) then GLU channel mixer.

        x = x + DropPath(mixer(norm1(x), gamma_k, grid_width))
        x = x + DropPath(GLU(norm2(x))),  GLU(x) = (SiLU(x W1 + b1) * (x W2 + b2)) W3 + b3

    The GLU is timm's ``GluMlp`` with ``gate_last=False``: ``mlp.fc1`` rows are
    ``[W1 (SiLU branch) | W2 (linear branch)]``, ``mlp.fc2`` is W3.
    """
    def __init__(
            self,
            dim: int,
            mlp_hidden_dim: int,
            mixer: str = 'hgru',
            mixer_kwargs: Optional[Dict[str, Any]] = None,
            proj_drop: float = 0.,
            drop_path: float = 0.,
            norm_layer: Callable[..., nn.Module] = LayerNorm,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.norm1 = norm_layer(dim, **dd)
        self.mixer = create_mixer(mixer, dim, **(mixer_kwargs or {}))
        self.drop_path1 = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = norm_layer(dim, **dd)
        self.mlp = GluMlp(
            in_features=dim,
            hidden_features=2 * mlp_hidden_dim,
            act_layer=nn.SiLU,
            drop=proj_drop,
            gate_last=False,
            **dd,
        )
        self.drop_path2 = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor, lower_bound: Optional[torch.Tensor] = None,
                grid_width: int = 0) -> torch.Tensor:
        x = x + self.drop_path1(self.mixer(self.norm1(x), lower_bound, grid_width))
        x = x + self.drop_path2(self.mlp(self.norm2(x)))
        return x


def _init_weights(module: nn.Module, name: str = '') -> None:
    """timm ViT init for Linear layers (trunc normal std .02, zero bias). Norms keep their
    defaults; HGRU phases and the lower-bound logits keep the init of docs/spec.md §1.5, §2."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class HgrnDeiT(nn.Module):
    """HGRN-DeiT: a DeiT-style isotropic backbone with HGRU token mixing (HGRN, NeurIPS 2023).

    ``mixer='attention'`` builds the same skeleton with softmax self-attention (a DeiT-like
    baseline of identical depth, width and GLU, without the lower bound) for ablations.
    """
    output_fmt = 'NHWC'

    def __init__(
            self,
            img_size: Union[int, Tuple[int, int]] = 224,
            patch_size: Union[int, Tuple[int, int]] = 14,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            embed_dim: int = 192,
            depth: int = 12,
            mlp_ratio: float = 2.,
            glu_hidden_dim: Optional[int] = None,
            mixer: str = 'hgru',
            mixer_backend: str = 'auto',
            num_heads: Optional[int] = None,
            drop_rate: float = 0.,
            proj_drop_rate: float = 0.,
            attn_drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            norm_layer: Optional[Callable[..., nn.Module]] = None,
            weight_init: str = '',
            device=None,
            dtype=None,
    ):
        """
        Args:
            img_size: Nominal input size (default cfg / FLOP counts); any multiple of the
                patch works at run time.
            patch_size: Patch size (14 in the paper).
            in_chans: Number of image channels.
            num_classes: Number of classes (0: no classifier, the pooled features come out).
            global_pool: 'avg' (paper), 'max', 'avgmax' or '' (no pooling: NHWC tokens).
            embed_dim: Width d.
            depth: Number of blocks L.
            mlp_ratio: GLU hidden width as a multiple of ``embed_dim`` (2 in the paper).
            glu_hidden_dim: GLU hidden width, overrides ``mlp_ratio``.
            mixer: Token mixer name from ``hgrn_core.create_mixer``: 'hgru', 'hgru2d' (rows and
                columns of the patch grid) or 'attention'.
            mixer_backend: HGRU scan backend ('auto', 'torch', 'reference', 'triton', ...).
            num_heads: Heads for ``mixer='attention'`` (default: embed_dim // 64).
            drop_rate: Dropout before the classifier.
            proj_drop_rate: Dropout inside the GLU (and attention projection).
            attn_drop_rate: Attention dropout (``mixer='attention'`` only).
            drop_path_rate: Stochastic depth rate, linearly increasing over the blocks.
            norm_layer: Block norm (default nn.LayerNorm, eps 1e-5 as the released code).
            weight_init: '' (timm ViT-style init) or 'skip'.
        """
        super().__init__()
        assert global_pool in ('', 'avg', 'max', 'avgmax'), \
            "global_pool must be one of '', 'avg', 'max', 'avgmax'"
        dd = {'device': device, 'dtype': dtype}
        norm_layer = norm_layer or partial(nn.LayerNorm, eps=1e-5)  # as the released code
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.num_prefix_tokens = 0
        self.mixer_name = mixer
        self.grad_checkpointing = False
        self.patch_size = to_2tuple(patch_size)
        glu_hidden_dim = glu_hidden_dim or int(round(mlp_ratio * embed_dim))
        self.glu_hidden_dim = glu_hidden_dim

        mixer_cls = get_mixer_class(mixer)  # the mixer says what it takes and needs
        mixer_kwargs = mixer_cls.options_from_model(
            mixer_backend=mixer_backend, num_heads=num_heads, attn_drop=attn_drop_rate,
            proj_drop=proj_drop_rate)

        # hgrn_core modules take no device / dtype: build them under a device context
        with torch.device(device) if device is not None else nullcontext():
            self.patch_embed = PatchEmbed(
                img_size=img_size,
                patch_size=patch_size,
                in_chans=in_chans,
                embed_dim=embed_dim,
                flatten=False,
                output_fmt='NHWC',
                strict_img_size=False,  # size checked in check_image_input (any multiple of the patch)
                **dd,
            )
            reduction = self.patch_size[0]
            # one Gamma (L, d) per model, for mixers with a forget gate (not attention)
            self.lower_bound = (HierarchicalLowerBound(depth, embed_dim)
                                if mixer_cls.uses_lower_bound else None)

            dpr = calculate_drop_path_rates(drop_path_rate, depth)
            self.blocks = nn.ModuleList([
                Block(
                    dim=embed_dim,
                    mlp_hidden_dim=glu_hidden_dim,
                    mixer=mixer,
                    mixer_kwargs=mixer_kwargs,
                    proj_drop=proj_drop_rate,
                    drop_path=dpr[i],
                    norm_layer=norm_layer,
                    **dd,
                )
                for i in range(depth)])
            self.feature_info = [
                dict(module=f'blocks.{i}', num_chs=embed_dim, reduction=reduction) for i in range(depth)]
            self.norm = nn.Identity()  # no norm before pooling in HGRN (kept for the timm API)

            # Classifier head: pool -> weightless RMSNorm -> dropout -> Linear
            self.fc_norm = WeightlessRMSNorm(embed_dim)
            self.head_drop = nn.Dropout(drop_rate)
            self.head = nn.Linear(embed_dim, num_classes, **dd) if num_classes > 0 else nn.Identity()

            if dtype is not None:
                self.to(dtype=dtype)

        if weight_init != 'skip':
            self.init_weights(weight_init)

    def init_weights(self, mode: str = '') -> None:
        assert mode in ('', 'reset'), f'unknown weight_init {mode!r}'
        named_apply(_init_weights, self)

    # ------------------------------------------------------------------------- timm API
    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        """Lower-bound logits and every HGRU phase (1-D params are excluded by timm anyway)."""
        names = {n for n, _ in self.named_parameters()
                 if n == 'lower_bound.logits' or n.endswith(('.theta_forward', '.theta_reverse'))}
        return names

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(
            stem=r'^patch_embed|lower_bound',  # stem and the model-wide lower bound
            blocks=[(r'^blocks\.(\d+)', None), (r'^norm', (99999,))],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        dd = get_device_dtype(self)
        self.num_classes = num_classes
        if global_pool is not None:
            assert global_pool in ('', 'avg', 'max', 'avgmax'), \
                "global_pool must be one of '', 'avg', 'max', 'avgmax'"
            self.global_pool = global_pool
        self.head = nn.Linear(self.embed_dim, num_classes, **dd) if num_classes > 0 else nn.Identity()
        self.head.train(self.training)

    # ------------------------------------------------------------------------- forward
    def _lower_bounds(self) -> Optional[torch.Tensor]:
        # computed once per forward from the full Gamma (L, d); block k takes row k. Pruning
        # blocks keeps Gamma whole, so the kept blocks see the same bounds.
        return self.lower_bound() if self.lower_bound is not None else None

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        check_image_input(x, self.in_chans, self.patch_size)
        return self.patch_embed(x)  # (B, H, W, C)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self._embed(x)
        B, H, W, C = x.shape
        x = x.reshape(B, H * W, C)
        gammas = self._lower_bounds()
        for i, blk in enumerate(self.blocks):
            gamma = gammas[i] if gammas is not None else None
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(blk, x, gamma, W)
            else:
                x = blk(x, gamma, W)
        x = self.norm(x)
        return x.reshape(B, H, W, C)

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Forward features that also returns the outputs of the selected blocks.

        Args:
            x: Input images (B, C, H, W).
            indices: Take the last n blocks if int, all if None, these indices if a sequence.
            norm: Apply the final norm (identity in HGRN) to the intermediates.
            stop_early: Stop after the last block needed.
            output_fmt: 'NCHW' (feature maps), 'NHWC' or 'NLC' (token sequences).
            intermediates_only: Return only the intermediates.
        Returns:
            ``(final features as forward_features, intermediates)`` or the intermediates.
        """
        assert output_fmt in ('NCHW', 'NHWC', 'NLC'), 'output_fmt must be one of NCHW, NHWC, NLC'
        intermediates = []
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)

        x = self._embed(x)
        B, H, W, C = x.shape
        x = x.reshape(B, H * W, C)
        gammas = self._lower_bounds()
        if torch.jit.is_scripting() or not stop_early:  # can't slice blocks in torchscript
            blocks = self.blocks
        else:
            blocks = self.blocks[:max_index + 1]
        for i, blk in enumerate(blocks):
            gamma = gammas[i] if gammas is not None else None
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(blk, x, gamma, W)
            else:
                x = blk(x, gamma, W)
            if i in take_indices:
                y = self.norm(x) if norm else x
                if output_fmt == 'NCHW':
                    y = y.reshape(B, H, W, C).permute(0, 3, 1, 2).contiguous()
                elif output_fmt == 'NHWC':
                    y = y.reshape(B, H, W, C)
                intermediates.append(y)

        if intermediates_only:
            return intermediates
        x = self.norm(x)
        return x.reshape(B, H, W, C), intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Drop the blocks after the last wanted intermediate (and the head). The lower bound
        keeps its full Gamma so the kept blocks get the same gamma_k as before."""
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[:max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.fc_norm = nn.Identity()
            self.reset_classifier(0, '')
        return take_indices

    def pool(self, x: torch.Tensor, pool_type: Optional[str] = None) -> torch.Tensor:
        """Pool the NHWC token grid of ``forward_features`` over all tokens."""
        pool_type = self.global_pool if pool_type is None else pool_type
        if not pool_type:
            return x
        if pool_type == 'avg':
            return x.mean(dim=(1, 2))
        if pool_type == 'max':
            return x.amax(dim=(1, 2))
        return 0.5 * (x.mean(dim=(1, 2)) + x.amax(dim=(1, 2)))  # avgmax

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.pool(x)
        x = self.fc_norm(x)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)
        x = self.forward_head(x)
        return x


# ------------------------------------------------------------------------------ checkpoints
_RELEASED_MIXER_KEYS = ('input_proj', 'lambda_proj', 'gate')


def _convert_released(state_dict: Dict[str, torch.Tensor], model: HgrnDeiT) -> Dict[str, torch.Tensor]:
    """The authors' released layout (OpenNLPLab ``im``, ``hgrn1d_vit_*``) -> HgrnDeiT. Their
    2-D mixers (``BiHgru2d``, ``Hgru2d``, ``HgruReal2d``) keep the 1-D key names and convert
    the same way (``theta`` of ``Hgru2d`` becomes ``theta_forward``)."""
    out: Dict[str, torch.Tensor] = {}
    sd = dict(state_dict)
    mixer_parts: Dict[int, Dict[str, torch.Tensor]] = {}
    for k, v in sd.items():
        if k.startswith('to_patch_embedding.1.'):
            name = k[len('to_patch_embedding.1.'):]
            if name == 'weight':
                # Linear over patches flattened as (p1, p2, c) -> Conv2d (d, c, p1, p2)
                ph, pw = model.patch_size
                v = v.reshape(v.shape[0], ph, pw, -1).permute(0, 3, 1, 2).contiguous()
            out[f'patch_embed.proj.{name}'] = v
        elif k == 'lower_bounds':
            out['lower_bound.logits'] = v
        elif k.startswith('head.1.'):
            out['head.' + k[len('head.1.'):]] = v
        elif k.startswith('layers.'):
            _, idx, rest = k.split('.', 2)
            i = int(idx)
            if rest.startswith('token_norm.'):
                out[f'blocks.{i}.norm1.' + rest[len('token_norm.'):]] = v
            elif rest.startswith('feature_norm.'):
                out[f'blocks.{i}.norm2.' + rest[len('feature_norm.'):]] = v
            elif rest.startswith('feature_mixer.'):
                sub, name = rest[len('feature_mixer.'):].split('.', 1)
                mixer_parts.setdefault(i, {})[f'ffn.{sub}.{name}'] = v
            elif rest.startswith('token_mixer.'):
                sub = rest[len('token_mixer.'):]
                if sub.split('.', 1)[0] in _RELEASED_MIXER_KEYS:
                    mixer_parts.setdefault(i, {})[sub] = v
                elif sub in ('theta_forward', 'theta_reverse', 'theta'):
                    # 'theta': the one phase of the authors' one-direction 2-D mixer (Hgru2d)
                    name = 'theta_forward' if sub == 'theta' else sub
                    out[f'blocks.{i}.mixer.{name}'] = v.reshape(-1)
                else:  # out_proj.*, norm.*
                    out[f'blocks.{i}.mixer.{sub}'] = v
            else:
                out[k] = v  # unknown: let load_state_dict report it
        else:
            out[k] = v

    for i, parts in mixer_parts.items():
        for name in ('weight', 'bias'):
            if f'input_proj.{name}' in parts:
                c, mu = parts[f'input_proj.{name}'], parts[f'lambda_proj.{name}']
                # complex: interleaved (real, imag) outputs -> [Re c | Im c]; real: as is
                c = [c[0::2], c[1::2]] if c.shape[0] == 2 * mu.shape[0] else [c]
                out[f'blocks.{i}.mixer.in_proj.{name}'] = torch.cat(
                    [*c, mu, parts[f'gate.{name}']], dim=0)
            if f'ffn.l1.{name}' in parts:
                # GluMlp(gate_last=False): fc1 = [W1 (SiLU branch) | W2 (linear branch)], fc2 = W3
                out[f'blocks.{i}.mlp.fc1.{name}'] = torch.cat(
                    [parts[f'ffn.l1.{name}'], parts[f'ffn.l2.{name}']], dim=0)
                out[f'blocks.{i}.mlp.fc2.{name}'] = parts[f'ffn.l3.{name}']
    return out


def checkpoint_filter_fn(state_dict: Dict[str, Any], model: HgrnDeiT) -> Dict[str, torch.Tensor]:
    """Accept a native HgrnDeiT state dict (possibly wrapped in 'model' / 'state_dict' /
    'state_dict_ema', possibly with a DDP 'module.' prefix) or the authors' released layout."""
    for key in ('model', 'state_dict', 'state_dict_ema', 'model_ema'):
        if isinstance(state_dict, dict) and key in state_dict and isinstance(state_dict[key], dict):
            state_dict = state_dict[key]
            break
    state_dict = {(k[len('module.'):] if k.startswith('module.') else k): v for k, v in state_dict.items()}
    if any(k.startswith(('to_patch_embedding.', 'layers.')) or k == 'lower_bounds' for k in state_dict):
        state_dict = _convert_released(state_dict, model)
    return state_dict


# ------------------------------------------------------------------------------ creation
def _create_hgrn_deit(variant: str, pretrained: bool = False, **kwargs) -> HgrnDeiT:
    if pretrained:
        cfg = resolve_pretrained_cfg(
            variant,
            pretrained_cfg=kwargs.get('pretrained_cfg'),
            pretrained_cfg_overlay=kwargs.get('pretrained_cfg_overlay'),
        )
        if not (cfg.file or cfg.url or cfg.hf_hub_id or cfg.state_dict):
            raise RuntimeError(
                f'No pretrained weights ship for {variant!r}. To load a local checkpoint (.pth or '
                f'.safetensors, native or in the authors\' released layout) pass '
                f'pretrained_cfg_overlay=dict(file="/path/to/checkpoint"), e.g. '
                f'timm.create_model({variant.split(".")[0]!r}, pretrained=True, '
                f'pretrained_cfg_overlay=dict(file=PATH)); or use checkpoint_path=PATH.')
    out_indices = kwargs.pop('out_indices', 3)
    return build_model_with_cfg(
        HgrnDeiT,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls='getter'),
        **kwargs,
    )


def _cfg(url: str = '', **kwargs) -> Dict[str, Any]:
    return {
        'url': url,
        'num_classes': 1000,
        'input_size': (3, 224, 224),
        'pool_size': (16, 16),
        'crop_pct': .875,
        'interpolation': 'bicubic',
        'mean': IMAGENET_DEFAULT_MEAN,
        'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'patch_embed.proj',
        'classifier': 'head',
        # smallest size timm's tests shrink to: sides must be multiples of the patch (14)
        'min_input_size': (3, 112, 112),
        'license': 'apache-2.0',
        'paper_ids': 'arXiv:2311.04823',
        'paper_name': 'Hierarchically Gated Recurrent Neural Network for Sequence Modeling',
        'origin_url': 'https://github.com/OpenNLPLab/HGRN',
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    'hgrn_deit_tiny': _cfg(),
    'hgrn_deit_small': _cfg(),
    'hgrn_deit_base': _cfg(),
    'hgrn2d_deit_tiny': _cfg(),
    'hgrn2d_deit_small': _cfg(),
})


def _variant_args(defaults: Dict[str, Any], kwargs: Dict[str, Any]) -> Dict[str, Any]:
    return dict(defaults, **kwargs)  # user overrides win (img_size, patch_size, depth, ...)


@register_model
def hgrn_deit_tiny(pretrained: bool = False, **kwargs) -> HgrnDeiT:
    """HGRN-DeiT-Tiny (paper): patch 14, d=192, 12 blocks, GLU 384; 6,107,560 params."""
    model_args = dict(patch_size=14, embed_dim=192, depth=12, mlp_ratio=2.)
    return _create_hgrn_deit('hgrn_deit_tiny', pretrained=pretrained, **_variant_args(model_args, kwargs))


@register_model
def hgrn_deit_small(pretrained: bool = False, **kwargs) -> HgrnDeiT:
    """HGRN-DeiT-Small (paper): patch 14, d=384, 12 blocks, GLU 768; 23,715,688 params."""
    model_args = dict(patch_size=14, embed_dim=384, depth=12, mlp_ratio=2.)
    return _create_hgrn_deit('hgrn_deit_small', pretrained=pretrained, **_variant_args(model_args, kwargs))


@register_model
def hgrn_deit_base(pretrained: bool = False, **kwargs) -> HgrnDeiT:
    """HGRN-DeiT-Base: patch 14, d=768, 12 blocks, GLU 1536. Beyond the paper (which reports
    only Tiny and Small): same recipe scaled to DeiT-Base width, no published result."""
    model_args = dict(patch_size=14, embed_dim=768, depth=12, mlp_ratio=2.)
    return _create_hgrn_deit('hgrn_deit_base', pretrained=pretrained, **_variant_args(model_args, kwargs))


@register_model
def hgrn2d_deit_tiny(pretrained: bool = False, **kwargs) -> HgrnDeiT:
    """HGRN-DeiT-Tiny with the 2-D HGRU (rows and columns of the patch grid, both ways; the
    authors' ``BiHgru2d``): the same parameters as hgrn_deit_tiny, 6,107,560. No published
    result."""
    model_args = dict(patch_size=14, embed_dim=192, depth=12, mlp_ratio=2., mixer='hgru2d')
    return _create_hgrn_deit('hgrn2d_deit_tiny', pretrained=pretrained, **_variant_args(model_args, kwargs))


@register_model
def hgrn2d_deit_small(pretrained: bool = False, **kwargs) -> HgrnDeiT:
    """HGRN-DeiT-Small with the 2-D HGRU (as hgrn2d_deit_tiny): 23,715,688 params. No
    published result."""
    model_args = dict(patch_size=14, embed_dim=384, depth=12, mlp_ratio=2., mixer='hgru2d')
    return _create_hgrn_deit('hgrn2d_deit_small', pretrained=pretrained, **_variant_args(model_args, kwargs))
