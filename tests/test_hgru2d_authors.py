"""The 2-D HGRU mixer against the authors' 2-D modules, on the same weights, in fp64.

Two references:
* a plain transcription of the authors' 2-D forward (their (h, w, b, d) layout, interleaved
  (real, imag) input channels, one explicit sequential loop per scan), always run;
* the authors' own ``BiHgru2d`` / ``Hgru2d`` / ``HgruReal2d`` modules, with a plain-loop
  scan standing in for their CUDA extension, when ``HGRN_AUTHORS_HGRU`` names a checkout of
  their hgru-pytorch repository (nothing is downloaded: skipped otherwise).

Weights go through the released-checkpoint conversion of the models (``_convert_released``),
so these tests also check that the authors' 2-D state dicts load as their 1-D ones do.
Outputs and every gradient (input, each parameter, the lower bound) agree within 1e-12.
"""
from __future__ import annotations

import importlib
import os
import sys
import types
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from hgrn_core import HGRU2d, list_backends
from hgrn_vision.hgrn_deit import _convert_released

TOL = dict(rtol=1e-12, atol=1e-12)
# variant -> (complex, causal, the authors' class)
VARIANTS = {"bi": (True, False, "BiHgru2d"), "causal": (True, True, "Hgru2d"),
            "real": (False, False, "HgruReal2d")}


def _backends():
    names = ["reference", "torch"]
    if "numba" in list_backends():
        try:
            import numba  # noqa: F401
            names.append("numba")
        except ImportError:
            pass
    return names


# ------------------------------------------------------------------- the authors' layout
def _authors_params(d: int, variant: str, seed: int = 0):
    """Random fp64 weights under the authors' 2-D module key names."""
    complex_, causal, _ = VARIANTS[variant]
    g = torch.Generator().manual_seed(seed)
    r = lambda *s, std=0.3: torch.randn(*s, generator=g, dtype=torch.float64) * std
    w = 2 * d if complex_ else d
    p = {"input_proj.weight": r(w, d), "input_proj.bias": r(w),
         "lambda_proj.weight": r(d, d), "lambda_proj.bias": r(d),
         "gate.weight": r(w, d), "gate.bias": r(w),
         "out_proj.weight": r(d, w), "out_proj.bias": r(d),
         "norm.weight": 1 + r(w), "norm.bias": r(w)}
    if complex_:
        for name in (("theta",) if causal else ("theta_forward", "theta_reverse")):
            p[name] = r(1, 1, d, std=1.0)
    return p


def _plain_forward(p, x, lower_bound, variant):
    """The authors' 2-D layer written out: x (h, w, b, d), one loop per scan."""
    complex_, causal, _ = VARIANTS[variant]
    lin = lambda t, n: F.linear(t, p[n + ".weight"], p[n + ".bias"])
    hh, ww, b, d = x.shape
    c = F.silu(lin(x, "input_proj"))
    if complex_:
        c = torch.complex(c[..., 0::2], c[..., 1::2])
    lam = lower_bound + (1 - lower_bound) * torch.sigmoid(lin(x, "lambda_proj"))
    gate = F.silu(lin(x, "gate"))
    inp = (1 - lam) * c
    thetas = ((("theta", False),) if causal else
              (("theta_forward", False), ("theta_reverse", True))) if complex_ else (
              (None, False), (None, True))
    states = 0
    for axis in (0, 1):  # down the columns (along h), then along the rows (along w)
        n = x.shape[axis]
        for name, reverse in thetas:
            rot = torch.exp(1j * p[name].reshape(-1)) if name else 1.0
            hs, out = torch.zeros_like(inp.select(axis, 0)), [None] * n
            for t in (reversed(range(n)) if reverse else range(n)):
                hs = lam.select(axis, t) * rot * hs + inp.select(axis, t)
                out[t] = hs
            states = states + torch.stack(out, axis)
    feature = torch.cat([states.real, states.imag], -1) if complex_ else states
    feature = F.layer_norm(feature, feature.shape[-1:], p["norm.weight"], p["norm.bias"], 1e-5)
    return lin(feature * gate, "out_proj")


def _ours(p, variant, backend):
    """Our mixer with the authors' weights, through the models' released conversion."""
    complex_, causal, _ = VARIANTS[variant]
    d = p["lambda_proj.weight"].shape[0]
    sd = _convert_released({f"layers.0.token_mixer.{k}": v for k, v in p.items()},
                           SimpleNamespace(patch_size=(14, 14)))
    sd = {k[len("blocks.0.mixer."):]: v for k, v in sd.items()}
    m = HGRU2d(d, causal=causal, complex_valued=complex_, backend=backend).double()
    m.load_state_dict(sd)
    return m


def _to_tokens(x):  # (h, w, b, d) -> (b, h * w, d), row-major
    hh, ww, b, d = x.shape
    return x.permute(2, 0, 1, 3).reshape(b, hh * ww, d)


