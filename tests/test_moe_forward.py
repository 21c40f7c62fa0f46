"""The vectorised LoRA-MoE forward against a plain per-expert loop, PEFT LoRA, and the balance loss."""

import pytest
import torch
import torch.nn.functional as F
from conftest import holder
from peft import LoraConfig, get_peft_model

from goat.adapters import apply_adapter, auxiliary_loss, expert_load, method_config, token_mask
from goat.adapters.moe import balance_loss
from goat.adapters.slot_dropout import draw_keep_masks


def loop_reference(layer, x, slot_masks=None):
    """The official code's way (spec §1): for each expert, gather its tokens, run it, scatter-add."""
    E, d = layer.num_experts, layer.expert_rank
    x2d = x.reshape(-1, layer.in_features)
    probs = F.softmax(x2d @ layer.routing.lora_router.weight.t(), dim=-1)
    k = layer.routing.gate.top_k  # ties go to the lower index (torch.topk leaves their order unspecified)
    values, index = (t[:, :k] for t in probs.sort(dim=-1, descending=True, stable=True))
    weights = values / values.sum(-1, keepdim=True)
    out = x2d @ layer.base_layer.weight.t() + layer.base_layer.bias
    for e in range(E):
        A = layer.lora_A[e * d : (e + 1) * d]
        B = layer.lora_B[:, e * d : (e + 1) * d]
        for slot in range(index.shape[1]):
            rows = (index[:, slot] == e).nonzero().squeeze(1)
            inputs = x2d[rows] if slot_masks is None else x2d[rows] * slot_masks[slot][rows]
            expert_out = (inputs @ A.t()) @ B.t() * layer.scaling[e].double()
            out = out.index_add(0, rows, weights[rows, slot, None] * expert_out)
    return out.view(*x.shape[:-1], -1)


def goat_layer(E, k, r, n=20, m=18, dropout=0.0, seed=0):
    model = holder(n, m, seed=seed)
    cfg = method_config("goat", r=r, num_experts=E, top_k=k, lora_dropout=dropout, svd_cache_dir=None)
    apply_adapter(model, cfg)
    torch.manual_seed(seed + 1)
    with torch.no_grad():  # random B so every expert contributes
        model.proj.lora_B.normal_()
    return model.proj


def grads(layer, x):
    return [t.grad.clone() for t in (layer.lora_A, layer.lora_B, layer.routing.lora_router.weight, x)]


def clear_grads(layer, x):
    for t in (layer.lora_A, layer.lora_B, layer.routing.lora_router.weight, x):
        t.grad = None


