"""HGRN-DeiT as timm models: registration, architecture, timm API, checkpoints, ecosystem.

Small widths / depths / images everywhere (patch 14, 28..56 px) except the exact
parameter counts of the full models, which need no forward pass.
"""
import math
import os

import pytest
import torch
import torch.nn.functional as F

import timm
import hgrn_vision  # noqa: F401  (registers the models)
from hgrn_vision import HgrnDeiT, checkpoint_filter_fn
from timm.layers import DropPath

VARIANTS = ['hgrn_deit_tiny', 'hgrn_deit_small', 'hgrn_deit_base']
VARIANTS_2D = ['hgrn2d_deit_tiny', 'hgrn2d_deit_small']   # the same with the 2-D HGRU
ONE_EACH = ['hgrn_deit_tiny', 'hgrn2d_deit_tiny']          # where the mixer matters
SMALL = dict(embed_dim=32, depth=2, mixer_backend='torch')


def _small(name='hgrn_deit_tiny', **kw):
    args = dict(SMALL)
    args.update(kw)
    return timm.create_model(name, **args)


# ------------------------------------------------------------------------------ registry
def test_registered_with_default_cfgs():
    assert set(VARIANTS + VARIANTS_2D) <= set(timm.list_models('hgrn*'))
    for name in VARIANTS + VARIANTS_2D:
        model = timm.create_model(name, depth=1)  # cfg only
        cfg = model.pretrained_cfg
        assert cfg['input_size'] == (3, 224, 224)
        assert cfg['num_classes'] == 1000 and cfg['classifier'] == 'head'
        assert cfg['first_conv'] == 'patch_embed.proj'
        assert cfg['interpolation'] == 'bicubic' and cfg['crop_pct'] == 0.875
        data_cfg = timm.data.resolve_data_config(model=model)
        assert data_cfg['mean'] == timm.data.IMAGENET_DEFAULT_MEAN
        assert data_cfg['std'] == timm.data.IMAGENET_DEFAULT_STD
        assert data_cfg['input_size'] == (3, 224, 224)
    assert 'beyond the paper' in timm.models.model_entrypoint('hgrn_deit_base').__doc__.lower()


# ------------------------------------------------------------------------------ architecture
@pytest.mark.parametrize('name, expected', [('hgrn_deit_tiny', 6_107_560), ('hgrn_deit_small', 23_715_688),
                                            ('hgrn2d_deit_tiny', 6_107_560), ('hgrn2d_deit_small', 23_715_688)])
def test_exact_parameter_counts(name, expected):
    model = timm.create_model(name, device='meta')  # shapes only, no allocation
    assert sum(p.numel() for p in model.parameters()) == expected


@pytest.mark.parametrize('size', ['tiny', 'small'])
def test_2d_model_is_the_1d_model_with_the_2d_mixer(size):
    """Same parameter names and shapes (a checkpoint moves between them); only the mixers'
    class differs."""
    one = timm.create_model(f'hgrn_deit_{size}', device='meta')
    two = timm.create_model(f'hgrn2d_deit_{size}', device='meta')
    assert {n: p.shape for n, p in two.named_parameters()} == {n: p.shape for n, p in one.named_parameters()}
    assert two.mixer_name == 'hgru2d'
    assert all(type(b.mixer).__name__ == 'HGRU2d' for b in two.blocks)
    assert all(type(b.mixer).__name__ == 'HGRU' for b in one.blocks)


def test_base_parameter_count_by_formula():
    d, L, H, p = 768, 12, 1536, 14
    per_block = (4 * d  # two block LayerNorms
                 + d * 5 * d + 5 * d + 4 * d + 2 * d * d + d + 2 * d  # HGRU
                 + d * 2 * H + 2 * H + H * d + d)  # GLU
    expected = 3 * p * p * d + d + L * per_block + L * d + d * 1000 + 1000
    model = timm.create_model('hgrn_deit_base', device='meta')
    assert sum(p.numel() for p in model.parameters()) == expected


