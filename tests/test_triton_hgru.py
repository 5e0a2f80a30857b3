"""The fused HGRU-core kernels (hgrn_core/kernels/triton_hgru.py) against a naive loop.

The reference below is written from the contract alone: gates in fp64 with torch ops, the
recurrence as a plain Python loop over t, gradients by autograd. Without CUDA the kernels
run in Triton's interpreter (TRITON_INTERPRET=1, set by tests/conftest.py); shapes are tiny
and several tiles per program / several sequence segments are forced with
``triton_hgru.override_config``.
"""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton", minversion="3.6")  # hgrn_core.backends.MIN_TRITON

import hgrn_core  # noqa: E402
from hgrn_core.kernels import triton_hgru  # noqa: E402
from hgrn_core.kernels.triton_hgru import hgru_backward, hgru_forward  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# launch layouts: default (one tile), several tiles per program (channel blocks permuted as
# on the GPU: vec < block_d; with and without prefetch), segmented (2 launches)
SMALL = dict(block_t=4, block_d=4)
LAYOUTS = {
    "default": {},
    "tiles": dict(block_t=4, block_d=4, vec=1, prefetch=False),
    "segments": dict(block_t=4, block_d=8, vec=2, segments=3),
}


# ------------------------------------------------------------------------------ reference
def ref_hgru(proj, lb, thf, thr, h0, direction):
    """h, hN of the contract, in fp64, by a Python loop over t (differentiable)."""
    p = proj.double()
    real = thf is None
    B, N, C = p.shape
    d = C // 2 if real else C // 3
    W = d if real else 2 * d
    c, mu = p[..., :W], p[..., W:]
    s = torch.sigmoid(mu)
    g = lb.double() if lb is not None else torch.zeros(d, dtype=torch.float64, device=p.device)
    lam = g + (1 - g) * s
    ct = c * torch.sigmoid(c)
    xr = (1 - lam) * ct[..., :d]
    xi = None if real else (1 - lam) * ct[..., d:]

    def walk(theta, order, init):
        zero = torch.zeros(B, d, dtype=torch.float64, device=p.device)
        if real:
            hr = init if init is not None else zero
        else:
            hr = init[:, :d] if init is not None else zero
            hi = init[:, d:] if init is not None else zero
            cs, sn = torch.cos(theta.double()), torch.sin(theta.double())
        out = [None] * N
        for t in order:
            if real:
                hr = lam[:, t] * hr + xr[:, t]
                out[t] = hr
            else:
                ar, ai = lam[:, t] * cs, lam[:, t] * sn
                hr, hi = ar * hr - ai * hi + xr[:, t], ar * hi + ai * hr + xi[:, t]
                out[t] = torch.cat([hr, hi], -1)
        fin = hr if real else torch.cat([hr, hi], -1)
        return torch.stack(out, 1), fin

    if direction == "forward":
        return walk(thf, range(N), h0)
    if direction == "reverse":
        return walk(thr, range(N - 1, -1, -1), h0)
    hf, _ = walk(thf, range(N), None)
    hb, _ = walk(thr, range(N - 1, -1, -1), None)
    return hf + hb, torch.zeros(B, W, dtype=torch.float64, device=p.device)


