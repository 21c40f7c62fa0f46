"""The top-k LoRA-MoE step (router, gate, dropout, experts, balance loss) as one autograd Function.

Same arithmetic as the module path in `moe.py`, written out with a hand-made backward: autograd sees one
node instead of ~30, and no operation pays autocast dispatch. On a GPU the eager path is bound by the host
issuing kernels, not by the GPU (docs/benchmarks.md), so this is what makes GOAT cost what LoRA costs.

Shapes: T tokens, n in, m out, E experts, d per-expert rank, r = E * d, k = top-k, S dropout slots
(k with per-expert dropout in training, else 1). All products run in the compute dtype `x.dtype`
(the autocast dtype, or the adapter's dtype without autocast); routing probabilities in at least fp32.

Dropout: S independent masks of x, drawn one slot after the other (`native_dropout` of the contiguous x: the
fast vectorised kernel). The masks are not kept: backward restores the forward's RNG state and draws them
again, one slot at a time, so at most one dropped copy of x is alive.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class RouteSpec:
    """The non-tensor arguments of one call."""

    top_k: int
    dropout: float  # 0 outside training
    per_expert: bool  # one dropout mask per top-k slot (spec §1 step 4) rather than one per token
    convention: str  # balance loss: "reference" or "paper" (see moe.balance_loss)


def topk_moe_lora(x, router_weight, lora_A, lora_B, scaling, token_weight, spec: RouteSpec):
    """x (T, n) in the compute dtype -> (delta (T, m), balance loss (), expert load (E,), no grad).

    token_weight (T,) is 1 for real tokens and 0 for padding, or None when every token is real. The load is
    the fraction of routed (token, slot) pairs per expert; it sums to 1 (to 0 when every token is padding).
    """
    return _TopKMoELoRA.apply(x, router_weight, lora_A, lora_B, scaling, token_weight, spec)


def _rng_state(device: torch.device) -> torch.Tensor:
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()


def _set_rng_state(device: torch.device, state: torch.Tensor) -> None:
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    else:
        torch.set_rng_state(state)


def _dropped(x, slots: int, p: float, state: torch.Tensor | None = None):
    """Yields (dropped x, mask) for each slot; p == 0 yields x itself and no mask.

    With `state`, the draws start from that RNG state (the forward's) and the RNG is left where it was.
    """
    if p == 0:
        for _ in range(slots):
            yield x, None
        return
    now = None
    if state is not None:
        now = _rng_state(x.device)
        _set_rng_state(x.device, state)
    try:
        for _ in range(slots):
            yield torch.native_dropout(x, p, True)
    finally:
        if now is not None:
            _set_rng_state(x.device, now)


class _TopKMoELoRA(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, router_weight, lora_A, lora_B, scaling, token_weight, spec: RouteSpec):
        ctx.set_materialize_grads(False)
        with torch.autocast(x.device.type, enabled=False):
            return _forward(ctx, x, router_weight, lora_A, lora_B, scaling, token_weight, spec)

    @staticmethod
    def backward(ctx, grad_delta, grad_loss, _grad_load):
        with torch.autocast(ctx.device_type, enabled=False):
            return _backward(ctx, grad_delta, grad_loss)


def _forward(ctx, x, router_weight, lora_A, lora_B, scaling, token_weight, spec):
    tokens, cdt = x.shape[0], x.dtype
    num_experts, rank, k = router_weight.shape[0], lora_A.shape[0], spec.top_k
    router_c, A_c, B_c = router_weight.to(cdt), lora_A.to(cdt), lora_B.to(cdt)

    # Router and top-k gate (paper Eq. 10): softmax in at least fp32, renormalised over the k chosen experts.
    probs = torch.softmax(x @ router_c.t(), dim=-1, dtype=torch.promote_types(cdt, torch.float32))  # (T, E)
    values, index = probs.topk(k, dim=-1)  # (T, k)
    total = values.sum(dim=-1, keepdim=True)
    weights = values / total
    slot_scaling = scaling[index]  # (T, k): s_{e_j}
    slot_coef = weights * slot_scaling  # (T, k): w_j * s_{e_j}

    # Coefficient of each expert's d-slice, per dropout slot: (S, T, E), zero for unrouted experts.
    slots = k if spec.per_expert and spec.dropout > 0 else 1
    if slots > 1:
        coef = slot_coef.new_zeros(slots, tokens, num_experts)
        coef.scatter_(2, index.t()[..., None], slot_coef.t()[..., None])
    else:
        coef = slot_coef.new_zeros(1, tokens, num_experts).scatter_(2, index[None], slot_coef[None])
    coef = coef.to(cdt)

    state = _rng_state(x.device) if spec.dropout > 0 else None
    act = x.new_empty(slots, tokens, rank)  # (S, T, r): A applied to each slot's dropped x
    for slot, (dropped, _) in enumerate(_dropped(x, slots, spec.dropout)):
        torch.mm(dropped, A_c.t(), out=act[slot])
    act = act.view(slots, tokens, num_experts, -1)  # (S, T, E, d)
    weighted = act * coef[..., None]
    mixed = (weighted.sum(0) if slots > 1 else weighted[0]).view(tokens, rank)  # (T, r)
    delta = mixed @ B_c.t()  # (T, m)

    # Balance loss (spec §4), padding excluded: L = sum_i g_i * P_i with P_i the mean routing probability
    # and g_i = E c_i / T_real (reference) or E c_i / (k T_real) (paper); sum_i c_i = k T_real.
    if token_weight is None:
        real_tokens = float(tokens)
        mean_prob = probs.mean(0)
        pair_weight = probs.new_ones(tokens * k)
    else:
        token_weight = token_weight.to(probs.dtype)
        real_tokens = token_weight.sum().clamp_min(1.0)
        mean_prob = (token_weight @ probs) / real_tokens
        pair_weight = token_weight[:, None].expand(tokens, k).reshape(-1)
    load = probs.new_zeros(num_experts).index_add_(0, index.reshape(-1), pair_weight) / (k * real_tokens)
    loss_grad = load * (num_experts * k if spec.convention == "reference" else num_experts)  # g (E,)
    loss = loss_grad @ mean_prob

    ctx.mark_non_differentiable(load)
    saved = (
        x,
        router_c,
        A_c,
        B_c,
        probs,
        index,
        weights,
        total,
        slot_scaling,
        act,
        coef,
        mixed,
        token_weight,
        loss_grad / real_tokens,
    )
    ctx.save_for_backward(*saved)
    ctx.spec, ctx.slots, ctx.rng_state, ctx.device_type = spec, slots, state, x.device.type
    ctx.param_dtypes = router_weight.dtype, lora_A.dtype, lora_B.dtype
    return delta, loss, load


def _backward(ctx, grad_delta, grad_loss):
    saved = ctx.saved_tensors
    x, router_c, A_c, B_c, probs, index, weights, total, slot_scaling, act, coef, mixed = saved[:12]
    token_weight, prob_loss_grad = saved[12:]
    spec, slots = ctx.spec, ctx.slots
    router_dtype, A_dtype, B_dtype = ctx.param_dtypes
    tokens, cdt = x.shape[0], x.dtype
    num_experts, rank = router_c.shape[0], A_c.shape[0]
    need_x = ctx.needs_input_grad[0]
    grad_x = grad_A = grad_B = None

    grad_probs = probs.new_zeros(probs.shape)
    if grad_delta is not None:
        grad_delta = grad_delta.to(cdt)
        grad_B = (grad_delta.t() @ mixed).to(B_dtype)  # (m, r)
        grad_mixed = (grad_delta @ B_c).view(1, tokens, num_experts, -1)  # (1, T, E, d)
        grad_coef = (grad_mixed * act).sum(-1)  # (S, T, E)
        grad_act = (grad_mixed * coef[..., None]).view(slots, tokens, rank)  # (S, T, r)
        for slot, (dropped, mask) in enumerate(_dropped(x, slots, spec.dropout, ctx.rng_state)):
            slot_grad = grad_act[slot]
            grad_A = slot_grad.t() @ dropped if grad_A is None else grad_A.addmm_(slot_grad.t(), dropped)  # (r, n)
            if need_x:
                grad_dropped = slot_grad @ A_c
                if mask is not None:
                    grad_dropped = torch.ops.aten.native_dropout_backward(grad_dropped, mask, 1 / (1 - spec.dropout))
                grad_x = grad_dropped if grad_x is None else grad_x.add_(grad_dropped)
        grad_A = grad_A.to(A_dtype)

        # Back through slot_coef = values / total * scaling[index] and the top-k selection.
        if slots > 1:
            grad_slot = grad_coef.gather(2, index.t()[..., None])[..., 0].t()  # (T, k)
        else:
            grad_slot = grad_coef[0].gather(1, index)
        grad_weights = grad_slot.to(probs.dtype) * slot_scaling
        grad_values = (grad_weights - (grad_weights * weights).sum(-1, keepdim=True)) / total
        grad_probs.scatter_(1, index, grad_values)
    if grad_loss is not None:  # dL/dp_ti = g_i * w_t / T_real
        if token_weight is None:
            grad_probs += prob_loss_grad * grad_loss
        else:
            grad_probs.addr_(token_weight, prob_loss_grad * grad_loss)  # a tensor factor: no host sync

    # Softmax backward, then the router product (in the compute dtype, as under autocast).
    grad_logits = torch._softmax_backward_data(grad_probs, probs, -1, probs.dtype).to(cdt)
    grad_router = (grad_logits.t() @ x).to(router_dtype)
    if need_x:
        grad_x = grad_logits @ router_c if grad_x is None else grad_x.addmm_(grad_logits, router_c)
    return grad_x, grad_router, grad_A, grad_B, None, None, None
