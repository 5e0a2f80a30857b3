"""The user-facing reports: hgrn-flops (fvcore with the scan handles) and hgrn-benchmark.

Tiny models and images, in-process where possible, so that this file runs in well under
a minute on 2 CPU cores (one subprocess-isolation test and two script starts excepted).
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap

import pytest
import timm
import torch
from torch import nn

import hgrn_core
try:  # installed: tools/ is the package hgrn_tools
    from hgrn_tools.measure import benchmark, flops
except ImportError:  # a checkout
    from tools.measure import benchmark, flops

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A plugin module registering two tiny timm models: an HGRN-like model that runs the scan
# op, and one whose forward fails above 32 px with an out-of-memory message. Written to a
# file so that subprocess workers can import it too.
PLUGIN = textwrap.dedent('''
    import torch
    from torch import nn
    from timm.models import register_model
    import hgrn_core

    class ToyHGRN(nn.Module):
        """patch embed -> blocks of (LN, HGRU) -> mean -> head; the spec's layout, small."""
        def __init__(self, img_size=32, patch_size=8, embed_dim=16, depth=2, num_classes=10,
                     mixer_backend="auto", causal=False, complex_valued=True, **kw):
            super().__init__()
            self.num_classes = num_classes
            self.patch_embed = nn.Conv2d(3, embed_dim, patch_size, patch_size)
            self.norms = nn.ModuleList([nn.LayerNorm(embed_dim) for _ in range(depth)])
            self.mixers = nn.ModuleList([
                hgrn_core.HGRU(embed_dim, backend=mixer_backend, causal=causal,
                               complex_valued=complex_valued) for _ in range(depth)])
            self.head = nn.Linear(embed_dim, num_classes)

        def forward(self, x):
            x = self.patch_embed(x).flatten(2).transpose(1, 2)
            for norm, mixer in zip(self.norms, self.mixers):
                x = x + mixer(norm(x))
            return self.head(x.mean(1))

    class Boom(nn.Module):
        def __init__(self, img_size=32, num_classes=10, **kw):
            super().__init__()
            self.img_size = img_size
            self.fc = nn.Linear(3, num_classes)

        def forward(self, x):
            if self.img_size > 32:
                raise RuntimeError("CUDA out of memory. Tried to allocate 1 PiB (simulated)")
            return self.fc(x.mean((2, 3)))

    @register_model
    def tools_test_toy_hgrn(pretrained=False, **kw):
        return ToyHGRN(**kw)

    @register_model
    def tools_test_boom(pretrained=False, **kw):
        return Boom(**kw)
