"""The ``numba`` backend's 2-D HGRU op (``hgrn::hgru2d``) against the reference loop.

The row and column scans run on the 1-D op's compiled walks, the columns read in place
through strides and added into the rows' output. Checked against the fp64 reference (outputs
and every gradient; 'both' and 'forward', real and complex, with and without a lower bound;
grids 1 x k, k x 1, 7 x 5, 3 x 4; widths off the channel block), by fp64 gradcheck through the
op, with fp32 / bf16 / fp16 projections, a strided projection, and two threads against one.
Shapes are tiny; the compiled loops are the 1-D op's (tests/test_numba_hgru.py), cached on
disk.
"""
import pytest
import torch

numba = pytest.importorskip("numba")

from hgrn_core import hgru2d  # noqa: E402
from hgrn_core.backends import base as backend_base  # noqa: E402
from hgrn_core.kernels import numba_hgru as K  # noqa: E402

GRIDS = [(1, 6), (5, 1), (7, 5), (3, 4)]      # (H, grid width)


def _case(B, H, Wg, d, complex_valued, direction, lb=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = 2 * d if complex_valued else d
    return {
        "proj": torch.randn(B, H * Wg, W + d, generator=g, dtype=torch.float64),
        "lb": torch.rand(d, generator=g, dtype=torch.float64) * 0.9 if lb else None,
        "tf": torch.randn(d, generator=g, dtype=torch.float64) if complex_valued else None,
        "tr": (torch.randn(d, generator=g, dtype=torch.float64)
               if complex_valued and direction == "both" else None),
    }


def _outputs(backend, leaves, Wg, direction, dtype=None):
    """h and the gradients of a fixed random loss, in fp64. With ``dtype``, the projection in
    that dtype and the small tensors in fp32."""
    leaves = {k: None if v is None else
              v.detach().to(v.dtype if dtype is None else dtype if k == "proj" else
                            torch.float32).requires_grad_()
              for k, v in leaves.items()}
    h = hgru2d(leaves["proj"], leaves["lb"], leaves["tf"], leaves["tr"], grid_width=Wg,
               direction=direction, backend=backend)
    wh = torch.randn(h.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    present = {k: v for k, v in leaves.items() if v is not None}
    grads = torch.autograd.grad((h.double() * wh).sum(), list(present.values()))
    out = {"h": h.double()}
    out.update({"d" + k: gr.double() for k, gr in zip(present, grads)})
    return out


def _close(got, want, rtol):
    assert got.keys() == want.keys()
    for k in want:
        scale = want[k].abs().max().item() + 1e-30
        err = (got[k] - want[k]).abs().max().item()
        assert err <= rtol * scale, f"{k}: error {err:.3g}, scale {scale:.3g}"


def _numba(monkeypatch, leaves, Wg, direction, dtype=None):
    """``_outputs`` of the numba backend, which must not fall back on the base class's
    composition (a transposed copy of the columns; the reference loop uses it)."""
    def boom(*a):
        raise AssertionError("the numba 2-D op made a transposed copy of the columns")
    with monkeypatch.context() as m:
        m.setattr(backend_base, "grid_cols", boom)
        m.setattr(backend_base, "from_grid_cols", boom)
        return _outputs("numba", leaves, Wg, direction, dtype)


# ------------------------------------------------------------------------------------ fp64
@pytest.mark.parametrize("direction", ["both", "forward"])
@pytest.mark.parametrize("complex_valued", [True, False], ids=["complex", "real"])
@pytest.mark.parametrize("lb", [True, False], ids=["lb", "no-lb"])
def test_against_reference_fp64(direction, complex_valued, lb, monkeypatch):
    # d = 5 and 13: partial channel blocks; 1 x 6 and 5 x 1 grids: columns (rows) of one token
    for (H, Wg) in GRIDS:
        for d in (5, 13):
            leaves = _case(2, H, Wg, d, complex_valued, direction, lb=lb, seed=H * Wg + d)
            _close(_numba(monkeypatch, leaves, Wg, direction),
                   _outputs("reference", leaves, Wg, direction), 1e-12)


@pytest.mark.parametrize("direction", ["both", "forward"])
@pytest.mark.parametrize("complex_valued", [True, False], ids=["complex", "real"])
def test_gradcheck_fp64(direction, complex_valued):
    leaves = _case(2, 2, 3, 2, complex_valued, direction)
    names = [k for k, v in leaves.items() if v is not None]

    def f(*args):
        kw = dict(zip(names, args))
        return hgru2d(kw["proj"], kw["lb"], kw.get("tf"), kw.get("tr"), grid_width=3,
                      direction=direction, backend="numba")

    args = [leaves[k].clone().requires_grad_() for k in names]
    assert torch.autograd.gradcheck(f, args, eps=1e-6, atol=1e-7, rtol=1e-5)


# --------------------------------------------------------------------------- low precision
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-6), (torch.bfloat16, 1.5e-2),
                                       (torch.float16, 2e-3)])