def make(B, N, d, real=False, dtype=torch.float32, lb="rand", h0=False, direction="both",
         mu_shift=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = d if real else 2 * d
    proj = torch.randn(B, N, W + d, generator=g)
    proj[..., W:] += mu_shift
    t = dict(proj=proj.to(DEVICE, dtype))
    if lb == "rand":
        t["lb"] = (torch.rand(d, generator=g) * 0.9).to(DEVICE)
    elif lb == "zero":
        t["lb"] = torch.zeros(d, device=DEVICE)
    else:
        t["lb"] = None
    t["thf"] = None if real else torch.randn(d, generator=g).to(DEVICE)
    t["thr"] = None if real or direction == "forward" else torch.randn(d, generator=g).to(DEVICE)
    t["h0"] = torch.randn(B, W, generator=g).to(DEVICE) if h0 else None
    t["dh"] = torch.randn(B, N, W, generator=g).to(DEVICE, dtype)
    t["dhN"] = torch.randn(B, W, generator=g).to(DEVICE) if direction != "both" else None
    return t


def ref_all(t, direction):
    """Reference outputs and gradients (fp64) for the inputs ``t``."""
    leaves = {k: (t[k].detach().double().requires_grad_() if t[k] is not None else None)
              for k in ("proj", "lb", "thf", "thr", "h0")}
    h, hN = ref_hgru(leaves["proj"], leaves["lb"], leaves["thf"], leaves["thr"], leaves["h0"],
                     direction)
    loss = (h * t["dh"].double()).sum()
    if t["dhN"] is not None:
        loss = loss + (hN * t["dhN"].double()).sum()
    names = [k for k, v in leaves.items() if v is not None]
    grads = torch.autograd.grad(loss, [leaves[k] for k in names], allow_unused=True)
    out = dict(h=h.detach(), hN=hN.detach())
    for k, gr in zip(names, grads):
        out["d" + k] = torch.zeros_like(leaves[k]) if gr is None else gr
    return out


def run_all(t, direction):
    h, hN = hgru_forward(t["proj"], t["lb"], t["thf"], t["thr"], t["h0"], direction)
    dproj, dlb, dtf, dtr, dh0 = hgru_backward(t["dh"], t["dhN"], t["proj"], t["lb"], t["thf"],
                                              t["thr"], t["h0"], direction)
    return dict(h=h, hN=hN, dproj=dproj, dlb=dlb, dthf=dtf, dthr=dtr, dh0=dh0)


def close(a, b, tol, what):
    assert a is not None and b is not None, f"{what}: missing ({a is None}, {b is None})"
    assert a.shape == b.shape, f"{what}: shape {tuple(a.shape)} vs {tuple(b.shape)}"
    a, b = a.double().cpu(), b.double().cpu()
    assert torch.isfinite(a).all(), f"{what}: non-finite values"
    scale = max(1.0, b.abs().max().item())
    err = (a - b).abs().max().item()
    assert err <= tol * scale, f"{what}: max err {err:.3g} (scale {scale:.3g}, tol {tol})"


def check(t, direction, tol=1e-4, skip=()):
    ref = ref_all(t, direction)
    got = run_all(t, direction)
    assert got["h"].dtype == t["proj"].dtype and got["h"].is_contiguous()
    assert got["dproj"].dtype == t["proj"].dtype and got["dproj"].is_contiguous()
    assert got["hN"].dtype == (torch.float64 if t["proj"].dtype == torch.float64
                               else torch.float32)
    for k in ("h", "hN", "dproj", "dlb", "dthf", "dthr", "dh0"):
        if k in skip:
            continue
        want = ref.get(k)
        unused = ((k == "dthf" and direction == "reverse")
                  or (k == "dthr" and direction == "forward"))
        if want is None or unused:
            # no such input, or one the direction does not use (its gradient is zero)
            assert got[k] is None, f"{k}: expected None"
            assert want is None or not want.any(), f"{k}: reference not zero"
            continue
        close(got[k], want, tol, k)
    return got, ref


# ---------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("direction", ["forward", "reverse", "both"])
@pytest.mark.parametrize("real", [False, True], ids=["complex", "real"])
def test_directions_layouts(direction, real, layout):
    """Every output and gradient, each direction, complex and real, odd N, d not a multiple
    of the block, non-zero lower bound, h0 + dhN for single directions."""
    single = direction != "both"
    t = make(2, 33 if layout != "default" else 7, 5, real=real, h0=single,
             direction=direction, seed=hash((direction, real, layout)) % 1000)
    with triton_hgru.override_config(**LAYOUTS[layout]):
        check(t, direction)


@pytest.mark.parametrize("N,d", [(1, 3), (5, 17), (7, 3), (33, 5)])
@pytest.mark.parametrize("direction", ["forward", "reverse", "both"])
def test_shapes(N, d, direction):
    t = make(2, N, d, h0=direction != "both", direction=direction, seed=N * 100 + d)
    with triton_hgru.override_config(block_t=8, block_d=8):
        check(t, direction)


@pytest.mark.parametrize("direction", ["forward", "reverse", "both"])
@pytest.mark.parametrize("real", [False, True], ids=["complex", "real"])
def test_even_shapes(direction, real):
    """N a multiple of the tile and d of the channel block: the kernels drop their masks
    (EVEN_N / EVEN_D); several tiles and channel blocks, permuted channel layout."""
    t = make(2, 16, 8, real=real, h0=direction != "both", direction=direction, seed=21)
    with triton_hgru.override_config(block_t=4, block_d=4, vec=2):
        cfg = triton_hgru._Cfg(2, 16, 8, torch.device(DEVICE), bwd=False)
        assert 16 % cfg.block_t == 0 and 8 % cfg.block_d == 0 and cfg.n_tiles > 1
        check(t, direction)


@pytest.mark.parametrize("lb", ["zero", "none"])
@pytest.mark.parametrize("direction", ["forward", "both"])
def test_lower_bound_zero_and_none(lb, direction):
    t = make(2, 9, 5, lb=lb, direction=direction, seed=7)
    with triton_hgru.override_config(**SMALL):
        got, _ = check(t, direction)
    assert (got["dlb"] is None) == (lb == "none")


@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 3e-2), (torch.float16, 4e-3)])
@pytest.mark.parametrize("direction", ["forward", "both"])
def test_low_precision(dtype, tol, direction):
    """bf16 / fp16 inputs: the same function of the rounded inputs, fp32 inside, output and
    dproj rounded once."""
    t = make(2, 13, 5, dtype=dtype, h0=direction != "both", direction=direction, seed=3)
    with triton_hgru.override_config(**SMALL):
        got, ref = check(t, direction, tol=tol)
    # not merely within tolerance: close to what fp32 rounding of the exact result gives
    err = (got["h"].double().cpu() - ref["h"].cpu()).abs().max().item()
    assert err <= 4 * (ref["h"].abs().max().item() * torch.finfo(dtype).eps)


