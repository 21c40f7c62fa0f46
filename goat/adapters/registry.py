"""The methods of the paper by name, and `apply_adapter`, the one call that adapts a model."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from goat.adapters.config import AUTO, AdapterConfig, preset, validate_choices, validate_moe
from goat.adapters.full_moe import build_full_ft, build_full_moe
from goat.adapters.lora_moe import build_adamole, build_goat, build_hydralora, build_molora
from goat.adapters.moe import fused_kernels_importable
from goat.adapters.peft_lora import build_peft_lora
from goat.adapters.surgery import count_parameters, find_heads, find_targets, freeze_except
from goat.adapters.svd import model_identity

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Method:
    build: Callable  # (model, cfg, targets, initialize) -> model, or (model, cfg, targets, heads) for PEFT
    backend: str  # "goat": goat's own layers and checkpoint format; "peft": PEFT's
    moe: bool = False  # routes tokens: validate (r, E, top_k) and add the balance loss
    # the dropout modes for which dropout_kernel=auto takes the fused Triton kernels on CUDA (measured faster there:
    # docs/benchmarks.md); torch ops for the others
    fused_dropout: tuple[str, ...] = ()


def _peft(variant: str) -> Callable:
    return functools.partial(build_peft_lora, variant=variant)


# Each method's preset settings (spec §7) live in goat/configs/method/<name>.yaml, read by `method_config`.
METHODS: dict[str, Method] = {
    "goat": Method(build_goat, "goat", moe=True, fused_dropout=("per_expert",)),
    "molora": Method(build_molora, "goat", moe=True, fused_dropout=("per_expert",)),
    "adamole": Method(build_adamole, "goat", moe=True, fused_dropout=("shared",)),
    "hydralora": Method(build_hydralora, "goat", moe=True),
    "full_ft_moe": Method(build_full_moe, "goat", moe=True),
    "full_ft": Method(build_full_ft, "goat"),
    "lora": Method(_peft("lora"), "peft"),
    "rslora": Method(_peft("rslora"), "peft"),
    "dora": Method(_peft("dora"), "peft"),
    "pissa": Method(_peft("pissa"), "peft"),
    "milora": Method(_peft("milora"), "peft"),
}


def method_config(method: str, **overrides) -> AdapterConfig:
    """The preset of `method` (AdapterConfig defaults + goat/configs/method/<method>.yaml) with `overrides` on top."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(METHODS)}")
    return AdapterConfig.from_dict({**preset(method), **overrides, "method": method})


def validate(cfg: AdapterConfig) -> None:
    """Everything that can be checked without a model."""
    if cfg.method not in METHODS:
        raise ValueError(f"unknown method {cfg.method!r}; choose one of {sorted(METHODS)}")
    validate_choices(cfg)
    if METHODS[cfg.method].moe:
        validate_moe(cfg)


def apply_adapter(
    model: nn.Module, cfg: AdapterConfig, initialize: bool = True, device_type: str | None = None
) -> nn.Module:
    """Adapts `model` in place with `cfg.method` and returns the model to train (a PeftModel for PEFT methods).

    Targets: every nn.Linear outside the task head and lm_head, or those matching cfg.target_modules.
    The head (cfg.modules_to_save, or children named classifier/score/head) trains fully; everything
    else is frozen, except for full_ft and full_ft_moe, which train every parameter.
    `adapted.goat_adapter.config` is `cfg` as it ran: every `auto` and every derived None written out.
    device_type: where the model will train ("cuda", "cpu"; default: where its parameters are now), which
    dropout_kernel=auto depends on.
    """
    validate(cfg)
    was_training = model.training
    method = METHODS[cfg.method]
    heads = find_heads(model, cfg.modules_to_save)
    targets = find_targets(model, cfg.target_modules, heads)
    model_id = model_identity(model) if cfg.model_id == AUTO else cfg.model_id
    kernel = dropout_kernel_for(cfg, device_type or next(model.parameters(), torch.empty(0)).device.type)
    cfg = cfg.resolved().replace(
        target_modules=targets, modules_to_save=heads, model_id=model_id, dropout_kernel=kernel
    )
    if method.backend == "peft":
        adapted = method.build(model, cfg, targets, heads)
    else:
        freeze_except(model, heads)
        adapted = method.build(model, cfg, targets, initialize=initialize)
    adapted.train(was_training)  # new modules start in the model's mode (eval: no adapter dropout)
    adapted.goat_adapter = AdapterInfo(cfg, targets, heads)
    trainable, total = count_parameters(adapted)
    logger.info(
        "%s: %d target layers, %d trainable of %d parameters (%.2f%%)",
        cfg.method,
        len(targets),
        trainable,
        total,
        100.0 * trainable / max(total, 1),
    )
    return adapted


def dropout_kernel_for(cfg: AdapterConfig, device_type: str) -> str:
    """cfg.dropout_kernel with `auto` resolved: the fused Triton kernels for a method whose routed layers draw a
    dropout in a mode they were measured faster in (Method.fused_dropout: GOAT's and MoLoRA's mask per selected
    expert, AdaMoLE's one mask per token; lora_dropout > 0) on CUDA with triton importable (docs/benchmarks.md);
    torch ops elsewhere."""
    if cfg.dropout_kernel != AUTO:
        return cfg.dropout_kernel
    fused = (
        cfg.dropout_mode in METHODS[cfg.method].fused_dropout
        and cfg.lora_dropout > 0
        and device_type == "cuda"
        and fused_kernels_importable()
    )
    return "triton" if fused else "torch"


@dataclass
class AdapterInfo:
    """What apply_adapter did, kept on the adapted model for saving and logging."""

    config: AdapterConfig
    targets: list[str]
    heads: list[str]