def test_low_precision_against_fp64(dtype, tol, monkeypatch):
    # the reference runs in fp64 on the same (rounded) projection, so the error is the
    # kernel's own: fp32 math, then h (dproj) rounded to the dtype after the row pass and
    # again after the column pass adds to it
    for direction in ("both", "forward"):
        for complex_valued in (True, False):
            leaves = _case(2, 7, 5, 13, complex_valued, direction, seed=3)
            leaves["proj"] = leaves["proj"].to(dtype).double()
            want = _outputs("reference", leaves, 5, direction)
            got = _numba(monkeypatch, leaves, 5, direction, dtype=dtype)
            assert got["h"].shape == want["h"].shape
            _close(got, want, tol)


# ----------------------------------------------------------------------- layout, threads
def test_strided_projection_is_read_in_place(monkeypatch):
    B, H, Wg, d = 2, 3, 4, 6
    for direction in ("both", "forward"):
        leaves = _case(B, H, Wg, d, True, direction)
        wide = torch.randn(B, H * Wg, 3 * d + 7, dtype=torch.float64)
        wide[..., 4:4 + 3 * d] = leaves["proj"]
        strided = dict(leaves, proj=wide[..., 4:4 + 3 * d])
        assert not strided["proj"].is_contiguous()
        _close(_numba(monkeypatch, strided, Wg, direction),
               _outputs("reference", leaves, Wg, direction), 1e-12)
    # bf16 strided: the raw 16-bit words are read through the strides
    p = wide.to(torch.bfloat16)[..., 4:4 + 3 * d]
    lb, tf, tr = leaves["lb"].float(), leaves["tf"].float(), None
    assert torch.equal(hgru2d(p, lb, tf, tr, grid_width=Wg, direction="forward", backend="numba"),
                       hgru2d(p.contiguous(), lb, tf, tr, grid_width=Wg, direction="forward",
                              backend="numba"))


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs two Numba threads")
def test_two_threads_equal_one(monkeypatch):
    # d = 70 on a 3 x 4 grid, batch 1: the row pass takes blocks of 20 channels with two
    # threads, of 40 with one; the channels and the per-task sums are independent of the
    # blocking, so the results are bitwise the same
    ran = []
    for name in ("hgru_fwd_parallel", "hgru_bwd_parallel"):
        real = getattr(K, name)
        monkeypatch.setattr(K, name, lambda *a, _real=real, _name=name:
                            ran.append(_name) or _real(*a))
    leaves = _case(1, 3, 4, 70, True, "both", seed=5)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        two = _outputs("numba", leaves, 4, "both", dtype=torch.float32)
        assert sorted(set(ran)) == ["hgru_bwd_parallel", "hgru_fwd_parallel"]
        ran.clear()
        torch.set_num_threads(1)
        one = _outputs("numba", leaves, 4, "both", dtype=torch.float32)
        assert not ran
    finally:
        torch.set_num_threads(threads)
    for k in two:
        assert torch.equal(two[k], one[k]), k
