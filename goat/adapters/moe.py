"""Routing shared by every MoE method: gates, the balance loss, expert load, and the LoRA-MoE layer.

Shapes: T tokens (batch and sequence flattened), n = in_features, m = out_features, E experts,
d = per-expert rank, r = E * d.

The LoRA-MoE forward (spec §1) is vectorised: all experts' down-projections are one (T, n) x (n, r)
product, the routing weights scale each expert's d-slice of the rank activation, and all
up-projections are one (T, r) x (r, m) product. No Python loop over experts and no host sync.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from goat.adapters.slot_dropout import slot_dropout_down

try:
    from goat.adapters import slot_dropout_triton as fused
except ModuleNotFoundError as missing:  # triton is optional: without it dropout_kernel=triton is refused
    if missing.name != "triton":  # any other import failure of the kernels' module is a real error
        raise
    fused = None


def fused_kernels_importable() -> bool:
    """Whether the fused Triton dropout kernels (dropout_kernel=triton) can be imported here."""
    return fused is not None


class RoutingContext:
    """Holds the padding mask of the current batch, shared by all MoE layers of one model.

    `token_mask` is (B, L) with 1 for real tokens. A layer whose input has leading shape (B, L) excludes
    the masked tokens from its balance loss and load statistics; a layer that sees other shapes (a pooler
    on (B, n)) sees no padding and counts every token.

    Setting `token_mask` copies the mask into a tensor this context keeps for that shape, so a compiled layer
    reads the same tensor on every batch of a shape. torch.compile marks the tensor attributes of modules as
    static inputs, and CUDA graphs (trainer.compile=reduce-overhead) re-record every graph whose static input
    moved: with each batch's own mask tensor, every step re-recorded all of them (14-27 s a step instead of
    0.137 s on the LLaMA-2-7B shape, docs/benchmarks.md). `given` is the caller's tensor, what a nested setter
    restores. A kept tensor is overwritten by the next mask of its shape: autograd's version check refuses a
    backward pass through a forward whose mask was overwritten before it (a nested forward of the same shape
    inside a training step).
    """

    kept_shapes = 8  # masks of that many shapes (length buckets, a last smaller batch) stay allocated

    def __init__(self):
        self.given: torch.Tensor | None = None
        self._mask: torch.Tensor | None = None
        self._kept: dict[tuple, torch.Tensor] = {}

    @property
    def token_mask(self) -> torch.Tensor | None:
        return self._mask

    @token_mask.setter
    def token_mask(self, mask: torch.Tensor | None) -> None:
        # already in place (a hook restoring the caller's mask): a copy would bump the version of a tensor the
        # backward pass may still need
        if mask is not None and mask is self.given:
            return
        self.given = mask
        if mask is None:
            self._mask = None
            return
        key = (tuple(mask.shape), mask.dtype, mask.device)
        kept = self._kept.pop(key, None)
        if kept is None:
            kept = torch.empty(mask.shape, dtype=mask.dtype, device=mask.device)
        self._kept[key] = kept  # the most recently used shape last
        if len(self._kept) > self.kept_shapes:
            del self._kept[next(iter(self._kept))]
        self._mask = kept.copy_(mask)


def at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.promote_types(t.dtype, torch.float32))


class Gate(nn.Module):
    """Turns router probabilities (T, E) into combine weights, a dispatch mask and balance probabilities."""

    def forward(self, probs: torch.Tensor, x: torch.Tensor, extra_logits: torch.Tensor | None = None):
        raise NotImplementedError  # pragma: no cover - interface

    def extra_rows(self) -> torch.Tensor | None:
        """Rows (k, n) of a linear map of x the gate needs beside the router's: the fused kernels compute their
        products with the router's (extra_logits, (T, k) fp32) from the same loads of x. None: it needs none."""
        return None


class TopKGate(Gate):
    """Top-k of the softmax, renormalised over the selected experts (paper Eq. 10).

    The selection is written as each expert's rank in its token's row (the number of experts ahead of it: larger
    probability, or equal probability and lower index, torch.topk's order) rather than topk + scatter: a few
    pointwise ops and row sums the compiler fuses, with topk's values and gradients.
    """

    def __init__(self, top_k: int):
        super().__init__()
        self.top_k = top_k

    def forward(self, probs, x, extra_logits=None):
        rank = descending_rank(probs)  # (T, E)
        selected = rank < self.top_k
        values = torch.where(selected, probs, 0.0)
        gates = values / values.sum(dim=-1, keepdim=True)
        return gates, selected.to(probs.dtype), probs, rank


