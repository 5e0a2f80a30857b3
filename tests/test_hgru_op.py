"""The HGRU core op ``hgrn::hgru`` (``hgrn_core.hgru``) on the torch path, against the
reference loop and against the formula of docs/spec.md §1 written out with plain torch ops."""
import pytest
import torch
import torch.nn.functional as F

from hgrn_core import HGRU, hgru
from hgrn_core.gates import hgru_gates

DIRS = ["both", "forward", "reverse"]


def _case(B, N, d, complex_valued, direction, dtype=torch.float64, lb="rand", h0=True, seed=0,
          pad=(1, 2)):
    """proj as a column slice of a wider tensor (a strided view, as a fused projection gives)."""
    g = torch.Generator().manual_seed(seed)
    W = 2 * d if complex_valued else d
    wide = torch.randn(B, N, pad[0] + W + d + pad[1], generator=g, dtype=torch.float64)
    proj = wide[..., pad[0]:pad[0] + W + d].to(dtype).detach().requires_grad_()
    lower = {"none": None, "zero": torch.zeros(d, dtype=torch.float64),
             "rand": torch.rand(d, generator=g, dtype=torch.float64) * 0.9}[lb]
    if lower is not None:
        lower = lower.requires_grad_()
    tf = torch.randn(d, generator=g, dtype=torch.float64).requires_grad_() if complex_valued else None
    tr = torch.randn(d, generator=g, dtype=torch.float64).requires_grad_() if complex_valued else None
    state = (torch.randn(B, W, generator=g, dtype=torch.float64).requires_grad_()
             if h0 and direction != "both" else None)
    return proj, lower, tf, tr, state


