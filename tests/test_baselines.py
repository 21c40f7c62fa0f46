"""Each baseline's defining property (spec §7), checked against its definition computed in the test."""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import holder

from goat.adapters import apply_adapter, method_config


def svd64(weight):
    U, S, Vh = torch.linalg.svd(weight.detach().double(), full_matrices=False)
    return U, S, Vh.T


def peft_layer(model):
    return model.base_model.model.proj


@pytest.mark.parametrize("method,principal", [("pissa", True), ("milora", False)])
def test_pissa_takes_principal_and_milora_minor_singular_components(method, principal):
    model = holder(24, 20, dtype=torch.float32)
    W0 = model.proj.weight.detach().clone()
    adapted = apply_adapter(model, method_config(method, r=4, lora_alpha=8, svd_cache_dir=None))
    layer = peft_layer(adapted)
    s = layer.scaling["default"]
    assert s == pytest.approx(8 / 4)  # alpha / r, the original papers (no rho shrink)
    U, S, V = svd64(W0)
    idx = torch.arange(4) if principal else torch.arange(20 - 4, 20)
    segment = (U[:, idx] * S[idx]) @ V[:, idx].T
    BA = layer.lora_B["default"].weight.double() @ layer.lora_A["default"].weight.double()
    torch.testing.assert_close(s * BA, segment, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(layer.base_layer.weight.double(), W0.double() - segment, rtol=1e-4, atol=1e-5)


def test_reference_svd_shrink_variant_divides_by_rho():
    model = holder(16, 16, dtype=torch.float32)
    W0 = model.proj.weight.detach().clone()
    adapted = apply_adapter(model, method_config("milora", r=4, lora_alpha=8, svd_shrink=True, svd_cache_dir=None))
    layer = peft_layer(adapted)
    U, S, V = svd64(W0)
    segment = (U[:, 12:] * S[12:]) @ V[:, 12:].T
    BA = layer.lora_B["default"].weight.double() @ layer.lora_A["default"].weight.double()
    torch.testing.assert_close(2.0 * BA, segment / 10.0, rtol=1e-4, atol=1e-6)


def test_dora_magnitude_is_row_norm_of_w0_and_trainable():
    model = holder(12, 10, dtype=torch.float32)
    W0 = model.proj.weight.detach().clone()
    layer = peft_layer(apply_adapter(model, method_config("dora", r=4, lora_alpha=8)))
    magnitude = layer.lora_magnitude_vector["default"].weight
    torch.testing.assert_close(magnitude, W0.norm(dim=1))  # B = 0 at init: ||W0 + sBA|| = ||W0||
    assert magnitude.requires_grad and magnitude.shape == (10,)


def test_rslora_scales_by_alpha_over_root_r_and_lora_by_alpha_over_r():
    rs = peft_layer(apply_adapter(holder(16, 16, dtype=torch.float32), method_config("rslora", r=16, lora_alpha=32)))
    plain = peft_layer(apply_adapter(holder(16, 16, dtype=torch.float32), method_config("lora", r=16, lora_alpha=32)))
    assert rs.scaling["default"] == pytest.approx(32 / math.sqrt(16))
    assert plain.scaling["default"] == pytest.approx(32 / 16)
    assert torch.count_nonzero(rs.lora_B["default"].weight) == 0  # zero-init B (the reference's bug, spec §7)


def test_hydralora_shares_one_A_across_heads_and_routes_over_B_heads():
    model = holder(16, 12)
    apply_adapter(model.eval(), method_config("hydralora", r=8, num_experts=4, top_k=4, svd_cache_dir=None))
    layer = model.proj
    assert layer.lora_A.shape == (2, 16)  # one shared A of rank d = r / E
    assert layer.lora_B.shape == (12, 8)  # E heads B_i of rank d
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(5, 16, dtype=torch.float64)
    # y = base(x) + s * sum_i w_i B_i A x, w = softmax over all heads (top_k = E)
    weights = F.softmax(x @ layer.routing.lora_router.weight.t(), dim=-1)
    shared = x @ layer.lora_A.t()
    expected = layer.base_layer(x) + sum(
        weights[:, i, None] * layer.scaling[i].double() * (shared @ layer.lora_B[:, 2 * i : 2 * i + 2].t())
        for i in range(4)
    )
    torch.testing.assert_close(layer(x), expected, rtol=1e-12, atol=1e-12)


def test_adamole_activates_experts_above_threshold_with_renormalised_excess():
    model = holder(16, 12)
    apply_adapter(model.eval(), method_config("adamole", r=8, num_experts=4, svd_cache_dir=None))
    layer = model.proj
    threshold = layer.routing.gate.lora_threshold
    assert threshold.weight.shape == (1, 16) and threshold.bias.shape == (1,)
    x = torch.randn(6, 16, dtype=torch.float64)
    probs = F.softmax(x @ layer.routing.lora_router.weight.t(), dim=-1)
    tau = torch.sigmoid(threshold(x)) / 4
    excess = (probs - tau).clamp_min(0)
    gates, dispatch, _, _ = layer.routing.gate(probs, x)
    torch.testing.assert_close(gates, excess / excess.sum(-1, keepdim=True), rtol=1e-12, atol=1e-12)
    assert torch.equal(dispatch.bool(), probs > tau)
    # a threshold above every probability switches all experts off: the layer returns its base output
    with torch.no_grad():
        threshold.bias.fill_(50.0)
        layer.routing.lora_router.weight.zero_()  # p_i = 1/4 = max tau, so nothing exceeds it
        layer.lora_B.normal_()
    torch.testing.assert_close(layer(x), layer.base_layer(x), rtol=0, atol=0)


@pytest.mark.parametrize("method", ["molora", "adamole", "hydralora"])
def test_zero_init_moe_baselines_start_at_the_pretrained_function(method):
    model = holder(16, 12)
    expected = model(torch.ones(3, 16, dtype=torch.float64))
    apply_adapter(model, method_config(method, r=8, num_experts=4, top_k=2 if method == "molora" else 4))
    assert torch.count_nonzero(model.proj.lora_B) == 0
    torch.testing.assert_close(model(torch.ones(3, 16, dtype=torch.float64)), expected, rtol=0, atol=0)


def test_full_ft_moe_upcycles_w0_into_trainable_experts_with_equal_output():
    model = holder(16, 12)
    W0, b0 = model.proj.weight.detach().clone(), model.proj.bias.detach().clone()
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    expected = model(x)
    apply_adapter(model, method_config("full_ft_moe", num_experts=4, top_k=2))
    layer = model.proj
    assert layer.expert_weight.shape == (4, 12, 16) and all(torch.equal(w, W0) for w in layer.expert_weight)
    assert all(torch.equal(b, b0) for b in layer.expert_bias)
    assert all(p.requires_grad for p in model.parameters())
    torch.testing.assert_close(model(x), expected, rtol=1e-12, atol=1e-12)
    with torch.no_grad():  # experts that differ: output is the renormalised top-2 mixture
        layer.expert_weight.normal_()
    probs = F.softmax(x.reshape(-1, 16) @ layer.routing.lora_router.weight.t(), dim=-1)
    values, index = probs.topk(2, dim=-1)
    weights = values / values.sum(-1, keepdim=True)
    rows = []
    for t, token in enumerate(x.reshape(-1, 16)):
        rows.append(sum(weights[t, j] * (layer.expert_weight[index[t, j]] @ token + b0) for j in range(2)))
    torch.testing.assert_close(model(x).reshape(-1, 12), torch.stack(rows), rtol=1e-12, atol=1e-12)


def test_only_adapters_and_head_train():
    from conftest import tiny_bert

    for method in ("goat", "lora"):
        model = apply_adapter(tiny_bert(), method_config(method, r=8, svd_cache_dir=None))
        trainable = {name for name, p in model.named_parameters() if p.requires_grad}
        assert trainable and all("lora_" in name or "classifier" in name for name in trainable), method
        assert any("classifier" in name for name in trainable)
        assert not any("word_embeddings" in name or "LayerNorm" in name for name in trainable)
