"""TorchScript and torch.export of the hgrn models and mixers.

``torch.jit.script`` compiles every hgrn model: under scripting the HGRU calls its two ops
directly (``torch.ops.hgrn.hgru`` or, 2-D, ``torch.ops.hgrn.hgru2d``, and
``torch.ops.hgrn.norm_gate``; backend ``"auto"`` resolved by the ops from the tensors'
device), so the scripted model gives the eager outputs and gradients. Bad inputs keep their messages (TorchScript wraps them in
``torch.jit.Error``, "... builtins.ValueError: <message>"). ``torch.export`` keeps each op
as one node per block. Small models (width 32, depth 2, 56 px) keep this file fast.
"""
import collections
import io
import re
import warnings

import pytest
import torch

import hgrn_vision  # noqa: F401  (registers the models)
from hgrn_core import HGRU, HGRU2d, hgru, norm_gate
from hgrn_core.backends import ENV_VAR
from timm import create_model

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:FutureWarning")

TINY = dict(embed_dim=32, depth=2, img_size=56, num_classes=5)


def _model(mixer_backend="auto", name="hgrn_deit_tiny", **kw):
    torch.manual_seed(0)
    return create_model(name, mixer_backend=mixer_backend, **dict(TINY, **kw)).eval()


def _script(module):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script is deprecated
        return torch.jit.script(module)


def _grads(module):
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def _check_same_grads(eager, scripted, x, *args):
    eager.train()
    scripted.train()
    eager(x, *args).square().mean().backward()
    scripted(x, *args).square().mean().backward()
    ge, gs = _grads(eager), _grads(scripted)
    assert ge.keys() == gs.keys() == {n for n, p in eager.named_parameters()}
    for n in ge:
        torch.testing.assert_close(gs[n], ge[n], rtol=1e-5, atol=1e-6, msg=n)


# ----------------------------------------------------------------------- scripted models
@pytest.mark.parametrize("kw", [dict(), dict(mixer="attention"), dict(mixer_backend="reference"),
                                dict(name="hgrn2d_deit_tiny"),
                                dict(name="hgrn2d_deit_tiny", mixer_backend="reference")],
                         ids=["hgru-auto", "attention", "hgru-reference", "hgru2d-auto",
                              "hgru2d-reference"])
def test_scripted_model_equals_eager(kw):
    model = _model(**kw)
    scripted = _script(model)
    x = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        ref = model(x)
        torch.testing.assert_close(scripted(x), ref, rtol=0, atol=0)
        # another image size (any multiple of the patch; H != W: the 2-D grid's width
        # comes from the image at run time) and features
        x2 = torch.randn(1, 3, 28, 42)
        torch.testing.assert_close(scripted(x2), model(x2), rtol=0, atol=0)
        torch.testing.assert_close(scripted.forward_features(x), model.forward_features(x))
    # the scripted model trains: the same gradients (the reference loop: the torch backward)
    _check_same_grads(model, scripted, x)


def test_scripted_model_saves_and_loads():
    model = _model()
    buf = io.BytesIO()
    torch.jit.save(_script(model), buf)
    buf.seek(0)
    loaded = torch.jit.load(buf)
    x = torch.randn(1, 3, 56, 56)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


@pytest.mark.parametrize("kw", [dict(), dict(causal=True), dict(complex_valued=False),
                                dict(causal=True, complex_valued=False)],
                         ids=["bidirectional", "causal", "real", "causal-real"])
def test_scripted_hgru_mixer_equals_eager(kw):
    torch.manual_seed(0)
    mixer = HGRU(16, **kw).eval()
    scripted = _script(mixer)
    x = torch.randn(2, 9, 16)
    lb = torch.rand(16) * 0.9
    with torch.no_grad():
        torch.testing.assert_close(scripted(x, lb), mixer(x, lb), rtol=0, atol=0)
        torch.testing.assert_close(scripted(x), mixer(x), rtol=0, atol=0)
    _check_same_grads(mixer, scripted, x, lb)


@pytest.mark.parametrize("kw", [dict(), dict(causal=True), dict(complex_valued=False)],
                         ids=["bidirectional", "causal", "real"])
def test_scripted_hgru2d_mixer_equals_eager(kw):
    """The scripted HGRU2d calls hgrn::hgru2d with the grid width it is given."""
    torch.manual_seed(0)
    mixer = HGRU2d(16, **kw).eval()
    scripted = _script(mixer)
    x = torch.randn(2, 12, 16)
    lb = torch.rand(16) * 0.9
    with torch.no_grad():
        for width in (3, 4, 12, 1):  # 4 x 3, 3 x 4, one row, one column
            torch.testing.assert_close(scripted(x, lb, width), mixer(x, lb, width), rtol=0, atol=0)
        assert not torch.allclose(mixer(x, lb, 3), mixer(x, lb, 4))  # the width matters
    _check_same_grads(mixer, scripted, x, lb, 3)
    msg = _same_error(lambda: mixer(x, lb, 5), lambda: scripted(x, lb, 5))
    assert "grid_width" in msg and "12 tokens" in msg


