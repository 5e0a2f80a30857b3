"""The 2-D HGRU core op ``hgrn::hgru2d`` (``hgrn_core.hgru2d``) on the reference and torch
backends, against the spec's formula written out over the grid's rows and columns (the fused
backends have their own files: test_hgru2d_triton.py, test_hgru2d_numba.py)."""
import pytest
import torch

from hgrn_core import HGRU2d, hgru, hgru2d

from test_hgru_op import _case, _spec_formula

DIRS = ["both", "forward"]


def _spec_2d(proj, lb, tf, tr, grid_width, direction):
    """docs/spec.md §8: the 1-D formula along every row and every column, summed (written
    with explicit gathers, independently of hgrn_core's grid helpers)."""
    B, N, P = proj.shape
    H, Wg = N // grid_width, grid_width
    out = 0
    for r in range(H):  # each row as a batch of sequences
        idx = torch.arange(r * Wg, (r + 1) * Wg)
        h, _ = _spec_formula(proj[:, idx], lb, tf, tr, None, direction)
        out = out + torch.zeros(B, N, h.shape[-1], dtype=h.dtype).index_add(1, idx, h)
    for c in range(Wg):
        idx = torch.arange(c, N, Wg)
        h, _ = _spec_formula(proj[:, idx], lb, tf, tr, None, direction)
        out = out + torch.zeros(B, N, h.shape[-1], dtype=h.dtype).index_add(1, idx, h)
    return out


def _grads(out, inputs, seed=3):
    g = torch.Generator().manual_seed(seed)
    dy = torch.randn(out.shape, generator=g, dtype=out.dtype)
    present = [t for t in inputs if t is not None]
    return torch.autograd.grad(out, present, dy)


@pytest.mark.parametrize("grid", [(3, 4), (7, 5), (1, 6), (6, 1)])
@pytest.mark.parametrize("direction", DIRS)
@pytest.mark.parametrize("complex_valued", [True, False])
@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_outputs_and_gradients_match_the_spec_formula(backend, complex_valued, direction, grid):
    H, Wg = grid
    proj, lb, tf, tr, _ = _case(2, H * Wg, 5, complex_valued, direction, h0=False)
    tr = tr if direction == "both" else None
    want = _spec_2d(proj, lb, tf, tr, Wg, direction)
    got = hgru2d(proj, lb, tf, tr, grid_width=Wg, direction=direction, backend=backend)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    for a, b in zip(_grads(got, (proj, lb, tf, tr)), _grads(want, (proj, lb, tf, tr))):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("direction", DIRS)
@pytest.mark.parametrize("complex_valued", [True, False])
def test_gradcheck_fp64_torch_path(complex_valued, direction):
    proj, lb, tf, tr, _ = _case(1, 6, 2, complex_valued, direction, h0=False)
    tr = tr if direction == "both" else None
    f = lambda *a: hgru2d(*a, grid_width=3, direction=direction, backend="torch")
    assert torch.autograd.gradcheck(f, (proj, lb, tf, tr))


def test_a_one_row_grid_is_the_1d_core_plus_its_one_token_columns():
    """H = 1: the row scans are the 1-D core over the sequence; each column is one token, whose
    scan gives its own input x once per direction."""
    proj, lb, tf, tr, _ = _case(2, 7, 4, True, "both", h0=False)
    one_d = hgru(proj, lb, tf, tr, direction="both", backend="torch")
    two_d = hgru2d(proj, lb, tf, tr, grid_width=7, backend="torch")
    single = torch.cat([hgru(proj[:, t:t + 1], lb, tf, None, direction="forward",
                             backend="torch") for t in range(7)], 1)
    torch.testing.assert_close(two_d, one_d + 2 * single)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_low_precision_projection(dtype):
    proj, lb, tf, tr, _ = _case(2, 20, 6, True, "both", h0=False)
    want = hgru2d(proj, lb, tf, tr, grid_width=5, backend="reference")
    got = hgru2d(proj.to(dtype), lb.float(), tf.float(), tr.float(), grid_width=5, backend="torch")
    assert got.dtype == dtype
    tol = {torch.float32: 1e-5, torch.float16: 2e-2, torch.bfloat16: 8e-2}[dtype]
    torch.testing.assert_close(got.double(), want.detach(), rtol=tol, atol=tol)


def test_backward_keeps_only_the_projection():
    """As the 1-D op: under bf16 nothing of size B*N*d is kept but proj itself."""
    B, H, Wg, d = 2, 4, 4, 8
    proj = torch.randn(B, H * Wg, 3 * d, dtype=torch.bfloat16, requires_grad=True)
    params = [torch.rand(d) * 0.5, torch.randn(d), torch.randn(d)]
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        h = hgru2d(proj, *params, grid_width=Wg, backend="torch")
    big = [t for t in saved if t.numel() >= B * H * Wg * d]
    assert sum(t.numel() for t in big) == proj.numel() and all(t.dtype == torch.bfloat16 for t in big)
    h.float().sum().backward()
    assert proj.grad.dtype == torch.bfloat16 and proj.grad.shape == proj.shape


def test_mixer_compiles_without_graph_breaks_and_exports_as_one_op():
    m = HGRU2d(8).eval()
    x = torch.randn(2, 12, 8)
    lb = torch.rand(8) * 0.5
    compiled = torch.compile(m, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(x, lb, 4), m(x, lb, 4))
    ep = torch.export.export(m, (x, lb, 4))
    targets = [str(n.target) for n in ep.graph.nodes if n.op == "call_function"]
    assert targets.count("hgrn.hgru2d.default") == 1 and "hgrn.hgru.default" not in targets
    torch.testing.assert_close(ep.module()(x, lb, 4), m(x, lb, 4))


def test_mixer_variants_are_the_ops_directions():
    x, lb = torch.randn(2, 12, 8, dtype=torch.float64), torch.rand(8, dtype=torch.float64) * 0.5
    for kw, direction in ((dict(), "both"), (dict(causal=True), "forward"),
                          (dict(complex_valued=False), "both")):
        m = HGRU2d(8, backend="torch", **kw).double()
        core, gate = m.in_proj(x)
        h = hgru2d(core, lb, m.theta_forward, m.theta_reverse, grid_width=3,
                   direction=direction, backend="torch")
        torch.testing.assert_close(m(x, lb, 3), m.out_proj(m.norm(h, gate)))


@pytest.mark.parametrize("kwargs, match", [
    (dict(grid_width=5), r"N = 12 is not a multiple of it"),
    (dict(grid_width=0), r"grid_width must be a positive int"),
    (dict(direction="reverse"), r"direction must be 'both' or 'forward'"),
    (dict(direction="sideways"), r"direction must be 'both' or 'forward'|direction must be one of"),
    (dict(theta_reverse=None), r"theta_reverse is needed for direction='both'"),
    (dict(lower_bound=torch.rand(5)), r"lower_bound must have shape \(4,\)"),
])
def test_bad_input_is_named(kwargs, match):
    args = dict(proj=torch.randn(2, 12, 12), lower_bound=None, theta_forward=torch.randn(4),
                theta_reverse=torch.randn(4), direction="both", grid_width=4)
    args.update(kwargs)
    proj = args.pop("proj")
    with pytest.raises(ValueError, match=match):
        hgru2d(proj, **args, backend="torch")


def test_mixer_needs_the_grid():
    m = HGRU2d(8)
    with pytest.raises(ValueError, match=r"needs the width of the patch grid its 12 tokens"):
        m(torch.randn(2, 12, 8))
    with pytest.raises(RuntimeError, match="no running state"):
        m.step(torch.randn(2, 8))
