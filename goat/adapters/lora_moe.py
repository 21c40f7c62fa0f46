"""The LoRA-MoE methods: GOAT, MoLoRA, AdaMoLE and HydraLoRA (spec §1-2, §7), all on MoELoRALinear.

They differ only in the gate, whether A is shared, and the initialisation:
  goat       top-k gate, E experts (A_i, B_i) from SVD segments + residual (spec §2)
  molora     top-k gate, E experts with LoRA's init (A kaiming-uniform, B = 0), no residual
  adamole    threshold gate tau(x) = sigmoid(w^T x + b) / E over MoLoRA experts
  hydralora  one shared A (d x n), E heads B_i, router over heads (dense when top_k = E)
"""

from __future__ import annotations

import torch
from torch import nn

from goat.adapters.config import AdapterConfig
from goat.adapters.goat import init_goat_layer, segment_indices
from goat.adapters.moe import MoELoRALinear, RoutingContext, ThresholdGate, TopKGate, adapter_dtype
from goat.adapters.surgery import install_mask_hook, replace_module
from goat.adapters.svd import selected_triplets


def check_rank_fits(model: nn.Module, targets: list[str], rank: int) -> None:
    for name in targets:
        layer = model.get_submodule(name)
        if rank > min(layer.in_features, layer.out_features):
            raise ValueError(
                f"rank r={rank} exceeds min(in, out) = {min(layer.in_features, layer.out_features)} of layer "
                f"{name!r} ({layer.in_features} -> {layer.out_features}); lower r or exclude the layer"
            )


def wrap_targets(model, cfg: AdapterConfig, targets, make_gate, shared_A=False) -> dict[str, MoELoRALinear]:
    """Replaces each target nn.Linear by a MoELoRALinear and wires the padding mask; returns the new layers."""
    check_rank_fits(model, targets, cfg.r)
    context = RoutingContext()
    layers = {}
    for name in targets:
        base = model.get_submodule(name)
        scaling = torch.full((cfg.num_experts,), cfg.scaling_value(base.in_features))
        layer = MoELoRALinear(
            base,
            num_experts=cfg.num_experts,
            expert_rank=cfg.expert_rank,
            gate=make_gate(base),
            scaling=scaling,
            dropout=cfg.lora_dropout,
            dropout_mode=cfg.dropout_mode,
            dropout_kernel=cfg.dropout_kernel,
            shared_A=shared_A,
            balance_coef=cfg.balance_coef,
            balance_convention=cfg.balance_convention,
            context=context,
        )
        replace_module(model, name, layer)
        layers[name] = layer
    install_mask_hook(model, context)
    return layers


def build_goat(model, cfg: AdapterConfig, targets, initialize: bool = True):
    layers = wrap_targets(model, cfg, targets, lambda base: TopKGate(cfg.top_k))
    if not initialize or next(iter(layers.values())).lora_A.device.type == "meta":
        return model  # loaded from a checkpoint, or shapes only (parameter counting)
    generator = torch.Generator().manual_seed(cfg.seed)
    weights, indices = {}, {}
    for name, layer in layers.items():
        weights[name] = layer.base_layer.weight
        h = min(layer.in_features, layer.out_features)
        # (r,) singular indices; expert i takes columns [i*d, (i+1)*d), d = r / E, whatever the segment count
        count = cfg.effective_segment_count()
        indices[name] = segment_indices(h, count, cfg.r // count, cfg.segments, generator)
    report = selected_triplets(weights, indices, cfg.model_id, cfg.svd_cache_dir)
    for name, layer in layers.items():
        init_goat_layer(layer, report.triplets[name], cfg)
    model.goat_svd_report = report
    return model


def build_molora(model, cfg: AdapterConfig, targets, initialize: bool = True):
    wrap_targets(model, cfg, targets, lambda base: TopKGate(cfg.top_k))
    return model


def build_adamole(model, cfg: AdapterConfig, targets, initialize: bool = True):
    def threshold_gate(base):
        device = base.weight.device
        return ThresholdGate(base.in_features, cfg.num_experts, dtype=adapter_dtype(base.weight), device=device)

    wrap_targets(model, cfg, targets, threshold_gate)
    return model


def build_hydralora(model, cfg: AdapterConfig, targets, initialize: bool = True):
    wrap_targets(model, cfg, targets, lambda base: TopKGate(cfg.top_k), shared_A=True)
    return model