@pytest.mark.parametrize("direction", ["forward", "reverse", "both"])
def test_strided_proj(direction):
    """proj as a column slice of a wider projection, and with a transposed batch layout:
    read in place (no copy), same results as the contiguous tensor."""
    B, N, d = 2, 10, 5
    W = 2 * d
    base = make(B, N, d, h0=direction != "both", direction=direction, seed=11)
    g = torch.Generator().manual_seed(5)
    wide = torch.randn(B, N, W + d + 2 * d + 3, generator=g).to(DEVICE)
    wide[..., 1:1 + W + d] = base["proj"]
    t = dict(base, proj=wide[..., 1:1 + W + d])
    assert not t["proj"].is_contiguous()
    with triton_hgru.override_config(**SMALL):
        got, _ = check(t, direction)
    # (N, B, C) storage viewed as (B, N, C): batch stride C, row stride B*C
    nb = base["proj"].transpose(0, 1).contiguous().transpose(0, 1)
    assert nb.stride(0) == W + d and nb.stride(1) == B * (W + d)
    t2 = dict(base, proj=nb, dh=base["dh"].transpose(0, 1).contiguous().transpose(0, 1))
    with triton_hgru.override_config(**SMALL):
        check(t2, direction)


def test_no_copy_of_proj(monkeypatch):
    """The wrappers hand the strided view itself to the kernel."""
    seen = {}
    orig = triton_hgru._hgru_fwd_kernel

    class Spy:
        def __getitem__(self, grid):
            def launch(**kw):
                seen["P"] = kw["P"]
                return orig[grid](**kw)
            return launch

    monkeypatch.setattr(triton_hgru, "_hgru_fwd_kernel", Spy())
    t = make(2, 6, 3, seed=2)
    wide = torch.randn(2, 6, 20).to(DEVICE)
    view = wide[..., 2:11]
    view.copy_(t["proj"])
    hgru_forward(view, t["lb"], t["thf"], t["thr"], None, "both")
    assert seen["P"].data_ptr() == view.data_ptr() and seen["P"].stride() == view.stride()