def compare_with_loop(layer, x, dropout_masks=None, seed=0):
    clear_grads(layer, x)
    upstream = torch.randn(*x.shape[:-1], layer.out_features, dtype=torch.float64)
    torch.manual_seed(seed)
    (layer(x) * upstream).sum().backward()
    fast_out = layer(x).detach() if dropout_masks is None else None
    fast = grads(layer, x)
    clear_grads(layer, x)
    ref = loop_reference(layer, x, dropout_masks)
    (ref * upstream).sum().backward()
    if fast_out is not None:
        torch.testing.assert_close(fast_out, ref.detach(), rtol=1e-12, atol=1e-12)
    for got, want in zip(fast, grads(layer, x), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("E,k,r", [(1, 1, 4), (2, 1, 4), (4, 2, 8), (8, 2, 8), (8, 3, 16), (4, 4, 8)])
def test_vectorised_forward_and_backward_equal_per_expert_loop(E, k, r):
    layer = goat_layer(E, k, r)
    layer.train()
    x = torch.randn(3, 5, 20, dtype=torch.float64, requires_grad=True)
    compare_with_loop(layer, x)


def test_forward_equals_loop_with_tied_router_scores():
    layer = goat_layer(8, 2, 8)
    with torch.no_grad():
        layer.routing.lora_router.weight[3] = layer.routing.lora_router.weight[5]  # experts 3 and 5 always tie
        layer.routing.lora_router.weight[6] = 0.0
        layer.routing.lora_router.weight[7] = 0.0  # 6 and 7 tie too
    x = torch.randn(4, 6, 20, dtype=torch.float64, requires_grad=True)
    compare_with_loop(layer, x)
    with torch.no_grad():
        layer.routing.lora_router.weight.zero_()  # all eight tie: exactly two experts, weight 1/2 each
    x = torch.randn(2, 3, 20, dtype=torch.float64, requires_grad=True)
    compare_with_loop(layer, x)
    assert torch.equal(layer.routing.last_expert_load.sum(), torch.tensor(1.0))


def test_per_expert_dropout_equals_loop_with_one_mask_per_routed_slot():
    layer = goat_layer(4, 2, 8, dropout=0.3)
    layer.train()
    x = torch.randn(2, 7, 20, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(11)  # the same draws as the layer: one mask per top-k slot
    keep = draw_keep_masks(2, torch.empty(14, 20), 0.3)
    masks = [keep[slot].double() / 0.7 for slot in range(2)]
    compare_with_loop(layer, x, dropout_masks=masks, seed=11)
    assert not torch.equal(masks[0], masks[1])


class RandDropout(torch.nn.Module):
    """Inverted dropout drawn as goat draws it (nn.Dropout uses another draw)."""

    def __init__(self, p):
        super().__init__()
        self.p = p

    def forward(self, x):
        return x * draw_keep_masks(1, x, self.p)[0] / (1 - self.p)


def test_single_expert_top1_equals_peft_lora_output_and_gradients():
    torch.manual_seed(0)
    base = holder(16, 12)
    peft_model = get_peft_model(
        holder(16, 12), LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules=["proj"])
    )
    goat_model = apply_adapter(
        base, method_config("goat", r=4, lora_alpha=8, num_experts=1, top_k=1, lora_dropout=0.1, svd_cache_dir=None)
    )
    peft_layer = peft_model.base_model.model.proj
    peft_layer.lora_dropout["default"] = RandDropout(0.1)  # goat's draw (rand >= p), so the masks agree
    goat_layer_ = goat_model.proj
    with torch.no_grad():  # same base, same A and B
        goat_layer_.base_layer.weight.copy_(peft_layer.base_layer.weight)
        goat_layer_.lora_A.copy_(torch.randn(4, 16))
        goat_layer_.lora_B.copy_(torch.randn(12, 4))
        peft_layer.lora_A["default"].weight.copy_(goat_layer_.lora_A)
        peft_layer.lora_B["default"].weight.copy_(goat_layer_.lora_B)
    goat_model.train()
    peft_model.train()
    x = torch.randn(3, 5, 16, dtype=torch.float64)
    upstream = torch.randn(3, 5, 12, dtype=torch.float64)
    results = []
    for model, A, B in (
        (goat_model, goat_layer_.lora_A, goat_layer_.lora_B),
        (peft_model, peft_layer.lora_A["default"].weight, peft_layer.lora_B["default"].weight),
    ):
        xi = x.clone().requires_grad_()
        torch.manual_seed(5)  # same dropout draws
        out = model(xi)
        (out * upstream).sum().backward()
        results.append((out.detach(), A.grad.clone(), B.grad.clone(), xi.grad.clone()))
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_bf16_autocast_forward_matches_fp32_and_keeps_fp32_adapter_grads():
    """Under bf16 autocast the products run in bf16 and the output is bf16; the adapter's gradients stay fp32 and
    agree with an fp32 forward to bf16 precision."""
    layer = goat_layer(8, 2, 16).float()
    layer.train()
    x = torch.randn(3, 7, 20)
    results = []
    for autocast in (True, False):
        clear_grads(layer, x)
        xi = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = layer(xi)
        assert out.dtype == (torch.bfloat16 if autocast else torch.float32)
        (out.float().square().sum() + layer.routing.last_balance_loss).backward()
        assert layer.lora_A.grad.dtype == layer.lora_B.grad.dtype == torch.float32
        results.append([out.detach().float(), layer.lora_A.grad.clone(), layer.lora_B.grad.clone(), xi.grad.float()])
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want, rtol=3e-2, atol=3e-2 * want.abs().max().item())


def test_balance_loss_and_its_router_gradient_equal_a_direct_computation():
    layer = goat_layer(4, 2, 8, dropout=0.1)
    layer.train()
    x = torch.randn(2, 5, 20, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    router = layer.routing.lora_router.weight
    for convention in ("reference", "paper"):
        layer.routing.balance_convention = convention
        router.grad = None
        with token_mask(layer, mask):
            layer(x)
        layer.routing.last_balance_loss.backward()
        got, got_grad = layer.routing.last_balance_loss.detach(), router.grad.clone()
        got_load = layer.routing.last_expert_load
        router.grad = None
        probs = F.softmax(x.reshape(-1, 20) @ router.t(), dim=-1)
        dispatch = torch.zeros_like(probs).scatter(1, probs.topk(2, dim=-1).indices, 1.0)
        want, counts = balance_loss(probs, dispatch, mask.reshape(-1).double(), convention)
        want.backward()
        torch.testing.assert_close(got, want.detach(), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(got_grad, router.grad, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(got_load, counts / counts.sum(), rtol=0, atol=0)


def test_balance_loss_equals_hand_computed_value():
    probs = torch.tensor([[0.5, 0.3, 0.1, 0.1], [0.1, 0.6, 0.2, 0.1], [0.4, 0.1, 0.1, 0.4]], dtype=torch.float64)
    dispatch = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 0], [1, 0, 0, 1]], dtype=torch.float64)  # top-2
    # counts c = (2, 2, 1, 1), T = 3, mean probs P = (1.0, 1.0, 0.4, 0.6) / 3
    # reference: E * sum_i (c_i / T) P_i = 4 * (2 + 2 + 0.4 + 0.6) / 9 = 20 / 9
    assert balance_loss(probs, dispatch, None, "reference")[0].item() == pytest.approx(20 / 9)
    # paper: sum_i (E c_i / (k T)) P_i = reference / k = 10 / 9
    assert balance_loss(probs, dispatch, None, "paper")[0].item() == pytest.approx(10 / 9)
    # a padding token (weight 0) changes nothing
    padded_probs = torch.cat([probs, torch.tensor([[0.0, 0.0, 0.0, 1.0]], dtype=torch.float64)])
    padded_dispatch = torch.cat([dispatch, torch.tensor([[0, 0, 1, 1]], dtype=torch.float64)])
    weight = torch.tensor([1, 1, 1, 0], dtype=torch.float64)
    assert balance_loss(padded_probs, padded_dispatch, weight, "reference")[0].item() == pytest.approx(20 / 9)


