"""timm's own model test-suite, reproduced for every registered hgrn model.

timm's wheel does not ship its tests; this file re-states, in our own code, the assertions
of these functions of ``tests/test_models.py`` from timm's source distribution (1.0.31):

    test_model_forward                  (+ grad-checkpointing gives the same output)
    test_model_backward                 (every parameter gets a gradient)
    test_model_default_cfgs             (the "standard" variant: our names do not match
                                         timm's NON_STD_FILTERS, so timm runs this one;
                                         config metadata, NHWC feature grid == pool_size,
                                         reset_classifier, num_classes=0 / global_pool='',
                                         meta-device creation, API contract helpers)
    test_model_forward_features         (features_only, channels / reductions)
    test_model_forward_intermediates_features, test_model_forward_intermediates
    test_prune_intermediate_layers_params_used
    test_model_forward_fx, test_model_backward_fx
    test_model_forward_torchscript      (+ the scripted model gives the eager outputs)
    test_model_forward_fx_torchscript   (fx-traced, then scripted)

Beyond timm's file: ``test_model_non_square_input`` (H != W, multiples of the patch: the
2-D mixer reads the grid's width from the image) on one 1-D and one 2-D model.

Sizes: timm's helper ``_get_input_size`` shrinks the default 224 px input to the cfg's
``min_input_size`` (112 px, a multiple of the patch); we use the same rule, and build the
models with ``depth=2`` so the whole file stays fast on 2 CPU cores. Config checks run on
the full models on the meta device, as timm does.

To run timm's real file on these models (needs timm's sdist: ``pip download timm==<ver>
--no-binary :all: --no-deps``, unpack it), set ``TIMM_TESTS_DIR`` to its ``tests`` folder;
``test_timm_source_suite`` then runs it with ``-p hgrn_vision -k hgrn_``: every test it
selects must pass, none skipped (24 tests with timm 1.0.31).
"""
import copy
import fnmatch
import math
import os
import re
import subprocess
import sys
import warnings

import pytest
import torch

import timm
import hgrn_vision  # noqa: F401
from timm import create_model, list_models, set_scriptable
from timm.layers import get_channel_dim, get_spatial_dim
from timm.models import get_notrace_functions, get_notrace_modules

MODELS = list_models('hgrn*')
# The 2-D models (hgru2d mixer) differ from each other in width only: the costlier tests
# (scripting, fx, intermediates) and those the suite runs on one model (MODELS[-1:]) take
# one of them; the quick ones take both.
MODELS_2D = [m for m in MODELS if m.startswith('hgrn2d_')]
ONE_2D = 'hgrn2d_deit_tiny'
HEAVY = [m for m in MODELS if m not in MODELS_2D] + [ONE_2D]
ONE_EACH = MODELS[-1:] + [ONE_2D]
FAST = dict(depth=2, mixer_backend='torch')
TARGET_FWD, TARGET_BWD, TARGET_FEAT, TARGET_FX, TARGET_JIT = 384, 128, 96, 128, 128


def _input_size(model_or_name, target=None):
    """timm's rule: fixed size wins; else shrink to min_input_size (or to target)."""
    if isinstance(model_or_name, str):
        cfg = timm.models.get_pretrained_cfg(model_or_name).to_dict()
    else:
        cfg = model_or_name.default_cfg
    size = cfg['input_size']
    if cfg.get('fixed_input_size'):
        return size
    if target and max(size) > target:
        return cfg.get('min_input_size') or tuple(min(s, target) for s in size)
    return size


def test_models_registered():
    assert MODELS == ['hgrn2d_deit_small', 'hgrn2d_deit_tiny',
                      'hgrn_deit_base', 'hgrn_deit_small', 'hgrn_deit_tiny']
    assert set(MODELS) <= set(list_models('hgrn*', name_matches_cfg=True))
    assert not list_models('hgrn*', pretrained=True)  # no weights ship: load test not applicable
    assert not any(fnmatch.fnmatch(m, f) for m in MODELS for f in ('vit_*', 'deit*'))  # -> "std" tests