def test_glu_is_silu_of_first_half_times_second_half():
    model = _small().eval()
    mlp = model.blocks[0].mlp
    x = torch.randn(2, 5, 32)
    hidden = mlp.fc1.out_features // 2
    w1, w2 = mlp.fc1.weight[:hidden], mlp.fc1.weight[hidden:]
    b1, b2 = mlp.fc1.bias[:hidden], mlp.fc1.bias[hidden:]
    expected = F.linear(F.silu(F.linear(x, w1, b1)) * F.linear(x, w2, b2), mlp.fc2.weight, mlp.fc2.bias)
    torch.testing.assert_close(mlp(x), expected)
    assert hidden == 64  # GLU width 2d by default


@pytest.mark.parametrize('name', VARIANTS + VARIANTS_2D)
def test_forward_backward_each_variant(name):
    model = timm.create_model(name, depth=2, num_classes=5, mixer_backend='torch').train()
    x = torch.randn(2, 3, 28, 42)
    out = model(x)
    assert out.shape == (2, 5)
    out.sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_overrides_reach_the_model():
    model = _small(num_classes=7, in_chans=1, patch_size=7, img_size=56, glu_hidden_dim=48,
                   drop_rate=0.3, global_pool='max')
    assert model.patch_embed.proj.in_channels == 1 and model.patch_embed.proj.kernel_size == (7, 7)
    assert model.embed_dim == 32 and len(model.blocks) == 2 and model.num_classes == 7
    assert model.blocks[0].mlp.fc2.in_features == 48
    assert model.head_drop.p == 0.3 and model.global_pool == 'max'
    assert model.pretrained_cfg['input_size'][0] == 3  # source cfg; in_chans recorded on the model
    assert model.in_chans == 1
    assert model(torch.randn(1, 1, 21, 14)).shape == (1, 7)


def test_drop_path_reaches_blocks():
    model = _small(depth=4, drop_path_rate=0.3)
    rates = [blk.drop_path1.drop_prob if isinstance(blk.drop_path1, DropPath) else 0. for blk in model.blocks]
    assert rates[0] == 0. and rates[-1] == pytest.approx(0.3)
    assert all(isinstance(b.drop_path2, DropPath) for b in model.blocks[1:])
    x = torch.randn(4, 3, 28, 28)
    model.train()
    torch.manual_seed(0)
    a = model(x)
    torch.manual_seed(1)
    b = model(x)
    assert not torch.allclose(a, b)  # stochastic depth active in training
    model.eval()
    torch.testing.assert_close(model(x), model(x))


def test_lower_bound_rows_reach_blocks():
    """Each block gets its own gamma_k: changing Gamma changes the output."""
    model = _small(depth=3).eval()
    x = torch.randn(1, 3, 28, 28)
    ref = model(x)
    with torch.no_grad():
        model.lower_bound.logits[1].add_(3.)
    assert not torch.allclose(model(x), ref)


