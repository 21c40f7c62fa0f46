"""Full fine-tuning MoE (spec §7, "Full FT MoE"): each target Linear is upcycled into E trainable copies
of W0 behind a top-k router with the balance loss. All experts equal W0, so the output equals W0 x at init.

Full-rank experts cannot share one matrix product as LoRA experts do: tokens are sorted by expert and
each expert runs one dense product on its own tokens (a loop over E large products, one host sync per
layer for the split sizes). This is the upper-bound baseline of Tables 1 and 4, not a method to be fast.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from goat.adapters.config import AdapterConfig
from goat.adapters.moe import MoERouting, RoutingContext, TopKGate
from goat.adapters.surgery import install_mask_hook, replace_module


class FullMoELinear(nn.Module):
    def __init__(self, base: nn.Linear, num_experts: int, top_k: int, balance_coef, balance_convention, context):
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.num_experts = num_experts
        weight = base.weight.detach()
        self.expert_weight = nn.Parameter(weight.unsqueeze(0).repeat(num_experts, 1, 1))  # (E, m, n)
        bias = base.bias.detach() if base.bias is not None else None
        self.expert_bias = None if bias is None else nn.Parameter(bias.unsqueeze(0).repeat(num_experts, 1))
        router_dtype = torch.float64 if weight.dtype == torch.float64 else torch.float32
        self.routing = MoERouting(
            self.in_features,
            num_experts,
            TopKGate(top_k),
            balance_coef,
            balance_convention,
            context,
            router_dtype,
            weight.device,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        leading = x.shape[:-1]
        x2d = x.reshape(-1, self.in_features)  # (T, n)
        gates, _, rank = self.routing(x2d.to(self.routing.lora_router.weight.dtype), leading)
        tokens, k = x2d.shape[0], self.routing.gate.top_k
        index = rank.argsort(dim=-1)[:, :k]  # (T, k): the expert of rank j in slot j, topk's order
        flat_expert = index.reshape(-1)  # (T*k,)
        order = flat_expert.argsort(stable=True)
        token_of = order // k  # which token each sorted slot belongs to
        slot_weight = gates.gather(1, index).reshape(-1)[order].to(x2d.dtype)  # (T*k,)
        counts = torch.bincount(flat_expert, minlength=self.num_experts).tolist()
        outputs = []
        for expert, chunk in enumerate(x2d[token_of].split(counts)):
            bias = None if self.expert_bias is None else self.expert_bias[expert]
            outputs.append(F.linear(chunk, self.expert_weight[expert], bias))
        routed = torch.cat(outputs) * slot_weight[:, None]  # (T*k, m)
        out = torch.zeros(tokens, self.out_features, dtype=routed.dtype, device=routed.device)
        out.index_add_(0, token_of, routed)
        return out.view(*leading, self.out_features)


def build_full_moe(model, cfg: AdapterConfig, targets, initialize: bool = True):
    context = RoutingContext()
    for name in targets:
        base = model.get_submodule(name)
        layer = FullMoELinear(base, cfg.num_experts, cfg.top_k, cfg.balance_coef, cfg.balance_convention, context)
        replace_module(model, name, layer)
    install_mask_hook(model, context)
    for param in model.parameters():
        param.requires_grad = True
    return model


def build_full_ft(model, cfg: AdapterConfig, targets, initialize: bool = True):
    for param in model.parameters():
        param.requires_grad = True
    return model