@pytest.mark.parametrize('model_name', MODELS)
def test_model_forward(model_name):
    model = create_model(model_name, **FAST).eval()
    x = torch.randn(1, *_input_size(model, TARGET_FWD))
    out = model(x)
    assert out.shape[0] == 1 and not torch.isnan(out).any()
    model.set_grad_checkpointing()
    torch.testing.assert_close(model(x), out, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('model_name', MODELS)
def test_model_backward(model_name):
    size = _input_size(model_name, TARGET_BWD)
    assert size == (3, 112, 112)
    model = create_model(model_name, num_classes=42, **FAST).train()
    out = model(torch.randn(2, *size))
    out.mean().backward()
    for n, p in model.named_parameters():
        assert p.grad is not None, f'No gradient for {n}'
    assert out.shape[-1] == 42 and not torch.isnan(out).any()


def _api_contract(model, model_name):
    from timm.models._manipulate import group_parameters
    import inspect
    with pytest.raises(TypeError):
        create_model(model_name, device='meta', not_a_model_arg=1)
    assert inspect.signature(model.reset_classifier).parameters['global_pool'].default is None
    groups = group_parameters(model, model.group_matcher(coarse=False), reverse=True)
    assert len(set(groups.values())) > 1
    names = [n for n, _ in model.named_parameters()]
    for pattern in model.no_weight_decay():
        assert any(fnmatch.fnmatch(n, pattern) for n in names), pattern


@pytest.mark.parametrize('model_name', MODELS)
def test_model_default_cfgs(model_name):
    with torch.device('meta'):
        model = create_model(model_name, device='meta', dtype=torch.float32).eval()
    _api_contract(model, model_name)
    assert model.num_classes >= 0 and model.num_features > 0 and model.head_hidden_size > 0
    state_dict = model.state_dict()
    cfg = model.default_cfg
    assert model.in_chans == cfg['input_size'][0]
    pool_size, input_size = cfg['pool_size'], cfg['input_size']
    fmt = getattr(model, 'output_fmt', 'NCHW')
    spatial, feat = get_spatial_dim(fmt), get_channel_dim(fmt)
    assert len(spatial) == 2
    x = torch.randn(1, *input_size, device='meta')

    out = model.forward_features(x)
    pre = model.forward_head(out, pre_logits=True)
    assert (out.shape[spatial[0]], out.shape[spatial[1]]) == tuple(pool_size)
    assert out.shape[feat] == model.num_features
    assert pre.shape[1] == model.head_hidden_size

    model.reset_classifier(0)
    assert model.num_classes == 0
    out = model(x)
    assert out.ndim == 2 and out.shape == pre.shape
    model.reset_classifier(0, '')
    out = model(x)
    assert out.ndim == 4 and (out.shape[spatial[0]], out.shape[spatial[1]]) == tuple(pool_size)

    out = create_model(model_name, num_classes=0, device='meta', dtype=torch.float32).eval()(x)
    assert out.shape == pre.shape
    out = create_model(model_name, num_classes=0, global_pool='', device='meta', dtype=torch.float32).eval()(x)
    assert out.ndim == 4 and (out.shape[spatial[0]], out.shape[spatial[1]]) == tuple(pool_size)

    for c in (cfg['classifier'],):
        assert c + '.weight' in state_dict
    assert cfg['first_conv'] + '.weight' in state_dict

    # reset_classifier keeps the parent's device / dtype and train mode
    model.to(device='meta', dtype=torch.float64)
    model.reset_classifier(0)
    model.reset_classifier(2)
    assert all(p.device.type == 'meta' and p.dtype == torch.float64 for p in model.head.parameters())
    # create_model(device=...) places every tensor; frozen params stay frozen through resets
    model = create_model(model_name, device='meta', dtype=torch.float32)
    assert all(t.device.type == 'meta' for t in [*model.parameters(), *model.buffers()])
    model.requires_grad_(False)
    model.reset_classifier(0)
    model.reset_classifier(0, '')
    assert not [n for n, p in model.named_parameters() if p.requires_grad]


@pytest.mark.parametrize('model_name', ONE_EACH)
def test_model_dtype_change_after_forward(model_name):
    model = create_model(model_name, **FAST).eval()
    x = torch.randn(1, 3, 28, 28)
    model(x)
    model.to(torch.bfloat16)
    assert model(x.to(torch.bfloat16)).dtype == torch.bfloat16


@pytest.mark.parametrize('model_name', MODELS)
def test_model_forward_features(model_name):
    model = create_model(model_name, features_only=True, depth=3, mixer_backend='torch').eval()
    channels, reductions = model.feature_info.channels(), model.feature_info.reduction()
    assert len(channels) >= 3  # default out_indices=3: the last three blocks
    size = _input_size(model, TARGET_FEAT)
    outs = model(torch.randn(1, *size))
    assert len(outs) == len(channels)
    fmt = getattr(model, 'output_fmt', 'NCHW')
    feat, spatial = get_channel_dim(fmt), get_spatial_dim(fmt)
    for c, r, o in zip(channels, reductions, outs):
        assert o.shape[feat] == c and o.shape[0] == 1 and not torch.isnan(o).any()
        for ax, s in zip(spatial, size[-2:]):
            assert s / (2 * r) < o.shape[ax] <= math.ceil(s / r) + 1
    with torch.device('meta'):
        full = create_model(model_name, features_only=True, device='meta')
    assert len(full.feature_info.channels()) >= 3


@pytest.mark.parametrize('model_name', HEAVY)
def test_model_forward_intermediates(model_name):
    model = create_model(model_name, depth=3, mixer_backend='torch').eval()
    info = timm.models.FeatureInfo(model.feature_info, len(model.feature_info))
    assert len(info.channels()) >= 3
    size = _input_size(model, TARGET_FEAT)
    x = torch.randn(1, *size)
    output, inter = model.forward_intermediates(x, output_fmt='NCHW')
    assert len(inter) == len(info.channels())
    for c, r, o in zip(info.channels(), info.reduction(), inter):
        assert o.shape[1] == c and o.shape[2] <= math.ceil(size[1] / r) + 1 and not torch.isnan(o).any()
    torch.testing.assert_close(output, model.forward_features(x), rtol=1e-5, atol=1e-8)
    model.set_grad_checkpointing()
    torch.testing.assert_close(model.forward_intermediates(x)[0], output, rtol=1e-4, atol=1e-5)

    getter = create_model(model_name, depth=3, features_only=True, feature_cls='getter').eval()
    outs = getter(x)
    assert [o.shape[1] for o in outs] == getter.feature_info.channels()


@pytest.mark.parametrize('model_name', ONE_EACH)
def test_prune_intermediate_layers_params_used(model_name):
    model = create_model(model_name, drop_rate=0.5, depth=3, mixer_backend='torch')
    x = torch.randn(2, 3, 28, 28)
    n = len(model.feature_info)
    for indices, prune_norm in (([0], False), ([n - 1], False), (list(range(n)), True)):
        pruned = copy.deepcopy(model).train()
        take = pruned.prune_intermediate_layers(indices, prune_norm=prune_norm)
        feats = pruned.forward_intermediates(x, indices=take, norm=not prune_norm, intermediates_only=True)
        sum(f.sum() for f in feats).backward()
        assert not [k for k, p in pruned.named_parameters() if p.grad is None]
        pruned = copy.deepcopy(model).eval()
        pruned.prune_intermediate_layers(indices, prune_norm=prune_norm)
        with torch.no_grad():
            assert torch.equal(pruned(x), pruned(x))


def _fx_model(model, train=False):
    from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names
    kw = {'leaf_modules': list(get_notrace_modules()), 'autowrap_functions': list(get_notrace_functions())}
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=kw)
    return create_feature_extractor(model, train_return_nodes=[train_nodes[-1]],
                                    eval_return_nodes=[eval_nodes[-1]], tracer_kwargs=kw)


