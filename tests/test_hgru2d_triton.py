"""The fused Triton 2-D HGRU core (``hgrn::hgru2d`` on ``backend="triton"``).

The 1-D walk kernels run twice (NESTED launches): along the rows of the patch grid, then
along its columns, each sequence read in place through strides, the column pass adding onto
the rows' h / dproj (ACCUMULATE). Checked against the reference loop in fp64 (the ground
truth, gradients by autograd) and against the base class's composition of the 1-D core
(rows, plus a transposed copy of the columns). Without CUDA the kernels run in Triton's
interpreter (TRITON_INTERPRET=1, set by tests/conftest.py); shapes are tiny and several
tiles / channel blocks per program are forced with ``triton_hgru.override_config``.
"""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton", minversion="3.6")  # hgrn_core.backends.MIN_TRITON

import hgrn_core  # noqa: E402
from hgrn_core.backends import get_backend  # noqa: E402
from hgrn_core.backends.base import ScanBackend  # noqa: E402
from hgrn_core.kernels import triton_hgru  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# several tiles per row / column (the last partial), channels permuted as on the GPU
# (vec < block_d), without prefetch (the interpreter's default launch prefetches)
TILES = dict(block_t=4, block_d=8, vec=2, prefetch=False)
GRADS = ("dproj", "dlb", "dthf", "dthr")


def make(B, H, Wg, d, real=False, direction="both", lb="rand", dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = d if real else 2 * d
    t = dict(proj=torch.randn(B, H * Wg, W + d, generator=g).to(DEVICE, dtype))
    t["lb"] = {"rand": (torch.rand(d, generator=g) * 0.9).to(DEVICE),
               "zero": torch.zeros(d, device=DEVICE), "none": None}[lb]
    t["thf"] = None if real else torch.randn(d, generator=g).to(DEVICE)
    t["thr"] = None if real or direction == "forward" else torch.randn(d, generator=g).to(DEVICE)
    t["dh"] = torch.randn(B, H * Wg, W, generator=g).to(DEVICE, dtype)
    return t


def through_op(t, Wg, direction, backend="triton", double=False):
    """h and the gradients of (h * dh).sum() through the public op."""
    leaves = {k: None if t[k] is None else
              (t[k].detach().double() if double else t[k].detach()).clone().requires_grad_()
              for k in ("proj", "lb", "thf", "thr")}
    h = hgrn_core.hgru2d(leaves["proj"], leaves["lb"], leaves["thf"], leaves["thr"],
                         grid_width=Wg, direction=direction, backend=backend)
    (h.double() * t["dh"].double()).sum().backward()
    out = dict(h=h.detach())
    for k, v in leaves.items():
        out["d" + k] = None if v is None else v.grad
    return out


def reference(t, Wg, direction):
    return through_op(t, Wg, direction, backend="reference", double=True)


def close(a, b, tol, what):
    assert a is not None and b is not None, f"{what}: missing ({a is None}, {b is None})"
    assert a.shape == b.shape, f"{what}: shape {tuple(a.shape)} vs {tuple(b.shape)}"
    a, b = a.double().cpu(), b.double().cpu()
    assert torch.isfinite(a).all(), f"{what}: non-finite values"
    scale = max(1.0, b.abs().max().item())
    err = (a - b).abs().max().item()
    assert err <= tol * scale, f"{what}: max err {err:.3g} (scale {scale:.3g}, tol {tol})"


def check(t, Wg, direction, tol=1e-4):
    ref = reference(t, Wg, direction)
    got = through_op(t, Wg, direction)
    assert got["h"].dtype == t["proj"].dtype and got["dproj"].dtype == t["proj"].dtype
    for k in ("h",) + GRADS:
        if ref[k] is None:
            assert got[k] is None, f"{k}: expected None"
        else:
            close(got[k], ref[k], tol, k)
    return got, ref


# ---------------------------------------------------------------------------------- tests
# each grid with each direction, complex or real (each direction gets both twice)
@pytest.mark.parametrize("grid,direction,real", [
    ((1, 6), "both", True), ((1, 6), "forward", False), ((6, 1), "both", False),
    ((6, 1), "forward", True), ((7, 5), "both", False), ((7, 5), "forward", True),
    ((3, 4), "both", True), ((3, 4), "forward", False)],
    ids=lambda v: "%dx%d" % v if isinstance(v, tuple) else {True: "real",
                                                              False: "complex"}.get(v, v))
def test_grids(grid, direction, real):
    """Every output and gradient against the fp64 reference: 1 x k and k x 1 grids (one axis
    of length 1), odd and even grids; two tiles per row / column of 5 to 7 (the last one
    partial), d = 5 in a partial channel block."""
    H, Wg = grid
    t = make(1, H, Wg, 5, real=real, direction=direction, seed=H * 10 + Wg)
    with triton_hgru.override_config(**TILES):
        check(t, Wg, direction)


@pytest.mark.parametrize("direction,layout", [("forward", {}),
                                              ("both", dict(block_d=8, vec=2))],
                         ids=["forward-default", "both-blocks"])
def test_wide_channels(direction, layout):
    """d = 13, not a multiple of the channel block: one partial block of 16 (the
    interpreter's default launch, one tile per row / column) or two blocks of 8."""
    t = make(1, 3, 5, 13, direction=direction, seed=13)
    with triton_hgru.override_config(**layout):
        check(t, 5, direction)


@pytest.mark.parametrize("lb,direction", [("none", "both"), ("zero", "forward")])
def test_lower_bound_zero_and_none(lb, direction):
    t = make(1, 3, 4, 5, lb=lb, direction=direction, seed=7)
    with triton_hgru.override_config(**TILES):
        got, _ = check(t, 4, direction)
    assert (got["dlb"] is None) == (lb == "none")


@pytest.mark.parametrize("direction,real", [("both", False), ("forward", True)])
def test_matches_the_base_composition(direction, real):
    """The base class's composition (the 1-D core on the rows and on a transposed copy of the
    columns) on the same Triton kernels: fp32 h and dproj bitwise (the same walks, the same
    fp32 sum of the two axes), the per-channel sums to rounding (summed in another order)."""
    t = make(1, 3, 4, 5, real=real, direction=direction, seed=3)
    tri = get_backend("triton")
    args = (t["proj"], t["lb"], t["thf"], t["thr"], 4, direction)
    with triton_hgru.override_config(**TILES):
        h = tri.hgru2d_forward(*args)
        h_base = ScanBackend.hgru2d_forward(tri, *args)
        grads = tri.hgru2d_backward(t["dh"], *args)
        grads_base = ScanBackend.hgru2d_backward(tri, t["dh"], *args)
    assert torch.equal(h, h_base)
    assert torch.equal(grads[0], grads_base[0])
    for name, a, b in zip(GRADS[1:], grads[1:], grads_base[1:]):
        assert (a is None) == (b is None), name
        if a is not None:
            close(a, b, 1e-6, name)


@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 3e-2), (torch.float16, 4e-3)],
                         ids=["bf16", "fp16"])
