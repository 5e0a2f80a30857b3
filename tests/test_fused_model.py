"""Whole HGRN-DeiT models on the fused Triton ops (``hgrn::hgru`` + ``hgrn::norm_gate``, in
Triton's interpreter without a GPU) against the same weights on the torch backend."""
import pytest
import timm
import torch

pytest.importorskip("triton", minversion="3.6")  # hgrn_core.backends.MIN_TRITON

import hgrn_vision  # noqa: E402,F401  (registers the models)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _set_backend(model, name):
    for block in model.blocks:
        block.mixer.backend = name


@pytest.mark.parametrize("complex_valued", [True, False])
def test_triton_and_torch_backends_give_the_same_model(complex_valued):
    torch.manual_seed(0)
    # width 24 (not a multiple of the kernels' channel block), 5 x 3 = 15 tokens (odd)
    model = timm.create_model("hgrn_deit_tiny", embed_dim=24, depth=2, glu_hidden_dim=32,
                              num_classes=7).to(DEVICE)
    if not complex_valued:  # the real-valued HGRU through the same op
        from hgrn_core import HGRU
        for block in model.blocks:
            block.mixer = HGRU(24, complex_valued=False).to(DEVICE)
    with torch.no_grad():  # a non-trivial lower bound in every layer
        model.lower_bound.logits.normal_()
    x = torch.randn(2, 3, 70, 42, device=DEVICE)
    results = {}
    for backend in ("torch", "triton"):
        _set_backend(model, backend)
        model.zero_grad()
        xi = x.clone().requires_grad_()
        logits = model(xi)
        (logits * torch.arange(7, device=DEVICE)).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results[backend] = (logits.detach(), xi.grad, grads)
    (l_t, gx_t, gp_t), (l_k, gx_k, gp_k) = results["torch"], results["triton"]
    torch.testing.assert_close(l_k, l_t, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gx_k, gx_t, rtol=1e-4, atol=1e-6)
    assert gp_k.keys() == gp_t.keys() and "lower_bound.logits" in gp_t
    for name in gp_t:
        torch.testing.assert_close(gp_k[name], gp_t[name], rtol=1e-4, atol=1e-5, msg=name)