def test_padding_tokens_do_not_change_balance_loss_or_load_and_losses_sum_over_layers():
    from conftest import tiny_bert

    model = apply_adapter(tiny_bert().double(), method_config("goat", r=8, svd_cache_dir=None))
    torch.manual_seed(0)
    ids = torch.randint(0, 100, (2, 6))
    mask = torch.ones(2, 6, dtype=torch.long)
    model(input_ids=ids, attention_mask=mask)
    unpadded = {name: layer.routing.last_balance_loss.item() for name, layer in _moe(model)}
    unpadded_load = {k: v.clone() for k, v in expert_load(model).items()}
    total = auxiliary_loss(model).item()
    # the same two sequences followed by 3 padding tokens of arbitrary ids
    padded_ids = torch.cat([ids, torch.randint(0, 100, (2, 3))], dim=1)
    padded_mask = torch.cat([mask, torch.zeros(2, 3, dtype=torch.long)], dim=1)
    model(input_ids=padded_ids, attention_mask=padded_mask)
    for name, layer in _moe(model):
        if name.endswith("pooler.dense"):
            continue  # sees one pooled token per sequence, no padding
        assert layer.routing.last_balance_loss.item() == pytest.approx(unpadded[name], rel=1e-5), name
        torch.testing.assert_close(expert_load(model)[name], unpadded_load[name], rtol=1e-5, atol=1e-6)
    # lambda * sum over layers
    assert total == pytest.approx(1e-3 * sum(unpadded.values()), rel=1e-6)
    # token_mask() sets the same mask for models called without attention_mask
    with token_mask(model, padded_mask):
        model.bert.encoder.layer[0].attention.self.query(torch.randn(2, 9, 32, dtype=torch.float64))
    assert model.bert.encoder.layer[0].attention.self.query.routing.context.token_mask is None


def _moe(model):
    from goat.adapters import moe_layers

    return list(moe_layers(model))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="host-sync detection needs CUDA")
def test_forward_and_backward_have_no_host_sync():
    layer = goat_layer(8, 2, 8, dropout=0.05).cuda()
    layer.train()
    x = torch.randn(4, 20, dtype=torch.float64, device="cuda")  # the copy from the host would count as a sync
    layer(x).sum().backward()  # the first call initialises CUDA libraries, which may sync once
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        layer(x).sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_right_padded_causal_batch_without_attention_mask_gives_the_same_loss_balance_load_and_grads():
    """The trainer's forward for causal LMs (goat.trainer.forward_right_padded): the right-padding mask goes to the
    MoE layers only, not the attention. Loss, balance loss, expert load, real tokens' logits and every gradient
    equal the masked forward's (fp64); without the MoE mask the balance loss would count the padding."""
    from conftest import tiny_llama

    from goat.trainer import forward_right_padded

    model = tiny_llama("goat", dropout=0.0, dtype=torch.float64).train()
    lengths = [7, 4, 12, 10]
    ids = torch.randint(0, 50, (4, 12))  # padding positions hold arbitrary ids
    mask = (torch.arange(12) < torch.tensor(lengths)[:, None]).long()
    labels = ids.masked_fill(mask == 0, -100)
    batch = {"input_ids": ids, "labels": labels, "attention_mask": mask}
    params = [p for p in model.parameters() if p.requires_grad]

    def run(forward):
        for p in params:
            p.grad = None
        out = forward()
        aux = auxiliary_loss(model)
        (out.loss + aux).backward()
        real = out.logits[mask.bool()]
        return out.loss.detach(), aux.detach(), real.detach(), expert_load(model), [p.grad.clone() for p in params]

    masked = run(lambda: model(**batch, use_cache=False))
    unmasked = run(lambda: forward_right_padded(model, batch, {"use_cache": False}))
    for want, got in zip(masked[:3], unmasked[:3], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    for name, load in masked[3].items():
        torch.testing.assert_close(unmasked[3][name], load, rtol=1e-10, atol=1e-12)
    for want, got in zip(masked[4], unmasked[4], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    inputs = {key: value for key, value in batch.items() if key != "attention_mask"}
    no_moe_mask = run(lambda: model(**inputs, use_cache=False))
    assert no_moe_mask[0] == pytest.approx(masked[0].item(), rel=1e-10)  # the task loss never needed the mask
    assert abs(no_moe_mask[1].item() - masked[1].item()) > 1e-6  # the balance loss does