def test_ops_resolve_auto_at_run_time(monkeypatch):
    """What the scripted path relies on: the ops take "auto" (and "reference", whose
    backward inside the op is the torch backend's)."""
    torch.manual_seed(0)
    proj = torch.randn(2, 7, 12, dtype=torch.float64, requires_grad=True)
    lb = torch.rand(4, dtype=torch.float64)
    tf, tr = torch.randn(4, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    ref = hgru(proj, lb, tf, tr, backend="torch")
    (ref_grad,) = torch.autograd.grad(ref.sum(), proj)
    for name, env in (("auto", None), ("auto", "reference"), ("reference", None)):
        if env:
            monkeypatch.setenv(ENV_VAR, env)
        h, _ = torch.ops.hgrn.hgru(proj, lb, tf, tr, None, "both", name)
        torch.testing.assert_close(h, ref)
        (g,) = torch.autograd.grad(h.sum(), proj)
        torch.testing.assert_close(g, ref_grad)
    monkeypatch.delenv(ENV_VAR)
    h, gate = torch.randn(2, 7, 8), torch.randn(2, 7, 8)
    w, b = torch.randn(8), torch.randn(8)
    y, _, _ = torch.ops.hgrn.norm_gate(h, gate, w, b, 1e-5, "auto")
    torch.testing.assert_close(y, norm_gate(h, gate, w, b, 1e-5, backend="torch"))


# ----------------------------------------------------------------- readable errors scripted
def _same_error(eager_fn, scripted_fn):
    """The scripted call raises TorchScript's wrapper of the eager ValueError, same text."""
    with pytest.raises(ValueError) as eager_err:
        eager_fn()
    with pytest.raises(torch.jit.Error) as script_err:
        scripted_fn()
    text = str(script_err.value)
    assert text.rstrip().endswith("builtins.ValueError: " + str(eager_err.value)), text
    return str(eager_err.value)


def test_scripted_errors_are_readable():
    mixer = HGRU(16).eval()
    scripted = _script(mixer)
    msg = _same_error(lambda: mixer(torch.randn(2, 9, 15)), lambda: scripted(torch.randn(2, 9, 15)))
    assert msg == "HGRU was built for 16 channels; got tokens of shape (2, 9, 15)"
    msg = _same_error(lambda: mixer(torch.randn(9, 16)), lambda: scripted(torch.randn(9, 16)))
    assert msg == "HGRU expects tokens of shape (B, N, 16); got a 2-D tensor of shape (9, 16)"
    msg = _same_error(lambda: mixer(torch.randn(16)), lambda: scripted(torch.randn(16)))
    assert msg.endswith("of shape (16,)")

    model = _model()
    scripted = _script(model)
    for bad, pattern in ((torch.randn(1, 3, 56, 50), r"image size 56x50 is not a multiple of the "
                                                     r"patch size 14x14"),
                         (torch.randn(1, 1, 56, 56), r"in_chans=3 but got an image with 1 channels"),
                         (torch.randn(3, 56, 56), r"expects images of shape \(B, C, H, W\)")):
        msg = _same_error(lambda: model(bad), lambda: scripted(bad))
        assert re.search(pattern, msg), msg


# ------------------------------------------------------------------- export, trace, counts
@pytest.mark.parametrize("mixer", ["hgru", "attention", "hgru2d"])
def test_export_keeps_one_op_per_block(mixer):
    model = _model(mixer=mixer)
    x = torch.randn(2, 3, 56, 42)
    ep = torch.export.export(model, (x,))
    counts = collections.Counter(str(n.target) for n in ep.graph.nodes if n.op == "call_function")
    scan = "hgrn.hgru2d.default" if mixer == "hgru2d" else "hgrn.hgru.default"
    per_block = 0 if mixer == "attention" else TINY["depth"]
    assert counts[scan] == per_block
    assert counts["hgrn.norm_gate.default"] == per_block
    assert not [k for k in counts if k.startswith("hgrn.") and k not in (
        scan, "hgrn.norm_gate.default")]
    with torch.no_grad():
        torch.testing.assert_close(ep.module()(x), model(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", [
    "hgrn_deit_tiny",
    "hgrn2d_deit_tiny",
])
def test_export_with_dynamic_image_size(name):
    """torch.export (non-strict, the default) with a dynamic batch, height and width: the
    program is right at other sizes; for the 2-D model the grid width reaches
    hgrn::hgru2d as a SymInt."""
    from hgrn_core.onnx_export import image_dynamic_shapes
    model = _model(name=name)
    ep = torch.export.export(model, (torch.randn(2, 3, 56, 42),),
                             dynamic_shapes=image_dynamic_shapes(model))
    with torch.no_grad():
        for shape in ((2, 3, 56, 42), (1, 3, 28, 70), (3, 3, 70, 28)):
            x = torch.randn(*shape)
            torch.testing.assert_close(ep.module()(x), model(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["hgrn_deit_tiny", "hgrn2d_deit_tiny"])
def test_trace_equals_eager(name):
    model = _model(name=name)
    x = torch.randn(2, 3, 56, 56)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, x)
        # 1-D: the same op, bitwise. 2-D: the traced mixer adds the rows' and the columns'
        # h of two hgrn::hgru calls, the fused op adds each scan onto one output: the same
        # sum in another order (an ulp or so)
        exact = dict(rtol=0, atol=0) if name == "hgrn_deit_tiny" else dict(rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(traced(x), model(x), **exact)
        # at another size too: traced, HGRU2d runs hgrn::hgru on rows and columns reshaped
        # with traced sizes (the op's int grid width would be recorded as a constant)
        x2 = torch.randn(1, 3, 28, 70)
        torch.testing.assert_close(traced(x2), model(x2), rtol=1e-5, atol=1e-6)