@pytest.mark.parametrize('model_name', HEAVY)
def test_model_forward_fx(model_name):
    pytest.importorskip('torchvision')
    model = create_model(model_name, **FAST).eval()
    x = torch.randn(1, *_input_size(model, TARGET_FX))
    with torch.inference_mode():
        out = model(x)
        fx_out = torch.cat(tuple(_fx_model(model)(x).values()))
    torch.testing.assert_close(fx_out, out, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('model_name', ONE_EACH)
def test_model_backward_fx(model_name):
    pytest.importorskip('torchvision')
    model = create_model(model_name, num_classes=42, **FAST).train()
    n_params = sum(p.numel() for p in model.parameters())
    fx = _fx_model(model, train=True)
    out = torch.cat(tuple(fx(torch.randn(2, *_input_size(model_name, TARGET_FX))).values()))
    out.mean().backward()
    assert sum(p.grad.numel() for p in fx.parameters() if p.grad is not None) == n_params
    assert out.shape[-1] == 42


def _script(module):
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', FutureWarning)  # torch.jit.script is deprecated
        return torch.jit.script(module)


@pytest.mark.parametrize('model_name', HEAVY)
def test_model_forward_torchscript(model_name):
    size = _input_size(model_name, TARGET_JIT)
    assert size == (3, 112, 112)
    with set_scriptable(True):
        model = create_model(model_name, **FAST)
    model.eval()
    scripted = _script(model)
    x = torch.randn(1, *size)
    with torch.no_grad():
        out = scripted(x)
        assert out.shape[0] == 1 and not torch.isnan(out).any()
        torch.testing.assert_close(out, model(x), rtol=1e-5, atol=1e-6)  # beyond timm's test


@pytest.mark.parametrize('model_name', HEAVY)
def test_model_forward_fx_torchscript(model_name):
    pytest.importorskip('torchvision')
    with set_scriptable(True):
        model = create_model(model_name, **FAST)
    model.eval()
    x = torch.randn(1, *_input_size(model_name, TARGET_JIT))
    scripted = _script(_fx_model(model))
    with torch.inference_mode():
        out = torch.cat(tuple(scripted(x).values()))
        torch.testing.assert_close(out, model(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('model_name', ['hgrn_deit_tiny', ONE_2D])
def test_model_non_square_input(model_name):
    """112 x 84 px (8 x 6 patches): features, intermediates, the scripted and the fx-traced
    model all see the 8 x 6 grid and agree with eager."""
    pytest.importorskip('torchvision')
    size = (3, 112, 84)
    x = torch.randn(1, *size)
    torch.manual_seed(0)
    small = dict(depth=3, embed_dim=64, mixer_backend='torch')
    with set_scriptable(True):
        model = create_model(model_name, **small)
    model.eval()
    with torch.no_grad():
        out = model(x)
        feats = model.forward_features(x)
        assert feats.shape == (1, 8, 6, model.num_features)
        final, inter = model.forward_intermediates(x)
        assert [t.shape for t in inter] == [(1, model.num_features, 8, 6)] * 3
        torch.testing.assert_close(final, feats)
        torch.testing.assert_close(inter[-1], feats.permute(0, 3, 1, 2))
        torch.testing.assert_close(_script(model)(x), out, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(torch.cat(tuple(_fx_model(model)(x).values())), out,
                                   rtol=1e-4, atol=1e-5)
    torch.manual_seed(0)  # the same weights as model
    getter = create_model(model_name, features_only=True, **small).eval()
    with torch.no_grad():
        outs = getter(x)
    assert [o.shape for o in outs] == [(1, model.num_features, 8, 6)] * 3
    torch.testing.assert_close(outs[-1], inter[-1])


@pytest.mark.skipif(not os.environ.get('TIMM_TESTS_DIR'), reason='set TIMM_TESTS_DIR to timm sdist tests/')
def test_timm_source_suite():
    """Run timm's real tests/test_models.py restricted to the hgrn models."""
    tests_dir = os.environ['TIMM_TESTS_DIR']
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), env_pp])
               if (env_pp := os.environ.get('PYTHONPATH')) else os.getcwd())
    proc = subprocess.run(
        [sys.executable, '-m', 'pytest', '-q', '-p', 'hgrn_vision', '-p', 'no:cacheprovider',
         '-W', 'ignore', os.path.join(tests_dir, 'test_models.py'), '-k', 'hgrn_'],
        env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-5000:]
    summary = proc.stdout.strip().splitlines()[-1]
    assert re.search(r'\b\d+ passed\b', summary) and not re.search(
        r'skipped|failed|error|xfail', summary), summary