''')


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("plugin")
    (d / "tools_test_plugin.py").write_text(PLUGIN)
    sys.path.insert(0, str(d))
    import tools_test_plugin  # noqa: F401  registers the models
    yield d
    sys.path.remove(str(d))


# ----------------------------------------------------------------- the scan handle count
class OneMixer(nn.Module):
    def __init__(self, dim, **kw):
        super().__init__()
        self.mixer = hgrn_core.HGRU(dim, **kw)

    def forward(self, x):
        return self.mixer(x)


@pytest.mark.parametrize("kw, op, per_token_channel", [
    # bidirectional: 2 directions x (4 complex multiply-add + 2 for a, b) + 2 adds summing them
    (dict(), "hgru", 2 * (4 + 2) + 2),
    # causal: one complex scan, 4 + 2
    (dict(causal=True), "hgru", 4 + 2),
    # real-valued bidirectional HGRU: two real scans, 1 MAC each (h = lam*h + x)
    (dict(complex_valued=False), "hgru", 2 * 1),
])
def test_scan_handle_counts_the_formula(kw, op, per_token_channel):
    B, N, D = 3, 10, 8
    fa = flops.analyse(OneMixer(D, **kw).eval(), torch.randn(B, N, D))
    by_op = fa.by_operator()
    assert by_op[op] == per_token_channel * B * N * D
    assert f"hgrn::{op}" not in fa.unsupported_ops()
    # the rest of the mixer: in_proj (d -> 5d or 3d), out_proj, LayerNorm at 5/element
    width = 2 * D if kw.get("complex_valued", True) else D
    assert by_op["linear"] == B * N * (D * (2 * width + D) + width * D)
    assert by_op["norm_gate"] == 5 * B * N * width  # LayerNorm(h) * SiLU(gate), as a norm


class Hgru2dOp(nn.Module):
    """``hgrn::hgru2d`` called as the op, on a grid of width 4."""

    def __init__(self, direction, complex_):
        super().__init__()
        self.direction, self.complex_ = direction, complex_

    def forward(self, proj, lb, theta_f, theta_r):
        c, both = self.complex_, self.direction == "both"
        return torch.ops.hgrn.hgru2d(proj, lb, theta_f if c else None,
                                     theta_r if c and both else None, 4, self.direction, "torch")


class OneMixer2d(nn.Module):
    def __init__(self, dim, **kw):
        super().__init__()
        self.mixer = hgrn_core.HGRU2d(dim, **kw)

    def forward(self, x):
        return self.mixer(x, None, 4)


@pytest.mark.parametrize("direction, complex_, per_token_channel", [
    # rows and columns: twice the 1-D op's count for the same direction
    ("both", True, 2 * (2 * (4 + 2) + 2)),
    ("forward", True, 2 * (4 + 2)),
    ("both", False, 2 * 2 * 1),
    ("forward", False, 2 * 1),
])
def test_hgru2d_handle_counts_twice_the_1d_formula(direction, complex_, per_token_channel):
    B, H, Wg, d = 2, 3, 4, 8
    W = 2 * d if complex_ else d
    args = (torch.randn(B, H * Wg, W + d), torch.rand(d), torch.randn(d), torch.randn(d))
    fa = flops.analyse(Hgru2dOp(direction, complex_).eval(), args)
    assert fa.by_operator()["hgru2d"] == per_token_channel * B * H * Wg * d
    assert "hgrn::hgru2d" not in fa.unsupported_ops()
    assert flops.hgru2d_macs(args[0].shape, complex_, direction) == per_token_channel * B * H * Wg * d
    # the HGRU2d mixer, traced as fvcore traces: hgrn::hgru on its rows and its columns
    mixer = OneMixer2d(d, causal=direction == "forward", complex_valued=complex_).eval()
    by_op = flops.analyse(mixer, torch.randn(B, H * Wg, d)).by_operator()
    assert by_op["hgru"] == per_token_channel * B * H * Wg * d and "hgru2d" not in by_op


def test_scan_macs_function():
    assert flops.scan_macs("hgrn::bidirectional_scan", (2, 256, 192)) == 14 * 2 * 256 * 192
    assert flops.scan_macs("hgrn::complex_scan", (1, 5, 7)) == 6 * 35
    assert flops.scan_macs("hgrn::real_scan", (1, 5, 7)) == 35


def test_attention_handle_counts_both_matmuls():
    q = torch.randn(2, 3, 17, 8)
    v = torch.randn(2, 3, 11, 5)

    class Attn(nn.Module):
        def forward(self, q, k, v):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v)

    fa = flops.analyse(Attn(), (q, torch.randn(2, 3, 11, 8), v))
    assert fa.total() == 2 * 3 * 17 * 11 * (8 + 5)


# ------------------------------------------------------------- totals against hand counts
def hand_count_toy(img, patch, d, depth, classes, batch=1):
    n = (img // patch) ** 2
    per_layer = (d * 5 * d + 2 * d * d      # HGRU in_proj (d -> 2d + d + 2d), out_proj
                 + 5 * d + 5 * 2 * d        # block LayerNorm (d), HGRU LayerNorm (2d)
                 + 14 * d)                  # bidirectional scan
    return batch * (n * patch * patch * 3 * d + depth * n * per_layer + d * classes)


def test_toy_model_total_equals_hand_count(plugin_dir):
    model = flops.create_model("tools_test_toy_hgrn", 64)
    rec = flops.measure("tools_test_toy_hgrn", 64, 2, model=model)
    assert rec["macs"] == hand_count_toy(64, 8, 16, 2, 10, batch=2)
    assert rec["params"] == sum(p.numel() for p in model.parameters())
    assert rec["gflops"] == pytest.approx(2 * rec["gmacs"])
    # what fvcore could not count is listed, not hidden
    assert {"aten::add", "aten::mean"} <= set(rec["skipped_ops"])


def _hgrn_models():
    try:
        import hgrn_vision  # noqa: F401
    except ImportError:
        return []
    return timm.list_models("hgrn_deit*")


@pytest.mark.parametrize("name, d, expect_gmacs", [("hgrn_deit_tiny", 192, 1.5),
                                                    ("hgrn_deit_small", 384, 5.9)])
def test_hgrn_deit_total_equals_hand_count(name, d, expect_gmacs):
    if name not in _hgrn_models():
        pytest.skip("hgrn_vision does not register the HGRN-DeiT models yet")
    # docs/spec.md §3.3/§4.1, counted by hand: patch 14, depth 12, GLU hidden 2d,
    # 1000 classes, 224 px
    p, L, n = 14, 12, (224 // 14) ** 2
    linear = n * L * (7 * d * d + 6 * d * d)       # mixer 2d²+d²+2d²+2d², GLU 6d²
    patch = n * p * p * 3 * d
    head = d * 1000
    norms = n * L * 5 * (d + 2 * d + d)           # two block LNs (d), HGRU LN (2d), affine
    scan = n * L * d * (2 * (4 + 2) + 2)          # bidirectional scan, see tools/measure/flops.py
    hand = linear + patch + head + norms + scan
    rec = flops.measure(name, 224, 1)
    assert rec["macs"] == pytest.approx(hand, rel=0.01)
    assert rec["gmacs"] == pytest.approx(expect_gmacs, rel=0.05)   # docs/spec.md §4.1
    assert rec["macs_by_op"]["hgru"] == scan


def test_hgrn2d_deit_total_is_the_1d_total_plus_the_column_scans():
    """hgrn2d_deit_tiny is hgrn_deit_tiny with each block's scans run along the rows and the
    columns: the same layers and parameters, one more 1-D scan count per block."""
    _hgrn_models()  # imports hgrn_vision where it is installed
    if "hgrn2d_deit_tiny" not in timm.list_models("hgrn2d*"):
        pytest.skip("hgrn_vision does not register the 2-D models")
    L, d, B, n = 3, 192, 2, (224 // 14) ** 2   # 3 blocks keep it quick; the rest as the model
    one, two = (flops.measure(name, 224, B, model=flops.create_model(name, 224, depth=L))
                for name in ("hgrn_deit_tiny", "hgrn2d_deit_tiny"))
    extra = B * n * L * d * (2 * (4 + 2) + 2)      # bidirectional complex, per block
    assert two["macs"] == one["macs"] + extra
    assert two["params"] == one["params"]
    # fvcore traces the model: each HGRU2d runs hgrn::hgru on its rows and its columns
    assert two["macs_by_op"]["hgru"] == 2 * one["macs_by_op"]["hgru"] == 2 * extra
    rest = lambda rec: {k: v for k, v in rec["macs_by_op"].items() if k != "hgru"}  # noqa: E731
    assert rest(two) == rest(one)


# --------------------------------------------------------------------------- flops CLI
def test_flops_cli_writes_parseable_reports(plugin_dir, tmp_path, capsys):
    js, cs = tmp_path / "f.json", tmp_path / "f.csv"
    rc = flops.main(["tools_test_toy_hgrn", "no_such_model", "--img-size", "32", "64",
                     "--batch-size", "2", "--by-module", "1", "--out", str(js), str(cs)])
    assert rc == 1  # the unknown model is reported as an error, the others still counted
    out = capsys.readouterr().out
    assert "tools_test_toy_hgrn" in out and "aten::mean" in out and "GFLOPs = 2 x GMACs" in out

    data = json.loads(js.read_text())
    assert "hgrn::hgru" in data["conventions"] and "hgrn::norm_gate" in data["conventions"]
    ok = [r for r in data["results"] if "error" not in r]
    bad = [r for r in data["results"] if "error" in r]
    assert [r["img_size"] for r in ok] == [32, 64] and len(bad) == 2
    assert ok[0]["macs"] == hand_count_toy(32, 8, 16, 2, 10, batch=2)
    assert {m["module"] for m in ok[0]["by_module"]} == {"patch_embed", "norms", "mixers", "head"}
    assert sum(m["macs"] for m in ok[0]["by_module"]) == ok[0]["macs"]

    rows = list(csv.DictReader(cs.open()))
    totals = [r for r in rows if r["module"] == "" and not r["error"]]
    assert [int(r["macs"]) for r in totals] == [r["macs"] for r in ok]
    assert "aten::mean" in totals[0]["skipped_ops"]
    assert any(r["module"] == "mixers" for r in rows)


def test_flops_on_a_timm_model(tmp_path):
    rec = flops.measure("deit_tiny_patch16_224", 32, 1)  # 4 patches + cls token
    assert rec["params"] > 5e6 and rec["macs"] > 0
    assert "scaled_dot_product_attention" in rec["macs_by_op"]


# ----------------------------------------------------------------------- benchmark CLI
def test_batch_size_spec():
    assert benchmark.parse_batch_sizes(["32", "448=8", "896=2"], [224, 448, 896]) == \
        {224: [32], 448: [8], 896: [2]}
    assert benchmark.parse_batch_sizes(["4", "8"], [32]) == {32: [4, 8]}
    with pytest.raises(ValueError):
        benchmark.parse_batch_sizes(["64=2"], [32])


def test_benchmark_sweep_survives_failures(plugin_dir, tmp_path):
    cs, js, png = tmp_path / "b.csv", tmp_path / "b.json", tmp_path / "b.png"
    rc = benchmark.main([
        "--models", "tools_test_toy_hgrn", "tools_test_boom", "--img-size", "32", "64",
        "--batch-size", "2", "--mode", "infer", "train", "--warmup", "1", "--iters", "2",
        "--threads", "1", "--in-process", "--quiet",
        "--out", str(cs), str(js), "--plot", str(png)])
    assert rc == 0
    data = json.loads(js.read_text())
    res = {(r["model"], r["img_size"], r["mode"]): r for r in data["results"]}
    assert len(res) == 8  # 2 models x 2 sizes x 2 modes: nothing dropped
    for mode in ("infer", "train"):
        for size in (32, 64):
            ok = res[("tools_test_toy_hgrn", size, mode)]
            assert ok["status"] == "ok" and ok["img_per_s"] > 0 and ok["peak_mem_mib"] > 0
        assert res[("tools_test_boom", 32, mode)]["status"] == "ok"
        failed = res[("tools_test_boom", 64, mode)]   # fails after a case that worked ...
        assert failed["status"] == "oom" and "out of memory" in failed["error"]
    # ... and the sweep went on to the 64 px cases of the other model (listed above)
    assert data["meta"]["isolation"] == "in-process"

    rows = list(csv.DictReader(cs.open()))
    assert len(rows) == 8
    assert {r["status"] for r in rows} == {"ok", "oom"}
    assert all(float(r["img_per_s"]) > 0 for r in rows if r["status"] == "ok")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_benchmark_runs_the_2d_model_by_name(tmp_path):
    """hgrn-benchmark --models hgrn2d_deit_tiny[:kwargs]: the 2-D model like any other."""
    _hgrn_models()  # imports hgrn_vision where it is installed
    if "hgrn2d_deit_tiny" not in timm.list_models("hgrn2d*"):
        pytest.skip("hgrn_vision does not register the 2-D models")
    js = tmp_path / "b.json"
    rc = benchmark.main(["--models", "hgrn2d_deit_tiny:depth=1,embed_dim=32", "--img-size", "42",
                         "--batch-size", "2", "--mode", "infer", "train", "--warmup", "0",
                         "--iters", "1", "--threads", "1", "--in-process", "--quiet",
                         "--out", str(js)])
    assert rc == 0
    res = json.loads(js.read_text())["results"]
    assert [(r["mode"], r["status"]) for r in res] == [("infer", "ok"), ("train", "ok")], res
    assert all(r["img_per_s"] > 0 for r in res)


def test_benchmark_fresh_process_per_case(plugin_dir, tmp_path):
    js = tmp_path / "b.json"
    rc = benchmark.main([
        "--models", "tools_test_toy_hgrn", "no_such_model", "--img-size", "32",
        "--batch-size", "2", "--mode", "train", "--warmup", "1", "--iters", "2",
        "--threads", "1", "--quiet", "--import", "tools_test_plugin", "--out", str(js)])
    assert rc == 0
    res = {r["model"]: r for r in json.loads(js.read_text())["results"]}
    ok = res["tools_test_toy_hgrn"]
    assert ok["status"] == "ok" and ok["mem_scope"] == "case (fresh process)"
    assert ok["peak_mem_mib"] >= ok["rss_base_mib"] > 0
    assert res["no_such_model"]["status"] == "error"
    assert "no_such_model" in res["no_such_model"]["error"]


@pytest.mark.parametrize("module", ["flops", "benchmark"])
def test_tools_run_from_a_checkout(module):
    # ``python -m tools.measure.NAME`` in the checkout's root, nothing installed or on PYTHONPATH needed
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-m", f"tools.measure.{module}", "--help"],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "GMACs" in out.stdout or "img/s" in out.stdout