@pytest.mark.parametrize("direction", ["both", "forward"])
def test_low_precision(dtype, tol, direction):
    """bf16 / fp16 inputs (fp32: every other test): fp32 inside, h and dproj in the input
    dtype, the column pass added in fp32 onto the rows' rounded h, the sum rounded once."""
    t = make(1, 3, 5, 5, dtype=dtype, direction=direction, seed=5)
    with triton_hgru.override_config(**TILES):
        got, ref = check(t, 5, direction, tol=tol)
    # h: within a few roundings of the exact sum (two of the row pass's value and the sum)
    err = (got["h"].double().cpu() - ref["h"].cpu()).abs().max().item()
    assert err <= 4 * ref["h"].abs().max().item() * torch.finfo(dtype).eps


def test_gradcheck_fp64():
    """fp64 through the op on the Triton kernels: torch.autograd.gradcheck of every input
    (proj, lower bound, both phases), complex 'both' and real 'forward'."""
    for direction, real in (("both", False), ("forward", True)):
        t = make(1, 2, 3, 2, real=real, direction=direction, dtype=torch.float64, seed=4)
        args = [None if t[k] is None else t[k].double().requires_grad_()
                for k in ("proj", "lb", "thf", "thr")]
        with triton_hgru.override_config(block_t=2):
            assert torch.autograd.gradcheck(
                lambda *a: hgrn_core.hgru2d(*a, grid_width=3, direction=direction,
                                            backend="triton"),
                args, eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=True)


class _Spy:
    """Records the keyword arguments of each launch of a kernel, then runs it."""

    def __init__(self, kernel):
        self.kernel, self.launches = kernel, []

    def __getitem__(self, grid):
        def launch(**kw):
            self.launches.append(dict(kw, grid=grid))
            return self.kernel[grid](**kw)
        return launch


def _spy(monkeypatch):
    fwd = _Spy(triton_hgru._hgru_fwd_kernel)
    bwd = _Spy(triton_hgru._hgru_bwd_kernel)
    monkeypatch.setattr(triton_hgru, "_hgru_fwd_kernel", fwd)
    monkeypatch.setattr(triton_hgru, "_hgru_bwd_kernel", bwd)
    return fwd, bwd