# ------------------------------------------------------------------------------ input sizes
@pytest.mark.parametrize('name', ONE_EACH)
def test_image_sizes_on_one_model(name):
    model = _small(name, num_classes=4).eval()
    for hw in [(28, 28), (56, 56), (42, 70), (14, 14), (224, 28)]:
        assert model(torch.randn(1, 3, *hw)).shape == (1, 4)
        feats = model.forward_features(torch.randn(1, 3, *hw))
        assert feats.shape == (1, hw[0] // 14, hw[1] // 14, 32)


def _symmetric_patches(model):
    """Make the patch embedding's kernels symmetric (k[i, j] = k[j, i]): embedding a
    transposed image then gives the transposed token grid."""
    with torch.no_grad():
        w = model.patch_embed.proj.weight
        w.copy_((w + w.transpose(-1, -2)) / 2)
    return model


def test_2d_model_commutes_with_transposing_the_image():
    """The 2-D HGRU sums the same scans along rows and along columns, so with symmetric
    patch kernels the transposed image gives the transposed features (and, pooled, the
    same logits); the 1-D model, which reads the grid row-major, does not. H != W: a grid
    read with its sides swapped (height taken for the width) fails this."""
    x = torch.randn(2, 3, 28, 42, generator=torch.Generator().manual_seed(0))
    xt = x.transpose(-1, -2)
    # the reference loop in float64 (tight), the op (torch backend) in float32
    for backend, dtype, tol in (('reference', torch.float64, {}),
                                ('torch', torch.float32, dict(rtol=1e-4, atol=1e-5))):
        torch.manual_seed(0)
        model = _symmetric_patches(_small('hgrn2d_deit_tiny', num_classes=4, mixer_backend=backend))
        model = model.to(dtype).eval()
        with torch.no_grad():
            feats = model.forward_features(x.to(dtype))
            assert feats.shape == (2, 2, 3, 32)
            torch.testing.assert_close(model.forward_features(xt.to(dtype)), feats.transpose(1, 2), **tol)
            torch.testing.assert_close(model(xt.to(dtype)), model(x.to(dtype)), **tol)
    torch.manual_seed(0)
    one = _symmetric_patches(_small('hgrn_deit_tiny', num_classes=4)).eval()
    with torch.no_grad():  # per token (pooled, the init's small mixers differ less)
        diff = one.forward_features(xt) - one.forward_features(x).transpose(1, 2)
        assert diff.abs().max() > 1e-3  # ~1e-2 here: far above the tolerance above


def test_bad_size_and_channels_raise_clear_errors():
    model = _small().eval()
    with pytest.raises(ValueError, match=r'30x28.*patch size 14x14'):
        model(torch.randn(1, 3, 30, 28))
    with pytest.raises(ValueError, match=r'in_chans=3.*1 channels'):
        model(torch.randn(1, 1, 28, 28))
    gray = _small(in_chans=1).eval()
    with pytest.raises(ValueError, match='in_chans=1'):
        gray(torch.randn(1, 3, 28, 28))


# ------------------------------------------------------------------------------ timm API
def test_head_api_and_reset_classifier():
    model = _small(num_classes=10).eval()
    x = torch.randn(2, 3, 28, 42)
    assert model.num_features == model.head_hidden_size == 32
    assert model.get_classifier() is model.head and model.head.out_features == 10
    feats = model.forward_features(x)
    pre = model.forward_head(feats, pre_logits=True)
    assert pre.shape == (2, 32)
    expected = feats.mean((1, 2))
    expected = expected / (expected.norm(dim=-1, keepdim=True) / math.sqrt(32) + 1e-8)
    torch.testing.assert_close(pre, expected)
    torch.testing.assert_close(model(x), model.head(pre))

    model.reset_classifier(3)
    assert model(x).shape == (2, 3) and model.global_pool == 'avg'
    model.reset_classifier(0)
    torch.testing.assert_close(model(x), pre)
    model.reset_classifier(0, '')
    assert model(x).shape == (2, 2, 3, 32)  # NHWC token grid
    no_head = _small(num_classes=0).eval()
    assert no_head(x).shape == (2, 32)
    with pytest.raises(AssertionError):
        model.reset_classifier(2, 'token')


def test_no_weight_decay_and_group_matcher():
    model = _small(depth=3)
    nwd = model.no_weight_decay()
    names = dict(model.named_parameters())
    assert 'lower_bound.logits' in nwd
    assert {f'blocks.{i}.mixer.theta_{d}' for i in range(3) for d in ('forward', 'reverse')} <= nwd
    assert nwd <= set(names)
    from timm.models._manipulate import group_parameters
    groups = group_parameters(model, model.group_matcher(coarse=False))
    assert len(groups) == 1 + 3 + 1  # stem (patch embed, lower bound), 3 blocks, head
    assert 'lower_bound.logits' in groups[0]
    from timm.optim import create_optimizer_v2
    opt = create_optimizer_v2(model, 'adamw', lr=1e-3, weight_decay=0.05, layer_decay=0.75)
    for g in opt.param_groups:
        if any(p is names['lower_bound.logits'] for p in g['params']):
            assert g['weight_decay'] == 0.


@pytest.mark.parametrize('name', ONE_EACH)
def test_grad_checkpointing_same_gradients(name):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 28, 42)
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        model = _small(name, depth=3, num_classes=3).train()
        model.set_grad_checkpointing(ckpt)
        model(x).pow(2).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], msg=n)