def descending_rank(probs: torch.Tensor) -> torch.Tensor:
    """(T, E) -> (T, E) int64: how many experts of the token come before each one in descending order (ties: the
    lower index first); the top-k experts are those of rank < k, slot j of top-k holds the expert of rank j."""
    experts = torch.arange(probs.shape[-1], device=probs.device)
    mine, other = probs[..., :, None], probs[..., None, :]  # (T, E, 1), (T, 1, E)
    ahead = (other > mine) | ((other == mine) & (experts[None, :] < experts[:, None]))
    return ahead.sum(dim=-1)


class ThresholdGate(Gate):
    """AdaMoLE: expert i is active where p_i > tau(x), tau = sigmoid(w^T x + b) / E; weights (p - tau)+ renormalised."""

    def __init__(self, in_features: int, num_experts: int, dtype=None, device=None):
        super().__init__()
        self.num_experts = num_experts
        self.lora_threshold = nn.Linear(in_features, 1, bias=True, dtype=dtype, device=device)

    def forward(self, probs, x, extra_logits=None):
        if extra_logits is None:
            pre = self.lora_threshold(x)
        else:  # the fused kernels' x @ w^T, in fp32
            pre = extra_logits + self.lora_threshold.bias.float()
        tau = torch.sigmoid(at_least_fp32(pre)) / self.num_experts  # (T, 1)
        above = (probs - tau).clamp_min(0.0)  # (T, E)
        total = above.sum(dim=-1, keepdim=True)
        gates = above / total.clamp_min(torch.finfo(above.dtype).tiny)  # all-zero rows stay zero
        dispatch = (above > 0).to(probs.dtype)
        return gates, dispatch, above, None

    def extra_rows(self) -> torch.Tensor:
        return self.lora_threshold.weight  # (1, n): tau's pre-activation less its bias