def _spec_formula(proj, lb, tf, tr, h0, direction):
    """docs/spec.md §1 with torch ops and an explicit loop over tokens (independent of
    hgrn_core)."""
    complex_ = tf is not None
    d = proj.shape[-1] // (3 if complex_ else 2)
    W = proj.shape[-1] - d
    p = proj.double()
    s = torch.sigmoid(p[..., W:])
    lam = s if lb is None else lb + (1 - lb) * s
    x = F.silu(p[..., :W]) * (1 - lam).repeat(1, 1, W // d)
    B, N, _ = p.shape

    def run(theta, order, state):
        hr, hi = ((state[:, :d], state[:, d:]) if complex_ else (state, None)) if state is not None \
            else (p.new_zeros(B, d), p.new_zeros(B, d) if complex_ else None)
        outs = [None] * N
        for t in order:
            if complex_:
                a, b = lam[:, t] * torch.cos(theta), lam[:, t] * torch.sin(theta)
                hr, hi = (a * hr - b * hi + x[:, t, :d], a * hi + b * hr + x[:, t, d:])
                outs[t] = torch.cat([hr, hi], -1)
            else:
                hr = lam[:, t] * hr + x[:, t]
                outs[t] = hr
        return torch.stack(outs, 1), (torch.cat([hr, hi], -1) if complex_ else hr)

    fwd, rev = range(N), range(N - 1, -1, -1)
    if direction == "both":
        return run(tf, fwd, None)[0] + run(tr, rev, None)[0], None
    return run(tf if direction == "forward" else tr, fwd if direction == "forward" else rev, h0)


def _loss_grads(h, hN, leaves, seed=1):
    g = torch.Generator().manual_seed(seed)
    loss = (h.double() * torch.randn(h.shape, generator=g, dtype=torch.float64)).sum()
    if hN is not None:
        loss = loss + (hN.double() * torch.randn(hN.shape, generator=g, dtype=torch.float64)).sum()
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    return [torch.zeros(()) if x is None else x for x in grads]


def _run(backend, proj, lb, tf, tr, h0, direction):
    h, hN = hgru(proj, lb, tf, tr, direction=direction, initial_state=h0,
                 return_final_state=True, backend=backend)
    return h, (None if direction == "both" else hN)


@pytest.mark.parametrize("complex_valued", [True, False])
@pytest.mark.parametrize("direction", DIRS)
@pytest.mark.parametrize("backend", ["torch", "reference"])
@pytest.mark.parametrize("lb", ["rand", "zero", "none"])
def test_outputs_and_gradients_match_the_spec_formula(complex_valued, direction, backend, lb):
    case = _case(2, 10, 5, complex_valued, direction, lb=lb)  # 10: chunks of 4, 2 padded
    leaves = [t for t in case if t is not None]
    h, hN = _run(backend, *case, direction)
    h_ref, hN_ref = _spec_formula(*case, direction)
    torch.testing.assert_close(h, h_ref)
    if hN is not None:
        torch.testing.assert_close(hN, hN_ref)
    for got, want in zip(_loss_grads(h, hN, leaves), _loss_grads(h_ref, hN_ref, leaves)):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("complex_valued", [True, False])
@pytest.mark.parametrize("direction", DIRS)
def test_every_length_and_chunking(complex_valued, direction):
    """The torch path cuts the sequence into chunks of ceil(sqrt(N)) with padding after the
    end: lengths 1..26 cover one chunk, exact multiples and every amount of padding."""
    for N in range(1, 27):
        case = _case(3, N, 4, complex_valued, direction, seed=N)
        h, hN = _run("torch", *case, direction)
        h_ref, hN_ref = _spec_formula(*case, direction)
        torch.testing.assert_close(h, h_ref, msg=lambda m: f"N={N}: {m}")
        if hN is not None:
            torch.testing.assert_close(hN, hN_ref, msg=lambda m: f"N={N} final state: {m}")


@pytest.mark.parametrize("complex_valued", [True, False])
@pytest.mark.parametrize("direction", DIRS)
def test_gradcheck_fp64_torch_path(complex_valued, direction):
    proj, lb, tf, tr, h0 = _case(2, 5, 3, complex_valued, direction)

    def f(proj, lb, *rest):
        tf, tr, h0 = (rest[0], rest[1], rest[2] if len(rest) > 2 else None) if complex_valued \
            else (None, None, rest[0] if rest else None)
        h, hN = hgru(proj, lb, tf, tr, direction=direction, initial_state=h0,
                     return_final_state=True, backend="torch")
        return (h, hN) if direction != "both" else h

    args = [proj, lb] + ([tf, tr] if complex_valued else []) + ([h0] if h0 is not None else [])
    assert torch.autograd.gradcheck(f, tuple(args))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_low_precision_projection(dtype):
    proj, lb, tf, tr, _ = _case(2, 33, 6, True, "both", dtype=dtype, h0=False)
    h = hgru(proj, lb.float(), tf.float(), tr.float(), backend="torch")
    assert h.dtype == dtype and h.is_contiguous()
    h_ref, _ = _spec_formula(proj.detach().double(), lb.detach(), tf.detach(), tr.detach(),
                             None, "both")
    tol = {torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 3e-2}[dtype]
    torch.testing.assert_close(h.double(), h_ref, rtol=tol, atol=tol)
    h, hN = hgru(proj, lb.float(), tf.float(), None, direction="forward",
                 return_final_state=True, backend="torch")
    assert hN.dtype == torch.float32  # the state stays fp32 whatever the activation dtype


def test_backward_keeps_no_fp32_copy_of_the_projection():
    """The op saves its inputs only: under bf16 nothing fp32 of size B*N*d is kept."""
    B, N, d = 2, 16, 8
    proj = torch.randn(B, N, 3 * d, dtype=torch.bfloat16, requires_grad=True)
    params = [torch.rand(d) * 0.5, torch.randn(d), torch.randn(d)]
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        h = hgru(proj, *params, backend="torch")
    big = [t for t in saved if t.numel() >= B * N * d]
    assert big and all(t.dtype == torch.bfloat16 for t in big)
    assert sum(t.numel() for t in big) == proj.numel()  # proj itself, nothing else
    h.float().sum().backward()
    assert proj.grad.dtype == torch.bfloat16 and proj.grad.shape == proj.shape


def test_segments_chain_through_the_final_state():
    proj, lb, tf, _, _ = _case(2, 12, 4, True, "forward", h0=False)
    full, final = hgru(proj, lb, tf, None, direction="forward", return_final_state=True,
                       backend="torch")
    a, sa = hgru(proj[:, :5], lb, tf, None, direction="forward", return_final_state=True,
                 backend="torch")
    b, sb = hgru(proj[:, 5:], lb, tf, None, direction="forward", initial_state=sa,
                 return_final_state=True, backend="torch")
    torch.testing.assert_close(torch.cat([a, b], 1), full)
    torch.testing.assert_close(sb, final)
    # a (real, imag) pair is accepted as the initial state too
    b2 = hgru(proj[:, 5:], lb, tf, None, direction="forward", initial_state=sa.chunk(2, -1),
              backend="torch")
    torch.testing.assert_close(b2, b)


def test_gates_match_the_spec():
    proj = torch.randn(2, 3, 3 * 4, dtype=torch.float64)
    lb = torch.rand(4, dtype=torch.float64)
    g = hgru_gates(proj, lb, True)
    lam = lb + (1 - lb) * torch.sigmoid(proj[..., 8:])
    torch.testing.assert_close(g.lam, lam)
    torch.testing.assert_close(g.x[..., :4], (1 - lam) * F.silu(proj[..., :4]))
    torch.testing.assert_close(g.x[..., 4:], (1 - lam) * F.silu(proj[..., 4:8]))


def test_compiles_without_graph_breaks_and_exports_as_one_op():
    m = HGRU(8).eval()
    x = torch.randn(2, 5, 8)
    lb = torch.rand(8) * 0.5
    compiled = torch.compile(m, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(x, lb), m(x, lb))
    ep = torch.export.export(m, (x, lb))
    targets = [str(n.target) for n in ep.graph.nodes if n.op == "call_function"]
    assert targets.count("hgrn.hgru.default") == 1
    assert targets.count("hgrn.norm_gate.default") == 1
    torch.testing.assert_close(ep.module()(x, lb), m(x, lb))


@pytest.mark.parametrize("kwargs, match", [
    (dict(direction="sideways"), "direction must be one of"),
    (dict(proj=torch.randn(2, 5)), r"proj must be a 3-D tensor"),
    (dict(proj=torch.randn(2, 5, 10)), r"not a multiple of 3"),
    (dict(proj=torch.randn(2, 0, 12)), r"empty sequence"),
    (dict(proj=torch.randn(2, 12, 5).transpose(1, 2)), r"unit stride over channels"),
    (dict(theta_reverse=None), r"theta_reverse is needed for direction='both'"),
    (dict(lower_bound=torch.rand(5)), r"lower_bound must have shape \(4,\)"),
    (dict(lower_bound=torch.full((4,), 1.5)), r"lower_bound must lie in \[0, 1\)"),
    (dict(initial_state=torch.zeros(2, 8)), r"bidirectional scan has no running state"),
    (dict(direction="forward", initial_state=torch.zeros(2, 7)), r"initial_state must have shape \(2, 8\)"),
    (dict(proj=torch.randn(2, 5, 12).int()), r"proj must be a floating-point tensor"),
])
def test_bad_input_is_named(kwargs, match):
    args = dict(proj=torch.randn(2, 5, 12), lower_bound=None, theta_forward=torch.randn(4),
                theta_reverse=torch.randn(4), direction="both")
    args.update(kwargs)
    proj = args.pop("proj")
    with pytest.raises((ValueError, TypeError), match=match):
        hgru(proj, **args, backend="torch")