def _compare(ref_module_forward, p, variant, backend, hh=4, ww=3, b=2, seed=1):
    """Run the reference (a function of (params, x, lb)) and our mixer on the same input;
    compare outputs and the gradients of the input, the lower bound and every parameter."""
    d = p["lambda_proj.weight"].shape[0]
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(hh, ww, b, d, generator=g, dtype=torch.float64)
    lb = torch.rand(d, generator=g, dtype=torch.float64) * 0.9
    dy = torch.randn(hh, ww, b, d, generator=g, dtype=torch.float64)

    xa, lba = x.clone().requires_grad_(), lb.clone().requires_grad_()
    pa = {k: v.clone().requires_grad_() for k, v in p.items()}
    ya = ref_module_forward(pa, xa, lba)
    ya.backward(dy)

    m = _ours(p, variant, backend)
    xo, lbo = _to_tokens(x).requires_grad_(), lb.clone().requires_grad_()
    yo = m(xo, lbo, grid_width=ww)
    yo.backward(_to_tokens(dy))

    torch.testing.assert_close(yo, _to_tokens(ya.detach()), **TOL)
    torch.testing.assert_close(xo.grad, _to_tokens(xa.grad), **TOL)
    torch.testing.assert_close(lbo.grad, lba.grad, **TOL)
    grads = _convert_released({f"layers.0.token_mixer.{k}": v.grad for k, v in pa.items()},
                              SimpleNamespace(patch_size=(14, 14)))
    ours = dict(m.named_parameters())
    for k, v in grads.items():
        name = k[len("blocks.0.mixer."):]
        torch.testing.assert_close(ours[name].grad, v, **TOL, msg=lambda s: f"{name}: {s}")


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_matches_plain_2d_forward(variant, backend):
    p = _authors_params(5, variant)
    _compare(lambda pa, x, lb: _plain_forward(pa, x, lb, variant), p, variant, backend)


# -------------------------------------------------------------- the authors' own modules
def _plain_scan_complex(xr, xi, gr, gi):
    """Stand-in for the authors' CUDA scan: h_t = gamma_t h_{t-1} + x_t over dim 0."""
    hr, hi = torch.zeros_like(xr[0]), torch.zeros_like(xi[0])
    outr, outi = [], []
    for t in range(xr.shape[0]):
        hr, hi = gr[t] * hr - gi[t] * hi + xr[t], gr[t] * hi + gi[t] * hr + xi[t]
        outr.append(hr)
        outi.append(hi)
    return torch.stack(outr), torch.stack(outi)


def _plain_scan_real(x, lam):
    h, out = torch.zeros_like(x[0]), []
    for t in range(x.shape[0]):
        h = lam[t] * h + x[t]
        out.append(h)
    return torch.stack(out)


def _authors_module(cls_name: str):
    root = os.environ.get("HGRN_AUTHORS_HGRU")
    if not root:
        pytest.skip("HGRN_AUTHORS_HGRU (a checkout of the authors' hgru-pytorch) is not set")
    pkg_dir = os.path.join(root, "hgru")
    if not os.path.isdir(pkg_dir):
        pytest.fail(f"HGRN_AUTHORS_HGRU={root!r} holds no hgru/ package")
    pytest.importorskip("einops", reason="the authors' modules import einops")
    # the package without its __init__ (which imports every module) and with plain-loop
    # scans standing in for the CUDA extensions
    saved = {k: v for k, v in sys.modules.items() if k == "hgru" or k.startswith("hgru.")}
    try:
        pkg = types.ModuleType("hgru")
        pkg.__path__ = [pkg_dir]
        sys.modules["hgru"] = pkg
        for sub, fn in (("hgru_cuda", _plain_scan_complex), ("hgru_real_cuda", _plain_scan_real)):
            stub = types.ModuleType(f"hgru.{sub}")
            cls = "HgruFunction" if sub == "hgru_cuda" else "HgruRealFunction"
            setattr(stub, cls, SimpleNamespace(apply=fn))
            sys.modules[f"hgru.{sub}"] = stub
        module = {"BiHgru2d": "bihgru2d", "Hgru2d": "hgru2d", "HgruReal2d": "hgrureal2d"}[cls_name]
        return getattr(importlib.import_module(f"hgru.{module}"), cls_name)
    finally:
        for k in [k for k in sys.modules if k == "hgru" or k.startswith("hgru.")]:
            del sys.modules[k]
        sys.modules.update(saved)


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_matches_authors_modules(variant, backend):
    cls = _authors_module(VARIANTS[variant][2])
    d = 5
    p = _authors_params(d, variant)
    causal = VARIANTS[variant][1]

    def run(pa, x, lb):
        m = cls(d, causal=causal).double()
        # their parameters, replaced by ours (leaves we can read gradients from)
        for k, v in pa.items():
            mod, _, attr = k.rpartition(".")
            owner = m.get_submodule(mod) if mod else m
            delattr(owner, attr)
            setattr(owner, attr, v)
        return m(x, lb)

    _compare(run, p, variant, backend)