@pytest.mark.parametrize("direction,mu_shift,lb", [
    ("forward", -60.0, "none"), ("both", -60.0, "none"), ("reverse", -15.0, "none"),
    ("forward", 40.0, "rand"), ("both", 40.0, "rand"), ("reverse", 12.0, "zero"),
    ("both", 12.0, "zero")])
def test_lam_extremes(direction, mu_shift, lb):
    """lam ~ 0 (mu very negative, no bound: the state forgets at once) and lam ~ 1 (mu very
    positive: x ~ 0, the state is carried unchanged): finite and exact."""
    t = make(2, 11, 3, lb=lb, h0=direction != "both", direction=direction, mu_shift=mu_shift,
             seed=int(abs(mu_shift)))
    with triton_hgru.override_config(**SMALL, segments=2):
        check(t, direction)


@pytest.mark.parametrize("direction,real", [("forward", False), ("reverse", False),
                                            ("both", False), ("both", True),
                                            ("forward", True)])
def test_gradcheck_fp64(direction, real):
    """fp64 through the same kernels: torch.autograd.gradcheck of a thin autograd wrapper,
    every input (proj, lower bound, phases, h0) and both outputs (h, hN)."""

    class HGRU(torch.autograd.Function):
        @staticmethod
        def forward(ctx, proj, lb, thf, thr, h0):
            ctx.save_for_backward(proj, lb, thf, thr, h0)
            return hgru_forward(proj, lb, thf, thr, h0, direction)

        @staticmethod
        def backward(ctx, dh, dhN):
            proj, lb, thf, thr, h0 = ctx.saved_tensors
            return hgru_backward(dh, dhN, proj, lb, thf, thr, h0, direction)

    single = direction != "both"
    t = make(1, 6, 2, real=real, dtype=torch.float64, h0=single, direction=direction, seed=4)
    args = [t["proj"], t["lb"].double(), t["thf"], t["thr"], t["h0"]]
    args = [a.double().requires_grad_() if a is not None else None for a in args]
    with triton_hgru.override_config(block_t=2, block_d=2, segments=2):
        if single:
            assert torch.autograd.gradcheck(lambda *a: HGRU.apply(*a), args, eps=1e-6,
                                            atol=1e-7, rtol=1e-5, fast_mode=True)
        else:
            assert torch.autograd.gradcheck(lambda *a: HGRU.apply(*a)[0], args, eps=1e-6,
                                            atol=1e-7, rtol=1e-5, fast_mode=True)


def test_segments_match_single_walk():
    """The segmented scheme (S = 1..5) gives the single walk's results to rounding."""
    t = make(2, 17, 5, h0=True, direction="forward", seed=9)
    outs = []
    for S in (1, 4):
        with triton_hgru.override_config(**SMALL, segments=S):
            outs.append(run_all(t, "forward"))
    for o in outs[1:]:
        for k in ("h", "hN", "dproj", "dlb", "dthf", "dh0"):
            close(o[k], outs[0][k], 1e-5, f"segments {k}")


def test_config_segments_heuristic():
    """Few (batch, channel-block) programs for a long sequence: split into segments; enough
    programs or a short sequence: one walk per program."""
    with triton_hgru.override_config(block_t=16, block_d=64, target_programs=264):
        few = triton_hgru._Cfg(8, 16384, 384, torch.device("cpu"), bwd=False)
        many = triton_hgru._Cfg(256, 256, 384, torch.device("cpu"), bwd=False)
        short = triton_hgru._Cfg(2, 64, 384, torch.device("cpu"), bwd=False)
    assert few.n_seg > 1 and few.n_seg * few.tps >= few.n_tiles
    assert (few.n_seg - 1) * few.tps < few.n_tiles
    assert many.n_seg == 1 and short.n_seg == 1


