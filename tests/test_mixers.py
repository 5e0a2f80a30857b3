"""HGRU mixers, the lower bound and the mixer registry."""
import pytest
import torch

from hgrn_core import HGRU, HierarchicalLowerBound, create_mixer, list_mixers
from hgrn_core.mixers import TokenMixer, phase_init


def test_lower_bound_matches_spec():
    lb = HierarchicalLowerBound(4, 3)
    with torch.no_grad():
        lb.logits.copy_(torch.randn(4, 3))
    gammas = lb()
    p = torch.softmax(lb.logits, 0)
    expected = torch.stack([torch.zeros(3)] + [p[:k].sum(0) for k in range(1, 4)])
    torch.testing.assert_close(gammas, expected)
    assert (gammas[0] == 0).all() and (gammas < 1).all()
    assert (gammas[1:] >= gammas[:-1]).all()  # rises with depth


def test_lower_bound_init_is_uniform():
    gammas = HierarchicalLowerBound(4, 2)()
    torch.testing.assert_close(gammas[:, 0], torch.tensor([0.0, 0.25, 0.5, 0.75]))


def test_phase_init():
    theta = HGRU(6).theta_reverse
    torch.testing.assert_close(theta.data, torch.tensor([10000 ** (-2 * j / 6) for j in range(6)]))
    torch.testing.assert_close(phase_init(6), theta.data)


def test_parameter_count_matches_spec_formula():
    d = 12
    assert sum(p.numel() for p in HGRU(d).parameters()) == 7 * d * d + 12 * d
    # causal: one phase; real-valued: width d, no phase
    assert sum(p.numel() for p in HGRU(d, causal=True).parameters()) == 7 * d * d + 11 * d
    assert sum(p.numel() for p in HGRU(d, complex_valued=False).parameters()) == 4 * d * d + 6 * d


def reference_hgru(m: HGRU, x, gamma):
    """The mixer of docs/spec.md §1 written out with an explicit loop over tokens."""
    d = m.dim
    p = torch.cat(m.in_proj(x), -1)  # [c | mu] and the gate, as one [c | mu | gate]
    c = torch.nn.functional.silu(p[..., :2 * d])
    lam = gamma + (1 - gamma) * torch.sigmoid(p[..., 2 * d:3 * d])
    g = torch.nn.functional.silu(p[..., 3 * d:])
    cr, ci = (1 - lam) * c[..., :d], (1 - lam) * c[..., d:]
    B, N, _ = x.shape

    def run(theta, order):
        hr = torch.zeros(B, d, dtype=x.dtype)
        hi = torch.zeros(B, d, dtype=x.dtype)
        outs = [None] * N
        for t in order:
            a, b = lam[:, t] * torch.cos(theta), lam[:, t] * torch.sin(theta)
            hr, hi = a * hr - b * hi + cr[:, t], a * hi + b * hr + ci[:, t]
            outs[t] = torch.cat([hr, hi], -1)
        return torch.stack(outs, 1)

    h = run(m.theta_forward, range(N))
    if not m.causal:
        h = h + run(m.theta_reverse, reversed(range(N)))
    return m.out_proj(torch.nn.functional.layer_norm(h, (2 * d,), m.norm.weight, m.norm.bias,
                                                     m.norm.eps) * g)


@pytest.mark.parametrize("causal", [False, True])
def test_hgru_matches_spec_formula(causal):
    torch.manual_seed(0)
    m = HGRU(5, causal=causal).double()
    x = torch.randn(2, 11, 5, dtype=torch.float64)
    gamma = torch.rand(5, dtype=torch.float64) * 0.9
    torch.testing.assert_close(m(x, gamma), reference_hgru(m, x, gamma))