@pytest.mark.parametrize('name', ONE_EACH)
def test_features_only_and_forward_intermediates(name):
    x = torch.randn(2, 3, 28, 56)
    torch.manual_seed(0)
    fmodel = _small(name, depth=4, features_only=True, out_indices=(0, 2)).eval()
    assert fmodel.feature_info.channels() == [32, 32]
    assert fmodel.feature_info.reduction() == [14, 14]
    outs = fmodel(x)
    assert [o.shape for o in outs] == [(2, 32, 2, 4)] * 2
    default = _small(name, depth=4, features_only=True).eval()
    assert len(default(x)) == 3

    torch.manual_seed(0)
    model = _small(name, depth=4).eval()  # same init as fmodel
    final, inter = model.forward_intermediates(x)
    assert len(inter) == 4 and all(t.shape == (2, 32, 2, 4) for t in inter)
    torch.testing.assert_close(final, model.forward_features(x))
    torch.testing.assert_close(outs[1], inter[2])  # pruned feature model == full model taps
    nlc = model.forward_intermediates(x, indices=2, output_fmt='NLC', intermediates_only=True)
    assert len(nlc) == 2 and nlc[0].shape == (2, 8, 32)
    torch.testing.assert_close(nlc[1].transpose(1, 2).reshape(2, 32, 2, 4), inter[3])
    early = model.forward_intermediates(x, indices=[1], stop_early=True, intermediates_only=True)
    torch.testing.assert_close(early[0], inter[1])
    take = model.prune_intermediate_layers([1])
    assert take == [1] and len(model.blocks) == 2
    torch.testing.assert_close(model.forward_intermediates(x, indices=take, intermediates_only=True)[0], inter[1])
    torch.testing.assert_close(model.forward_features(x), inter[1].permute(0, 2, 3, 1))


# ------------------------------------------------------------------------------ mixers and backends
def test_attention_mixer_baseline():
    model = _small(mixer='attention', num_heads=2, num_classes=5).train()
    assert model.lower_bound is None and model.no_weight_decay() == set()
    assert type(model.blocks[0].mixer).__name__ == 'AttentionMixer'
    out = model(torch.randn(2, 3, 28, 42))
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    # same skeleton: the two models differ only inside the token mixers
    hgru = _small(num_classes=5)
    outside = lambda m: {n: p.shape for n, p in m.named_parameters() if '.mixer.' not in n and 'lower_bound' not in n}
    assert outside(model) == outside(hgru)


@pytest.mark.parametrize('name', ONE_EACH)
def test_mixer_backend_choice(name):
    torch.manual_seed(0)
    a = _small(name, mixer_backend='torch').eval()
    b = _small(name, mixer_backend='reference').eval()
    b.load_state_dict(a.state_dict())
    assert b.blocks[0].mixer.backend == 'reference'
    x = torch.randn(2, 3, 28, 42)
    torch.testing.assert_close(a(x), b(x), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match='unknown scan backend'):
        _small(name, mixer_backend='nope')(x)


