"""ONNX export: the translations of hgrn::hgru / hgrn::norm_gate (hgrn_core.onnx_export)
run with onnxruntime against the ops and the eager model; the hgrn-export command line.

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
