"""ONNX export: the translations of hgrn::hgru / hgrn::hgru2d / hgrn::norm_gate
(hgrn_core.onnx_export) run with onnxruntime against the ops and the eager models (1-D and
2-D); the hgrn-export command line.

Tolerance: fp32, CPU, relative error max |onnx - torch| / max |torch| <= 1e-4 (the
translations reach ~1e-6 here)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import hgrn_core.hgru_op  # noqa: F401  registers torch.ops.hgrn.*
import hgrn_core.hgru2d_op  # noqa: F401
import hgrn_core.norm_gate_op  # noqa: F401

pytestmark = pytest.mark.filterwarnings("ignore:# The axis name:UserWarning")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = 1e-4


def need_onnx():
    for name in ("onnx", "onnxscript"):
        pytest.importorskip(name)
    return pytest.importorskip("onnxruntime")


def relative(out, ref) -> float:
    ref = np.asarray(ref)
    scale = np.abs(ref).max()
    err = np.abs(np.asarray(out) - ref).max()
    return float(err / scale) if scale > 0 else float(err)


def session(ort, path):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def export(module, args, dynamic_shapes, path):
    from hgrn_core.onnx_export import onnx_translation_table
    program = torch.onnx.export(module, args, dynamo=True, dynamic_shapes=dynamic_shapes,
                                custom_translation_table=onnx_translation_table(),
                                verbose=False, report=False)
    program.save(str(path))
    return str(path)


# ------------------------------------------------------------------------- the whole model
TINY = dict(embed_dim=32, depth=2, num_classes=10)


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    """One export of a tiny HGRN-DeiT with a dynamic batch and image size."""
    ort = need_onnx()
    import timm
    import hgrn_vision  # noqa: F401
    from hgrn_core.onnx_export import export_onnx
    torch.manual_seed(0)
    model = timm.create_model("hgrn_deit_tiny", **TINY).eval()
    with torch.no_grad():  # non-trivial lower bounds and phases (init is all ones / fixed)
        model.lower_bound.logits.normal_()
        for blk in model.blocks:
            blk.mixer.theta_forward.uniform_(-3, 3)
            blk.mixer.theta_reverse.uniform_(-3, 3)
    path = str(tmp_path_factory.mktemp("onnx") / "tiny.onnx")
    export_onnx(model, torch.randn(2, 3, 56, 70), path)
    return model, path, session(ort, path)


@pytest.mark.parametrize("batch, height, width", [
    (2, 56, 70),    # the exported size and batch
    (3, 98, 42),    # another batch and size (N = 21, odd)
    (1, 28, 28),    # batch 1, N = 4
])
def test_exported_model_matches_eager(tiny_export, batch, height, width):
    model, _, sess = tiny_export
    x = torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(batch))
    with torch.no_grad():
        ref = model(x).numpy()
    out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    assert out.shape == ref.shape == (batch, TINY["num_classes"])
    assert relative(out, ref) <= TOL


def test_exported_graph_is_standard_onnx_with_dynamic_axes(tiny_export):
    import onnx
    _, path, _ = tiny_export
    proto = onnx.load(path)
    onnx.checker.check_model(proto, full_check=True)
    domains = {n.domain for n in proto.graph.node}
    assert domains <= {"", "ai.onnx"}, domains           # no custom (hgrn) ops left
    ops = {n.op_type for n in proto.graph.node}
    assert {"Scan", "CumSum", "LayerNormalization"} <= ops
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert [bool(d.dim_param) for d in dims] == [True, False, True, True]   # B, 3, H, W
    assert dims[1].dim_value == 3


# ------------------------------------------------------------------ the 2-D model (hgru2d)
def randomize(model):
    """Non-trivial lower bounds and phases (the init is all ones / fixed)."""
    with torch.no_grad():
        model.lower_bound.logits.normal_()
        for blk in model.blocks:
            blk.mixer.theta_forward.uniform_(-3, 3)
            blk.mixer.theta_reverse.uniform_(-3, 3)
    return model


@pytest.fixture(scope="module")
def tiny2d():
    import timm
    import hgrn_vision  # noqa: F401
    torch.manual_seed(2)
    return randomize(timm.create_model("hgrn2d_deit_tiny", **TINY).eval())


# H != W everywhere: a grid read with its sides swapped (rows for columns) cannot pass
CASES_2D = [(2, 56, 70), (3, 98, 42), (1, 28, 42)]


def test_2d_model_export_matches_eager(tmp_path, tiny2d):
    """torch.export based (hgrn-export's route): dynamic batch and image size, the grid's
    width a SymInt reaching the hgru2d translation; standard ONNX only."""
    ort = need_onnx()
    import onnx
    from hgrn_core.onnx_export import export_onnx
    path = str(tmp_path / "tiny2d.onnx")
    export_onnx(tiny2d, torch.randn(2, 3, 56, 70), path)
    proto = onnx.load(path)
    onnx.checker.check_model(proto, full_check=True)
    assert {n.domain for n in proto.graph.node} <= {"", "ai.onnx"}
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert [bool(d.dim_param) for d in dims] == [True, False, True, True]
    check_against_eager(ort, tiny2d, path, CASES_2D)


def test_2d_model_torchscript_exporter_dynamic_size(tmp_path, tiny2d):
    """timm's call (the TorchScript exporter, dynamic batch, height and width): traced, the
    mixer runs the 1-D op on rows and columns reshaped with traced sizes, so the exported
    graph is right at widths other than the traced one."""
    ort = need_onnx()
    import onnx
    path = str(tmp_path / "tiny2d_ts.onnx")
    torch.onnx.export(
        tiny2d, torch.randn(1, 3, 56, 42), path, input_names=["input0"],
        output_names=["output0"], opset_version=None, dynamo=False,
        dynamic_axes={"input0": {0: "batch", 2: "height", 3: "width"}, "output0": {0: "batch"}})
    onnx.checker.check_model(path, full_check=True)
    check_against_eager(ort, tiny2d, path, [(1, 56, 42)] + CASES_2D)


# ------------------------------------------------------------ hgrn::hgru2d, translated alone
class Hgru2dOp(torch.nn.Module):
    """``torch.ops.hgrn.hgru2d`` (reference backend) on tokens forming a grid as wide as
    ``width`` is long: a SymInt exported (torch.export), a value read from a shape at run
    time scripted (the TorchScript exporter)."""

    def __init__(self, direction: str, complex_: bool, lower_bound: bool):
        super().__init__()
        self.direction, self.complex_, self.lb = direction, complex_, lower_bound

    def forward(self, proj, lb, theta_f, theta_r, width):
        c = self.complex_
        return torch.ops.hgrn.hgru2d(
            proj, lb if self.lb else None, theta_f if c else None,
            theta_r if c and self.direction == "both" else None, width.shape[0],
            self.direction, "reference")


def hgru2d_inputs(B, H, Wg, d, complex_, gen):
    proj = hgru_inputs(B, H * Wg, d, complex_, gen)[0]
    return (proj, torch.rand(d, generator=gen) * 0.9, torch.randn(d, generator=gen) * 2,
            torch.randn(d, generator=gen) * 2, torch.zeros(Wg))


@pytest.mark.parametrize("exporter, direction, complex_, lower_bound", [
    ("dynamo", "both", True, True),        # the hgrn2d_deit mixer (the authors' BiHgru2d)
    ("dynamo", "forward", True, False),    # their Hgru2d
    ("dynamo", "both", False, True),       # their HgruReal2d
    ("torchscript", "both", True, True),
    ("torchscript", "forward", False, True),
])
def test_hgru2d_translation_matches_op(tmp_path, exporter, direction, complex_, lower_bound):
    ort = need_onnx()
    d = 5
    module = Hgru2dOp(direction, complex_, lower_bound).eval()
    gen = torch.Generator().manual_seed(3)
    example = hgru2d_inputs(2, 3, 4, d, complex_, gen)
    path = str(tmp_path / "hgru2d.onnx")
    names = ["proj", "lb", "theta_f", "theta_r", "width"]
    if exporter == "dynamo":
        from torch.export import Dim
        batch, tokens, width = Dim("batch"), Dim("tokens"), Dim("width")
        export(module, example, ({0: batch, 1: tokens}, None, None, None, {0: width}), path)
    else:
        torch.onnx.export(torch.jit.script(module), example, path, input_names=names,
                          dynamic_axes={"proj": {0: "batch", 1: "tokens"}, "width": {0: "w"}},
                          dynamo=False)
    sess = session(ort, path)
    inputs = [i.name for i in sess.get_inputs()]
    # the exported grid, its transpose, a single row / column, one token, a larger grid
    for B, H, Wg in [(2, 3, 4), (1, 4, 3), (3, 1, 6), (2, 7, 1), (1, 1, 1), (2, 9, 11)]:
        args = hgru2d_inputs(B, H, Wg, d, complex_, gen)
        ref = module(*args)
        feed = dict(zip(names, (a.numpy() for a in args)))
        (h,) = sess.run(None, {n: feed[n] for n in inputs})
        assert h.shape == tuple(ref.shape)
        assert relative(h, ref) <= TOL, (B, H, Wg)


# -------------------------------------------------------------- hgrn::hgru, translated alone
class HguOp(torch.nn.Module):
    """``torch.ops.hgrn.hgru`` with the reference backend (the sequential loop)."""

    def __init__(self, direction: str, complex_: bool, lower_bound: bool, h0: bool):
        super().__init__()
        self.direction, self.complex_, self.lb, self.h0 = direction, complex_, lower_bound, h0

    def forward(self, proj, lb, theta_f, theta_r, h0):
        c = self.complex_
        return torch.ops.hgrn.hgru.default(
            proj, lb if self.lb else None,
            theta_f if c and self.direction != "reverse" else None,
            theta_r if c and self.direction != "forward" else None,
            h0 if self.h0 else None, self.direction, "reference")


def hgru_inputs(B, N, d, complex_, gen, extreme=False):
    W = 2 * d if complex_ else d
    proj = torch.randn(B, N, W + d, generator=gen) * 3
    if extreme:  # decays of exactly 0 and 1 in fp32 (sigmoid(-200) = 0: log lam = -inf)
        pick = torch.rand(B, N, d, generator=gen)
        proj[..., W:] = torch.where(pick < 0.3, -200.0, torch.where(pick < 0.6, 200.0, 0.5))
    return (proj, torch.rand(d, generator=gen) * 0.9, torch.randn(d, generator=gen) * 2,
            torch.randn(d, generator=gen) * 2, torch.randn(B, W, generator=gen))


@pytest.mark.parametrize("direction, complex_, lower_bound, h0", [
    ("both", True, True, False),       # the HGRN-DeiT mixer
    ("both", False, True, False),
    ("forward", True, True, True),     # causal, continuing from a state
    ("forward", False, False, True),
    ("reverse", True, False, True),
    ("reverse", False, True, False),
])
def test_hgru_translation_matches_op(tmp_path, direction, complex_, lower_bound, h0):
    ort = need_onnx()
    from torch.export import Dim
    d = 6
    module = HguOp(direction, complex_, lower_bound, h0).eval()
    gen = torch.Generator().manual_seed(0)
    batch, tokens = Dim("batch"), Dim("tokens")
    path = export(module, hgru_inputs(2, 13, d, complex_, gen),
                  ({0: batch, 1: tokens}, None, None, None, {0: batch}), tmp_path / "hgru.onnx")
    sess = session(ort, path)
    names = [i.name for i in sess.get_inputs()]
    # N = 13 exported (odd: chunks of 8, padded), 16 (whole chunks), 1, 97; batch 1 .. 3
    for B, N, extreme in [(2, 13, False), (3, 16, False), (1, 1, False), (2, 97, True)]:
        args = hgru_inputs(B, N, d, complex_, gen, extreme)
        h_ref, hN_ref = module(*args)
        feed = dict(zip(["proj", "lb", "theta_f", "theta_r", "h0"], (a.numpy() for a in args)))
        h, hN = sess.run(None, {n: feed[n] for n in names})
        assert h.shape == tuple(h_ref.shape) and hN.shape == tuple(hN_ref.shape)
        assert relative(h, h_ref) <= TOL, (B, N)
        assert relative(hN, hN_ref) <= TOL, (B, N)
        if direction == "both":
            assert not hN.any()          # the op's placeholder: zeros
        else:
            assert np.abs(hN).max() > 0  # a real final state


# --------------------------------------------------------- hgrn::norm_gate, translated alone
class NormGateOp(torch.nn.Module):
    def __init__(self, affine: bool, eps: float):
        super().__init__()
        self.affine, self.eps = affine, eps

    def forward(self, h, gate, weight, bias):
        return torch.ops.hgrn.norm_gate.default(
            h, gate, weight if self.affine else None, bias if self.affine else None,
            self.eps, "torch")


@pytest.mark.parametrize("affine, eps", [(True, 1e-5), (False, 1e-3)])
def test_norm_gate_translation_matches_op(tmp_path, affine, eps):
    ort = need_onnx()
    from torch.export import Dim
    W = 12
    gen = torch.Generator().manual_seed(1)

    def inputs(B, N):
        return (torch.randn(B, N, W, generator=gen) * 2 + 1, torch.randn(B, N, W, generator=gen) * 3,
                torch.randn(W, generator=gen), torch.randn(W, generator=gen))

    module = NormGateOp(affine, eps).eval()
    batch, tokens = Dim("batch"), Dim("tokens")
    path = export(module, inputs(2, 7), ({0: batch, 1: tokens}, {0: batch, 1: tokens}, None, None),
                  tmp_path / "norm_gate.onnx")
    sess = session(ort, path)
    names = [i.name for i in sess.get_inputs()]
    for B, N in [(2, 7), (3, 20)]:
        args = inputs(B, N)
        refs = module(*args)
        feed = dict(zip(["h", "gate", "weight", "bias"], (a.numpy() for a in args)))
        outs = sess.run(None, {n: feed[n] for n in names})
        assert len(outs) == 3
        for out, ref in zip(outs, refs):            # y, mean, rstd
            assert out.shape == tuple(ref.shape)
            assert relative(out, ref) <= TOL


# ---------------------------------------------------------------------- hgrn-export (CLI)
CLI_TINY = ["--model-kwargs", "embed_dim=32", "depth=2", "num_classes=10"]


def test_cli_exports_and_checks_parity(tmp_path, capsys):
    ort = need_onnx()
    import onnx
    from hgrn_tools.export import main
    path = tmp_path / "tiny.onnx"
    rc = main(["hgrn_deit_tiny", "--onnx", str(path), "--img-size", "56", "70",
               "--batch-size", "2", *CLI_TINY])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "exported hgrn_deit_tiny" in out
    lines = [ln for ln in out.splitlines() if ln.strip().startswith("batch ")]
    assert len(lines) == 2, out
    assert lines[0].strip().startswith("batch 2, 56x70 (exported size)")
    assert lines[1].strip().startswith("batch 3, 84x84")   # + 2 patches, + 1 patch
    for ln in lines:
        assert ln.rstrip().endswith("ok")
        rel = float(ln.split("relative ")[1].split()[0].rstrip(","))
        assert 0 <= rel <= TOL
    onnx.checker.check_model(onnx.load(str(path)))
    sess = session(ort, str(path))
    y = sess.run(None, {sess.get_inputs()[0].name: np.zeros((4, 3, 42, 28), np.float32)})[0]
    assert y.shape == (4, 10)


def test_cli_fails_above_tolerance(tmp_path, capsys):
    need_onnx()
    from hgrn_tools.export import main
    rc = main(["hgrn_deit_tiny", "--onnx", str(tmp_path / "t.onnx"), "--img-size", "28",
               "--tolerance", "-1", *CLI_TINY])  # no error is below -1: the check must fail
    captured = capsys.readouterr()
    assert rc == 1
    assert "FAIL" in captured.out and "parity check failed" in captured.err


def test_cli_unknown_model(tmp_path, capsys):
    need_onnx()
    from hgrn_tools.export import main
    rc = main(["hgrn_deit_nonexistent", "--onnx", str(tmp_path / "x.onnx")])
    err = capsys.readouterr().err
    assert rc == 2
    assert "unknown model 'hgrn_deit_nonexistent'" in err and "hgrn_deit_tiny" in err
    assert not (tmp_path / "x.onnx").exists()


def test_package_imports_without_onnx_and_cli_names_the_extra(tmp_path):
    """With onnx / onnxscript / onnxruntime unimportable, the package and the export
    modules still import, and hgrn-export exits 2 naming the extra to install."""
    script = textwrap.dedent(f"""
        import sys
        for name in ("onnx", "onnxscript", "onnxruntime", "onnx_ir"):
            sys.modules[name] = None   # "import onnx" fails, find_spec("onnx") is None
        import hgrn_core, hgrn_vision, hgrn_core.onnx_export
        from hgrn_tools.export import main
        rc = main(["hgrn_deit_tiny", "--onnx", {str(tmp_path / 'x.onnx')!r}])
        sys.exit(10 + rc)
    """)
    res = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 12, res.stderr
    assert "pip install 'hgrn[onnx]'" in res.stderr
    assert "onnx" in res.stderr.split("needs")[1]


# ------------------------------------- plain torch.onnx.export, as timm and its users call it
# importing hgrn_core registers the translations with both exporters (onnx_export.install)
PLAIN = dict(TINY, img_size=56)


@pytest.fixture(scope="module")
def plain_model():
    import timm
    import hgrn_vision  # noqa: F401
    torch.manual_seed(1)
    model = timm.create_model("hgrn_deit_tiny", **PLAIN).eval()
    with torch.no_grad():  # non-trivial lower bounds and phases
        model.lower_bound.logits.normal_()
        for blk in model.blocks:
            blk.mixer.theta_forward.uniform_(-3, 3)
            blk.mixer.theta_reverse.uniform_(-3, 3)
    return model


def check_against_eager(ort, model, path, cases):
    sess = session(ort, path)
    name = sess.get_inputs()[0].name
    for b, h, w in cases:
        x = torch.randn(b, 3, h, w, generator=torch.Generator().manual_seed(h + w + b))
        with torch.no_grad():
            ref = model(x).numpy()
        out = sess.run(None, {name: x.numpy()})[0]
        assert out.shape == ref.shape, (b, h, w)
        assert relative(out, ref) <= TOL, (b, h, w)


@pytest.mark.parametrize("dynamo", [False, True])
def test_plain_torch_onnx_export(tmp_path, plain_model, dynamo):
    """torch.onnx.export(model, (x,), f) with either exporter and no hgrn-specific argument."""
    ort = need_onnx()
    import onnx
    path = str(tmp_path / "plain.onnx")
    x = torch.randn(2, 3, 56, 56)
    torch.onnx.export(plain_model, (x,), path, dynamo=dynamo)
    onnx.checker.check_model(path, full_check=True)
    check_against_eager(ort, plain_model, path, [(2, 56, 56)])


def test_timm_torchscript_call_emulated(tmp_path, plain_model):
    """The exact call of timm.utils.onnx.onnx_export (timm 1.0.31) for onnx_export.py
    --dynamic-size: the TorchScript exporter, dynamic batch, height and width; then its
    checks (full checker, onnxruntime to 3 decimals), and ours at another batch and size."""
    ort = need_onnx()
    import onnx
    path = str(tmp_path / "timm_call.onnx")
    x = torch.randn(1, 3, 56, 56)
    with torch.inference_mode():
        original_out = plain_model(x)
    torch.onnx.export(
        plain_model, x, path,
        training=torch.onnx.TrainingMode.EVAL, export_params=True, verbose=False,
        input_names=["input0"], output_names=["output0"], keep_initializers_as_inputs=None,
        dynamic_axes={"input0": {0: "batch", 2: "height", 3: "width"}, "output0": {0: "batch"}},
        opset_version=None, operator_export_type=torch.onnx.OperatorExportTypes.ONNX,
        dynamo=False)
    onnx.checker.check_model(path, full_check=True)
    sess = session(ort, path)
    onnx_out = sess.run([], {"input0": x.numpy()})[0]
    np.testing.assert_almost_equal(original_out.numpy(), onnx_out, decimal=3)
    check_against_eager(ort, plain_model, path, [(1, 56, 56), (3, 84, 70), (2, 28, 42)])
    proto = onnx.load(path)
    # the hgrn ops are calls of model-local functions (standard operators inside)
    assert {n.domain for n in proto.graph.node} <= {"", "hgrn_onnx"}
    functions = {f.name: f for f in proto.functions}
    assert any(name.startswith("hgru_direction_both") for name in functions), list(functions)
    assert any(name.startswith("norm_gate") for name in functions), list(functions)
    for f in functions.values():
        assert {n.domain for n in f.node} <= {"", "ai.onnx"}
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims] == ["batch", "", "height", "width"]


@pytest.mark.parametrize("use_dynamo", [False, True])
def test_timm_onnx_export_function(tmp_path, plain_model, use_dynamo):
    """timm.utils.onnx.onnx_export, which timm's onnx_export.py calls, with its forward check
    (it raises if onnxruntime differs from torch in the 3rd decimal)."""
    ort = need_onnx()
    from timm.utils.onnx import onnx_export
    path = str(tmp_path / "timm.onnx")
    onnx_export(plain_model, path, check_forward=True, batch_size=1, input_size=(3, 56, 56),
                dynamic_size=True, use_dynamo=use_dynamo)
    check_against_eager(ort, plain_model, path, [(1, 56, 56), (2, 42, 70)])


def timm_script(name: str):
    """``name`` from a pytorch-image-models checkout (TIMM_SCRIPTS_DIR): timm's scripts are
    not in the timm wheel (nor in its sdist)."""
    root = os.environ.get("TIMM_SCRIPTS_DIR")
    path = os.path.join(root, name) if root else None
    if not path or not os.path.isfile(path):
        pytest.skip(f"timm's {name} not available: set TIMM_SCRIPTS_DIR to a "
                    f"pytorch-image-models checkout (git clone "
                    f"https://github.com/huggingface/pytorch-image-models)")
    return path


@pytest.mark.parametrize("dynamic_size", [False, True])
def test_timm_onnx_export_script(tmp_path, dynamic_size):
    """hgrn-timm onnx_export.py OUT --model hgrn_deit_tiny --checkpoint CKPT --check-forward
    [--dynamic-size]: timm's own script, its forward check included."""
    script = timm_script("onnx_export.py")
    ort = need_onnx()
    import timm
    import hgrn_vision  # noqa: F401
    from hgrn_tools.timm_launcher import run_script
    torch.manual_seed(0)
    model = timm.create_model("hgrn_deit_tiny").eval()
    ckpt = str(tmp_path / "tiny.pth")
    torch.save(model.state_dict(), ckpt)
    path = str(tmp_path / "tiny.onnx")
    args = [path, "--model", "hgrn_deit_tiny", "--checkpoint", ckpt, "--check-forward",
            "--img-size", "56"] + (["--dynamic-size"] if dynamic_size else [])
    assert run_script(script, args) == 0
    check_against_eager(ort, model, path, [(1, 56, 56)] + ([(2, 42, 70)] if dynamic_size else []))


def test_torchscript_exporter_below_opset_18_says_so(tmp_path, plain_model):
    need_onnx()
    with pytest.raises(Exception, match="(?s)hgrn::hgru.*18"):
        torch.onnx.export(plain_model, (torch.randn(1, 3, 56, 56),), str(tmp_path / "x.onnx"),
                          dynamo=False, opset_version=17)


def test_registration_failure_warns_with_the_explicit_route():
    from hgrn_core.onnx_export import _register_quietly

    class Broken:
        default_registry = {}

        @staticmethod
        def torch_op(*args, **kwargs):
            raise AttributeError("no torch_op here")

    with pytest.warns(RuntimeWarning) as record:
        _register_quietly(Broken)
    msg = str(record[0].message)
    assert "onnx_translation_table()" in msg and "hgrn-export" in msg


def test_post_import_hook(tmp_path, monkeypatch):
    """install()'s one-shot hook: the callback runs after the module is imported, the module
    keeps its own loader, and the hook leaves sys.meta_path."""
    from hgrn_core.onnx_export import _WhenImported
    (tmp_path / "hgrn_hook_probe.py").write_text("VALUE = 42\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    seen = []
    hook = _WhenImported("hgrn_hook_probe", lambda m: seen.append(m.VALUE))
    sys.meta_path.insert(0, hook)
    try:
        import hgrn_hook_probe
    finally:
        hook.remove()
        sys.modules.pop("hgrn_hook_probe", None)
    assert seen == [42]
    assert hook not in sys.meta_path
    assert not isinstance(hgrn_hook_probe.__loader__, _WhenImported)
    assert not isinstance(hgrn_hook_probe.__spec__.loader, _WhenImported)


def test_import_registers_lazily(tmp_path):
    """Importing hgrn_core imports neither onnx nor onnxscript, registers the TorchScript
    symbolics at once and the torch_lib entries when onnxscript's registry is imported."""
    need_onnx()
    script = textwrap.dedent("""
        import sys
        import hgrn_core
        assert "onnxscript" not in sys.modules and "onnx" not in sys.modules
        from torch.onnx._internal.torchscript_exporter import registration as ts
        assert ts.registry.is_registered_op("hgrn::hgru", 18)
        assert ts.registry.is_registered_op("hgrn::hgru2d", 18)
        assert ts.registry.is_registered_op("hgrn::norm_gate", 20)
        from onnxscript.function_libs.torch_lib import registration
        assert "hgrn::hgru" in registration.default_registry
        assert "hgrn::hgru2d" in registration.default_registry
        assert "hgrn::norm_gate" in registration.default_registry
        print("ok")
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [ROOT] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
    res = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                         text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"