def test_strided_inputs_in_place_no_transposed_copy(monkeypatch):
    """proj a column slice of a wider tensor (row stride > width) and dh a strided slice:
    each pass reads them in place (the same storage and strides as given, no copy), both
    passes write the one h / dproj the op returns (the column pass accumulating), one
    launch per pass (no segments, even where the 1-D op would be told to use them), and the
    results are those of contiguous inputs, bitwise."""
    B, H, Wg, d = 1, 3, 4, 5
    C, W = 3 * d, 2 * d
    t = make(B, H, Wg, d, seed=11)
    g = torch.Generator().manual_seed(5)
    wide = torch.randn(B, H * Wg, C + 7, generator=g).to(DEVICE)
    wide[..., 3:3 + C] = t["proj"]
    wide.requires_grad_()
    proj = wide[..., 3:3 + C]
    dh = torch.randn(B, H * Wg, 2 * W, generator=g).to(DEVICE)[..., W:]
    dh.copy_(t["dh"])
    assert proj.stride(1) > C and not dh.is_contiguous()
    lb, thf, thr = (t[k].clone().requires_grad_() for k in ("lb", "thf", "thr"))
    with triton_hgru.override_config(**TILES):
        want = through_op(t, Wg, "both")
        fwd, bwd = _spy(monkeypatch)
        with triton_hgru.override_config(segments=3):
            h = hgrn_core.hgru2d(proj, lb, thf, thr, grid_width=Wg, backend="triton")
            h.backward(dh)
    got = dict(h=h.detach(), dproj=wide.grad[..., 3:3 + C], dlb=lb.grad, dthf=thf.grad,
               dthr=thr.grad)
    for k in ("h",) + GRADS:
        assert torch.equal(got[k], want[k]), k
    assert len(fwd.launches) == 2 and len(bwd.launches) == 2
    for launches, out, tag in ((fwd.launches, h, "H"), (bwd.launches, None, "DP")):
        assert [ln["ACCUMULATE"] for ln in launches] == [False, True]
        for ln in launches:
            assert ln["NESTED"] and ln["MAIN"] and not (ln["SEG_A"] or ln["SEG_B"])
            assert ln["P"].data_ptr() == proj.data_ptr() and ln["P"].stride() == proj.stride()
            if out is not None:
                assert ln[tag].data_ptr() == out.data_ptr()
    assert bwd.launches[0]["DP"].data_ptr() == bwd.launches[1]["DP"].data_ptr()
    for ln in bwd.launches:
        assert ln["G"].data_ptr() == dh.data_ptr() and ln["G"].stride() == dh.stride()
    # rows: G = H sequences of Wg tokens per image; columns: G = Wg sequences of H tokens
    rows, cols = fwd.launches
    s = proj.stride(1)
    assert (rows["n_inner"], rows["N"], rows["sp_g"], rows["sp_n"]) == (H, Wg, Wg * s, s)
    assert (cols["n_inner"], cols["N"], cols["sp_g"], cols["sp_n"]) == (Wg, H, s, Wg * s)
    assert rows["grid"][1] == B * H and cols["grid"][1] == B * Wg


def test_batch_chunks(monkeypatch):
    """More sequences than a launch's grid axis takes: each pass in batch chunks, the same
    results bitwise."""
    t = make(3, 3, 4, 2, seed=8)
    want = through_op(t, 4, "both")
    monkeypatch.setattr(triton_hgru, "MAX_SEQS", 7)  # rows of 2 images, columns of 1
    fwd, _ = _spy(monkeypatch)
    got = through_op(t, 4, "both")
    assert [ln["grid"][1] for ln in fwd.launches] == [6, 3, 4, 4, 4]
    for k in ("h",) + GRADS:
        assert torch.equal(got[k], want[k]), k


def test_too_large_a_grid_takes_the_composition(monkeypatch):
    """A grid beyond the kernels' int32 offsets (a column step of 2^24 elements or more)
    falls back to the base class's composition, with the same results."""
    assert triton_hgru.grid_fits(89 * 89, 3 * 384, 89)
    assert not triton_hgru.grid_fits(4096 * 8, 4096, 4096)
    assert not triton_hgru.grid_fits(70000, 6, 1)  # 70000 rows of one image in one launch
    t = make(1, 3, 4, 5, direction="forward", seed=9)
    want = through_op(t, 4, "forward")
    monkeypatch.setattr(triton_hgru, "grid_fits", lambda *a: False)
    fwd, bwd = _spy(monkeypatch)
    got = through_op(t, 4, "forward")
    assert fwd.launches and not any(ln["NESTED"] for ln in fwd.launches + bwd.launches)
    for k in ("h",) + GRADS:
        if want[k] is not None:
            close(got[k], want[k], 1e-6, k)