def balance_loss(
    balance_probs: torch.Tensor, dispatch: torch.Tensor, token_weight: torch.Tensor | None, convention: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load-balancing loss of one layer (spec §4), padding tokens excluded; returns (loss, counts (E,)).

    reference (official code): L = E * sum_i (c_i / T) * P_i
    paper (Eq. 26-28):         L = sum_i (E * c_i / sum_j c_j) * P_i   (= reference / k for top-k)
    c_i = tokens dispatched to expert i (no gradient), P_i = mean routing probability of expert i.
    """
    num_experts = balance_probs.shape[-1]
    if token_weight is None:
        token_weight = balance_probs.new_ones(balance_probs.shape[0])
    real_tokens = token_weight.sum().clamp_min(1.0)
    mean_prob = (token_weight[:, None] * balance_probs).sum(0) / real_tokens  # (E,)
    counts = (token_weight[:, None] * dispatch.detach()).sum(0)  # (E,)
    if convention == "reference":
        return num_experts * (counts / real_tokens * mean_prob).sum(), counts
    fraction = num_experts * counts / counts.sum().clamp_min(1.0)
    return (fraction * mean_prob).sum(), counts


class MoERouting(nn.Module):
    """Router + gate + bookkeeping; records the layer's balance loss and expert load at each forward."""

    def __init__(self, in_features, num_experts, gate: Gate, balance_coef, balance_convention, context, dtype, device):
        super().__init__()
        self.num_experts = num_experts
        self.lora_router = nn.Linear(in_features, num_experts, bias=False, dtype=dtype, device=device)
        self.gate = gate
        self.balance_coef = balance_coef
        self.balance_convention = balance_convention
        self.context = context
        self.last_balance_loss: torch.Tensor | None = None
        self.last_expert_load: torch.Tensor | None = None

    def forward(self, x2d: torch.Tensor, leading_shape: torch.Size, logits: torch.Tensor | None = None):
        """x2d (T, n) -> gates (T, E) fp32, dispatch (T, E), each expert's rank (T, E) for top-k gates or None.
        `logits` (T, E + k): the router's x2d @ W^T when the fused kernels computed them already, followed by the
        gate's extra_rows products (k columns, none for a top-k gate).

        The balance loss and the expert load are recorded only where gradients are computed: under no_grad
        (evaluation, decoding) the layer keeps no tensor of its own, so a CUDA-graph replay of the decoding
        step never finds an earlier replay's output still referenced.
        """
        extra = None
        if logits is None:
            logits = self.lora_router(x2d)
        elif logits.shape[-1] > self.num_experts:
            logits, extra = logits[:, : self.num_experts], logits[:, self.num_experts :]
        probs = at_least_fp32(logits).softmax(dim=-1)  # (T, E), fp32 as in the reference
        gates, dispatch, balance_probs, rank = self.gate(probs, x2d, extra)
        if not torch.is_grad_enabled():
            return gates, dispatch, rank
        weight = self.token_weight(leading_shape, probs)
        self.last_balance_loss, counts = balance_loss(balance_probs, dispatch, weight, self.balance_convention)
        self.last_expert_load = counts / counts.sum().clamp_min(1.0)  # (E,), sums to 1; counts carry no grad
        return gates, dispatch, rank

    def fused_weight(self, dtype: torch.dtype) -> torch.Tensor:
        """(E + k, n) contiguous in `dtype`: the router's rows and the gate's extra_rows, what the fused kernels
        multiply x by."""
        extra = self.gate.extra_rows()
        rows = self.lora_router.weight if extra is None else torch.cat([self.lora_router.weight, extra])
        return rows.to(dtype).contiguous()

    def token_weight(self, leading_shape, like) -> torch.Tensor | None:
        mask = self.context.token_mask if self.context is not None else None
        if mask is None or tuple(mask.shape) != tuple(leading_shape):
            return None
        return mask.reshape(-1).to(device=like.device, dtype=like.dtype)


class MoELoRALinear(nn.Module):
    """base(x) + sum_{j in routed} w_j * s_j * B_j A_j dropout_j(x)  (spec §1).

    lora_A: (E*d, n) (or (d, n) shared by all experts for HydraLoRA), lora_B: (m, E*d);
    rows j*d:(j+1)*d of A and columns j*d:(j+1)*d of B are expert j. `scaling` (E,) holds s_j.

    Written for torch.compile as well as for eager mode: plain tensor operations, no host synchronisation,
    no RNG-state handling, no per-call Python objects, so a compiled block takes the whole layer (router,
    gate, dropout masks, experts, balance loss) as one graph. With per-expert dropout in training the
    down-projection runs once per top-k slot, each slot with its own mask (slot_dropout.py); otherwise once.
    """

    def __init__(
        self,
        base_layer: nn.Linear,
        num_experts: int,
        expert_rank: int,
        gate: Gate,
        scaling: torch.Tensor,
        dropout: float,
        dropout_mode: str = "per_expert",
        dropout_kernel: str = "torch",
        shared_A: bool = False,
        balance_coef: float = 0.0,
        balance_convention: str = "reference",
        context: RoutingContext | None = None,
    ):
        super().__init__()
        n, m = base_layer.in_features, base_layer.out_features
        device = base_layer.weight.device
        dtype = adapter_dtype(base_layer.weight)
        self.base_layer = base_layer
        self.in_features, self.out_features = n, m
        self.num_experts, self.expert_rank = num_experts, expert_rank
        rank_a = expert_rank if shared_A else num_experts * expert_rank
        self.lora_A = nn.Parameter(torch.empty(rank_a, n, dtype=dtype, device=device))
        self.lora_B = nn.Parameter(torch.zeros(m, num_experts * expert_rank, dtype=dtype, device=device))
        self.routing = MoERouting(n, num_experts, gate, balance_coef, balance_convention, context, dtype, device)
        self.register_buffer("scaling", scaling.to(device=device, dtype=torch.float32), persistent=False)
        self.dropout = dropout
        self.dropout_mode = "shared" if shared_A or not isinstance(gate, TopKGate) else dropout_mode
        self.dropout_kernel = dropout_kernel
        self.shared_A = shared_A
        self.residual_factors: tuple[torch.Tensor, torch.Tensor] | None = None
        if device.type != "meta":
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # LoRA default (spec §7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)
        leading = x.shape[:-1]
        x2d = x.reshape(-1, self.in_features).to(compute_dtype(x, self.lora_A))  # (T, n)
        act, logits = self.down_projection(x2d, self.lora_A.to(x2d.dtype))  # (S, T, rank of A), (T, E) or None
        gates, _, rank = self.routing(x2d, leading, logits)  # (T, E) fp32, zero for unrouted experts
        coef = gates * self.scaling  # (T, E): w_j * s_j
        tokens, experts, d = x2d.shape[0], self.num_experts, self.expert_rank
        slots = act.shape[0]
        if slots > 1:  # slot j keeps only the expert it routed to: (S, T, E)
            slot = torch.arange(slots, device=rank.device)[:, None, None]
            coef = torch.where(rank[None] == slot, coef[None], 0.0)
        act = act.view(slots, tokens, 1 if self.shared_A else experts, d)
        mixed = (act * coef.view(-1, tokens, experts, 1)).sum(0)  # (T, E, d)
        delta = mixed.reshape(tokens, experts * d).to(x2d.dtype) @ self.lora_B.to(x2d.dtype).t()  # (T, m)
        return result + delta.view(*leading, self.out_features).to(result.dtype)

    def down_projection(self, x2d: torch.Tensor, A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(act, logits): act (S, T, rank of A) holds each slot's own dropout of x2d (T, n) down-projected by A (one
        slot in eval or without dropout); logits (T, E + k) are the router's and the gate's extra_rows' when the fused
        Triton kernels (dropout_kernel=triton) computed them from the same loads of x, else None (the router and the
        gate compute them).
        A batch too large for the kernels' 31-bit mask counters takes the torch ops (the same distribution) instead
        of failing the run."""
        if not (self.training and self.dropout > 0):
            return (x2d @ A.t())[None], None
        slots = self.routing.gate.top_k if self.dropout_mode == "per_expert" else 1
        if self.dropout_kernel == "torch" or (fused is not None and not fused.counters_fit(x2d, slots)):
            return slot_dropout_down(x2d, A, slots, self.dropout), None
        if fused is None or not fused.fused_supported(x2d):
            raise RuntimeError(
                "dropout_kernel=triton needs triton and CUDA tensors of bf16, fp16 or fp32 (or TRITON_INTERPRET=1); "
                f"got {x2d.device.type} {x2d.dtype}: use method.dropout_kernel=torch"
            )
        router = self.routing.fused_weight(x2d.dtype)
        seed = fused.draw_seed(x2d.device)
        return fused.routed_dropout_down(x2d.contiguous(), A.contiguous(), router, seed, slots, self.dropout)

    # Residual (spec §2.4): the base weight holds W0 - B_res @ A_res, computed in fp32, cast once.
    def subtract_residual(self, residual_B: torch.Tensor, residual_A: torch.Tensor) -> None:
        """Keeps the factors (CPU, fp32 or fp64) for saving and subtracts their product from the base weight."""
        dtype = torch.float64 if residual_A.dtype == torch.float64 else torch.float32
        self.residual_factors = (residual_B.detach().to("cpu", dtype), residual_A.detach().to("cpu", dtype))
        apply_residual(self.base_layer.weight, *self.residual_factors)


def compute_dtype(x: torch.Tensor, adapter_weight: torch.Tensor) -> torch.dtype:
    """The dtype the adapter's products run in: autocast's when it is on, else the adapter's own (fp32/fp64)."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return adapter_weight.dtype


def adapter_dtype(weight: torch.Tensor) -> torch.dtype:
    """Adapters train in fp32 (fp64 beside an fp64 base, for reference tests), whatever the base dtype."""
    return torch.float64 if weight.dtype == torch.float64 else torch.float32


def apply_residual(weight: torch.Tensor, residual_B: torch.Tensor, residual_A: torch.Tensor) -> None:
    """weight <- weight - residual_B @ residual_A, computed in the factors' precision on the weight's device."""
    if weight.device.type == "meta":
        return
    with torch.no_grad():
        delta = residual_B.to(weight.device) @ residual_A.to(weight.device)
        weight.copy_((weight.to(delta.dtype) - delta).to(weight.dtype))


def moe_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Every module that routes tokens (it owns a MoERouting)."""
    for name, module in model.named_modules():
        if isinstance(getattr(module, "routing", None), MoERouting):
            yield name, module


def _routed(model_or_layers) -> Iterator[tuple[str, nn.Module]]:
    """The (name, layer) pairs of a model's MoE layers, or a list of them found before (list(moe_layers(model))):
    a training loop lists them once, since a scan of a 7B model's modules takes milliseconds at every step."""
    return moe_layers(model_or_layers) if isinstance(model_or_layers, nn.Module) else iter(model_or_layers)


def auxiliary_loss(model) -> torch.Tensor | None:
    """lambda * sum over layers of the last forward's balance loss (spec §4); None for models without MoE.
    `model`: the model, or the list of its MoE layers (list(moe_layers(model))).

    One stack and one sum per distinct lambda (all layers share one): a few kernels, not two per layer.
    """
    by_coef: dict[float, list[torch.Tensor]] = {}
    for _, layer in _routed(model):
        loss = layer.routing.last_balance_loss
        if loss is not None and layer.routing.balance_coef != 0:
            by_coef.setdefault(layer.routing.balance_coef, []).append(loss)
    total = None
    for coef, losses in by_coef.items():
        device = losses[0].device
        term = torch.stack([loss.to(device) for loss in losses]).sum() * coef
        total = term if total is None else total + term.to(total.device)
    return total


def expert_load(model) -> dict[str, torch.Tensor]:
    """Per-layer fraction of routed tokens per expert from the last forward, (E,) each, detached. `model`: the
    model, or the list of its MoE layers."""
    return {
        name: layer.routing.last_expert_load
        for name, layer in _routed(model)
        if layer.routing.last_expert_load is not None
    }


@contextmanager
def token_mask(model, mask: torch.Tensor | None):
    """Sets the padding mask (B, L) that the model's MoE layers use for the forward passes inside. `model`: the
    model, or the list of its MoE layers."""
    contexts = {id(layer.routing.context): layer.routing.context for _, layer in _routed(model)}
    previous = {key: ctx.given for key, ctx in contexts.items()}
    for ctx in contexts.values():
        ctx.token_mask = mask
    try:
        yield
    finally:
        for key, ctx in contexts.items():
            ctx.token_mask = previous[key]