# ------------------------------------------------------------------------------ checkpoints
def _released_state_dict(d, L, H, p, C, num_classes, seed=0):
    """Random weights in the authors' released key layout (hgrn1d_vit_*)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s, std=0.2: torch.randn(*s, generator=g, dtype=torch.float64) * std
    sd = {'to_patch_embedding.1.weight': r(d, p * p * C), 'to_patch_embedding.1.bias': r(d)}
    for i in range(L):
        pre = f'layers.{i}.'
        sd.update({
            pre + 'token_norm.weight': 1 + r(d), pre + 'token_norm.bias': r(d),
            pre + 'token_mixer.input_proj.weight': r(2 * d, d), pre + 'token_mixer.input_proj.bias': r(2 * d),
            pre + 'token_mixer.lambda_proj.weight': r(d, d), pre + 'token_mixer.lambda_proj.bias': r(d),
            pre + 'token_mixer.gate.weight': r(2 * d, d), pre + 'token_mixer.gate.bias': r(2 * d),
            pre + 'token_mixer.norm.weight': 1 + r(2 * d), pre + 'token_mixer.norm.bias': r(2 * d),
            pre + 'token_mixer.out_proj.weight': r(d, 2 * d), pre + 'token_mixer.out_proj.bias': r(d),
            pre + 'token_mixer.theta_forward': r(d, std=1.), pre + 'token_mixer.theta_reverse': r(d, std=1.),
            pre + 'feature_norm.weight': 1 + r(d), pre + 'feature_norm.bias': r(d),
            pre + 'feature_mixer.l1.weight': r(H, d), pre + 'feature_mixer.l1.bias': r(H),
            pre + 'feature_mixer.l2.weight': r(H, d), pre + 'feature_mixer.l2.bias': r(H),
            pre + 'feature_mixer.l3.weight': r(d, H), pre + 'feature_mixer.l3.bias': r(d),
        })
    sd['lower_bounds'] = r(L, d, std=1.)
    sd['head.1.weight'] = r(num_classes, d)
    sd['head.1.bias'] = r(num_classes)
    return sd


def _plain_released_forward(sd, img, p, L):
    """The forward pass of docs/spec.md §3.2 written directly on the released layout:
    patches flattened as (p1, p2, c), interleaved (real, imag) input channels, an explicit
    sequential scan."""
    B, C, Hi, Wi = img.shape
    h, w = Hi // p, Wi // p
    x = img.reshape(B, C, h, p, w, p).permute(0, 2, 4, 3, 5, 1).reshape(B, h * w, p * p * C)
    x = F.linear(x, sd['to_patch_embedding.1.weight'], sd['to_patch_embedding.1.bias'])
    N, d = x.shape[1], x.shape[2]
    shares = torch.softmax(sd['lower_bounds'], dim=0)
    gammas = [torch.zeros(d, dtype=x.dtype)] + [shares[:k].sum(0) for k in range(1, L)]
    lin = lambda t, name: F.linear(t, sd[name + '.weight'], sd[name + '.bias'])
    for i in range(L):
        pre = f'layers.{i}.'
        y = F.layer_norm(x, (d,), sd[pre + 'token_norm.weight'], sd[pre + 'token_norm.bias'], 1e-5)
        c = F.silu(lin(y, pre + 'token_mixer.input_proj'))
        c = torch.complex(c[..., 0::2], c[..., 1::2])
        lam = gammas[i] + (1 - gammas[i]) * torch.sigmoid(lin(y, pre + 'token_mixer.lambda_proj'))
        gate = F.silu(lin(y, pre + 'token_mixer.gate'))
        states = torch.zeros(B, N, d, dtype=c.dtype)
        for theta_name, order in (('theta_forward', range(N)), ('theta_reverse', reversed(range(N)))):
            rot = torch.exp(1j * sd[pre + 'token_mixer.' + theta_name].to(c.dtype))
            hs = torch.zeros(B, d, dtype=c.dtype)
            for t in order:
                hs = lam[:, t] * rot * hs + (1 - lam[:, t]) * c[:, t]
                states[:, t] += hs
        hcat = torch.cat([states.real, states.imag], -1)
        hcat = F.layer_norm(hcat, (2 * d,), sd[pre + 'token_mixer.norm.weight'], sd[pre + 'token_mixer.norm.bias'], 1e-5)
        x = x + lin(hcat * gate, pre + 'token_mixer.out_proj')
        y = F.layer_norm(x, (d,), sd[pre + 'feature_norm.weight'], sd[pre + 'feature_norm.bias'], 1e-5)
        x = x + lin(F.silu(lin(y, pre + 'feature_mixer.l1')) * lin(y, pre + 'feature_mixer.l2'),
                    pre + 'feature_mixer.l3')
    x = x.mean(1)
    x = x / (x.norm(dim=-1, keepdim=True) / math.sqrt(d) + 1e-8)
    return lin(x, 'head.1')


def test_released_checkpoint_converts_and_matches_plain_forward(tmp_path):
    d, L, H, p, C, nc = 16, 3, 24, 14, 3, 7
    sd = _released_state_dict(d, L, H, p, C, nc)
    path = tmp_path / 'released.pth'
    torch.save({'model': {k: v.float() for k, v in sd.items()}}, path)
    model = timm.create_model(
        'hgrn_deit_tiny', pretrained=True, pretrained_cfg_overlay=dict(file=str(path), num_classes=nc),
        embed_dim=d, depth=L, glu_hidden_dim=H, num_classes=nc, mixer_backend='torch').eval()
    img = torch.randn(2, C, 28, 42, dtype=torch.float64)
    with torch.no_grad():  # through timm's pretrained path (float32 file)
        torch.testing.assert_close(model(img.float()).double(), _plain_released_forward(sd, img, p, L),
                                   rtol=1e-4, atol=1e-4)
    # and tightly in float64, converting the float64 weights directly
    model.double().load_state_dict(checkpoint_filter_fn(sd, model))
    with torch.no_grad():
        torch.testing.assert_close(model(img), _plain_released_forward(sd, img, p, L), rtol=1e-7, atol=1e-8)


def test_native_round_trip_pth_and_safetensors(tmp_path):
    model = _small(num_classes=6).eval()
    x = torch.randn(1, 3, 28, 28)
    ref = model(x)
    torch.save(model.state_dict(), tmp_path / 'w.pth')
    from safetensors.torch import save_file
    save_file(model.state_dict(), str(tmp_path / 'w.safetensors'))
    for fname in ('w.pth', 'w.safetensors'):
        loaded = _small(num_classes=6, pretrained=True,
                        pretrained_cfg_overlay=dict(file=str(tmp_path / fname), num_classes=6)).eval()
        torch.testing.assert_close(loaded(x), ref)
    # a fresh head on top of loaded weights (timm drops the mismatching classifier)
    loaded = _small(num_classes=3, pretrained=True,
                    pretrained_cfg_overlay=dict(file=str(tmp_path / 'w.pth'), num_classes=6)).eval()
    torch.testing.assert_close(loaded.forward_head(loaded.forward_features(x), pre_logits=True),
                               model.forward_head(model.forward_features(x), pre_logits=True))


def test_pretrained_without_file_is_a_clear_error():
    with pytest.raises(RuntimeError, match=r'No pretrained weights ship.*pretrained_cfg_overlay=dict\(file='):
        timm.create_model('hgrn_deit_tiny', pretrained=True)


# ------------------------------------------------------------------------------ ecosystem
@pytest.mark.parametrize('name', ONE_EACH)
@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_autocast(dtype, name):
    model = _small(name, num_classes=4).eval()
    x = torch.randn(2, 3, 28, 28)
    ref = model(x)
    with torch.autocast('cpu', dtype=dtype):
        out = model(x)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), ref, rtol=0.1, atol=0.1)


def test_to_float64_and_devices():
    model = _small(num_classes=4).eval()
    x = torch.randn(2, 3, 28, 28)
    ref = model(x)
    model64 = model.to(torch.float64)
    assert all(p.dtype == torch.float64 for p in model64.parameters())
    torch.testing.assert_close(model64(x.double()).float(), ref, rtol=1e-4, atol=1e-5)
    model.to('cpu', torch.float32)
    if torch.cuda.is_available():
        torch.testing.assert_close(model.cuda()(x.cuda()).cpu(), ref, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize('name', ONE_EACH)
def test_pure_bf16_weights(name):
    model = _small(name, num_classes=4).eval().to(torch.bfloat16)
    out = model(torch.randn(1, 3, 28, 28, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16


@pytest.mark.parametrize('name', ONE_EACH)
def test_torch_compile_cpu(name):
    if os.environ.get('HGRN_SKIP_COMPILE'):
        pytest.skip('HGRN_SKIP_COMPILE set')
    torch.manual_seed(0)
    model = _small(name, depth=1, embed_dim=16, num_classes=3).eval()
    x = torch.randn(2, 3, 28, 42)
    ref = model(x)
    compiled = torch.compile(model, fullgraph=True)  # one graph: a graph break raises
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), ref, rtol=1e-4, atol=1e-5)