@pytest.mark.parametrize("complex_valued", [True, False])
def test_causal_step_equals_parallel(complex_valued):
    torch.manual_seed(0)
    m = HGRU(6, causal=True, complex_valued=complex_valued).double()
    x = torch.randn(3, 13, 6, dtype=torch.float64)
    gamma = torch.full((6,), 0.3, dtype=torch.float64)
    y = m(x, gamma)
    state, steps = None, []
    for t in range(x.shape[1]):
        out, state = m.step(x[:, t], state, gamma)
        steps.append(out)
    torch.testing.assert_close(torch.stack(steps, 1), y)
    # segments chained through forward_with_state give the same outputs and state
    y1, s1 = m.forward_with_state(x[:, :5], gamma)
    y2, s2 = m.forward_with_state(x[:, 5:], gamma, s1)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y)
    if complex_valued:
        torch.testing.assert_close(s2[0], state[0])
    else:
        torch.testing.assert_close(s2, state)


def test_causal_is_causal_and_bidirectional_is_not():
    torch.manual_seed(0)
    x = torch.randn(1, 9, 4)
    x2 = x.clone()
    x2[:, 6] += 1.0
    c = HGRU(4, causal=True)
    b = HGRU(4)
    assert torch.equal(c(x)[:, :6], c(x2)[:, :6])
    assert not torch.allclose(b(x)[:, :6], b(x2)[:, :6])


def test_gradcheck_mixer():
    torch.manual_seed(0)
    m = HGRU(3).double()
    x = torch.randn(2, 4, 3, dtype=torch.float64, requires_grad=True)
    gamma = torch.rand(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, g: m(x, g), (x, gamma))
    out = m(x, gamma).sum()
    out.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())


def test_backends_agree_in_the_mixer():
    torch.manual_seed(0)
    m = HGRU(8)
    x = torch.randn(2, 20, 8)
    gamma = torch.rand(8) * 0.5
    y_torch = m(x, gamma)
    m.backend = "reference"
    torch.testing.assert_close(m(x, gamma), y_torch, rtol=1e-5, atol=1e-5)


def test_autocast_bf16():
    m = HGRU(8)
    x = torch.randn(2, 10, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), m(x), rtol=0.05, atol=0.05)


def test_registry_and_attention_mixer():
    assert {"hgru", "attention"} <= set(list_mixers())
    att = create_mixer("attention", 128)
    assert isinstance(att, TokenMixer)
    x = torch.randn(2, 7, 128)
    y = att(x, torch.zeros(128))
    assert y.shape == x.shape
    # attention is permutation-equivariant over tokens; the HGRU is not
    perm = torch.randperm(7)
    torch.testing.assert_close(att(x[:, perm]), y[:, perm], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="unknown token mixer 'conv'.*attention.*hgru"):
        create_mixer("conv", 8)


def test_mixer_bad_input():
    m = HGRU(8)
    with pytest.raises(ValueError, match=r"HGRU was built for 8 channels.*\(2, 5, 7\)"):
        m(torch.randn(2, 5, 7))
    with pytest.raises(ValueError, match=r"expects tokens of shape \(B, N, 8\).*4-D"):
        m(torch.randn(2, 5, 8, 1))
    with pytest.raises(RuntimeError, match="needs a causal mixer"):
        m.step(torch.randn(2, 8))


def test_hgru_without_recurrence_is_the_hgru_minus_its_scan():
    """The benchmark diagnostic keeps the HGRU's parameters (same state dict) and computes
    out_proj(norm_gate(c, gate)): everything but the recurrence."""
    torch.manual_seed(0)
    hgru = HGRU(8)
    diag = create_mixer("hgru_no_recurrence", 8)
    assert diag.load_state_dict(hgru.state_dict()).missing_keys == []
    x = torch.randn(2, 5, 8)
    core, gate = hgru.in_proj(x)
    expected = hgru.out_proj(hgru.norm(core[..., :16], gate))
    torch.testing.assert_close(diag(x), expected)
    assert not torch.allclose(hgru(x), diag(x))
    with pytest.raises(RuntimeError, match="no state"):
        diag.forward_with_state(x)