def test_errors():
    t = make(1, 4, 3, seed=1)
    with pytest.raises(ValueError):
        hgru_forward(t["proj"], None, t["thf"], t["thr"], None, "sideways")
    with pytest.raises(ValueError):
        hgru_forward(t["proj"], None, t["thf"], t["thr"], torch.zeros(1, 6, device=DEVICE),
                     "both")
    with pytest.raises(ValueError):
        hgru_forward(t["proj"][..., :-1], None, t["thf"], t["thr"], None, "both")


# ---------------------------------------------------------------- the GPU's fast math, emulated
@pytest.mark.skipif(DEVICE == "cuda", reason="the interpreter's emulation of the GPU's fast math")
@pytest.mark.parametrize("fast,direction,mu_shift,lb", [
    (2, "both", 0.0, "rand"), (3, "forward", 12.0, "rand"), (2, "reverse", -30.0, "none"),
    (3, "both", 40.0, "zero")], ids=["up-both", "down-forward-mu12", "up-reverse-mu-30",
                                     "down-both-mu40"])
def test_fast_math_emulated_at_its_error_bound(fast, direction, mu_shift, lb):
    """fp32 through the branch the GPU runs (ex2.approx / div.approx, each result moved by the
    documented 2 ulp, flushed to zero): still within the fp32 tolerance of the fp64 reference,
    saturated gates included; and the emulation is engaged (results differ from exact math)."""
    t = make(2, 13, 5, lb=lb, h0=direction != "both", direction=direction, mu_shift=mu_shift,
             seed=7)
    assert triton_hgru._fast_math(triton_hgru._Cfg(2, 13, 5, torch.device("cpu"), False),
                                  torch.float32) == 2          # the interpreter's default
    with triton_hgru.override_config(**SMALL, segments=2, fast=fast):
        check(t, direction, tol=2e-5)
        emulated = run_all(t, direction)
    with triton_hgru.override_config(**SMALL, segments=2, fast=0):
        exact = run_all(t, direction)
    # engaged: some output moved (near lam = 1, h alone may round to the same values)
    assert any(not torch.equal(emulated[k], exact[k]) for k in ("h", "dproj"))


def test_fast_math_is_the_gpus_branch_and_fp64_stays_exact():
    cfg = triton_hgru._Cfg(1, 8, 4, torch.device("cpu"), False)
    assert triton_hgru._fast_math(cfg, torch.float64) == 0
    assert triton_hgru._fast_math(cfg, torch.bfloat16) == 2
    cfg.on_gpu = True
    assert triton_hgru._fast_math(cfg, torch.float32) == 1    # libdevice fast_expf / fast_dividef
    assert triton_hgru._fast_math(cfg, torch.float64) == 0


def test_reverse_through_the_public_entry_takes_theta_reverse_alone():
    """hgru(direction='reverse') hands the backend theta_reverse only (theta_f None): the
    wrapper must read that as a complex HGRU, not as a real one given a stray phase."""
    g = torch.Generator().manual_seed(5)
    proj = torch.randn(2, 9, 12, generator=g, dtype=torch.float64).to(DEVICE).requires_grad_()
    tr = torch.randn(4, generator=g, dtype=torch.float64).to(DEVICE).requires_grad_()
    h0 = torch.randn(2, 8, generator=g, dtype=torch.float64).to(DEVICE).requires_grad_()
    res = {}
    for be in ("reference", "triton"):
        h, hN = hgrn_core.hgru(proj, None, None, tr, direction="reverse", initial_state=h0,
                               return_final_state=True, backend=be)
        res[be] = (h, hN) + torch.autograd.grad((h * h.detach().sin()).sum() + hN.sum(),
                                                (proj, tr, h0))
    for a, b in zip(res["reference"], res["triton"]):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-10)
