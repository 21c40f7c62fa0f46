"""Finding target layers, swapping modules, freezing, and wiring the padding mask to MoE layers."""

from __future__ import annotations

import re

import torch
from torch import nn

from goat.adapters.config import AUTO
from goat.adapters.moe import RoutingContext

# Task heads by the attribute names that transformers' task models use (classifier: BERT/RoBERTa/CLIP,
# score: LLaMA-style sequence classification, head/heads: timm-style models). Trained fully.
HEAD_NAMES = ("classifier", "score", "head", "heads")
# Never adapted and never trained: the language-model output layer (tied to the embeddings).
FROZEN_NAMES = ("lm_head",)


def find_heads(model: nn.Module, modules_to_save: list[str] | str) -> list[str]:
    """Module names of the task head: `modules_to_save` if a list, else (auto) top-level children named as in
    HEAD_NAMES."""
    names = dict(model.named_modules())
    if modules_to_save != AUTO:
        missing = [name for name in modules_to_save if name not in names]
        if missing:
            raise ValueError(
                f"modules_to_save {missing} are not modules of the model; top-level modules: "
                f"{[n for n, _ in model.named_children()]}"
            )
        return list(modules_to_save)
    return [name for name, _ in model.named_children() if name in HEAD_NAMES]


def _inside(name: str, prefixes: list[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _matches(name: str, patterns: list[str]) -> bool:
    return any(re.fullmatch(p, name) or name == p or name.endswith("." + p) for p in patterns)


def find_targets(model: nn.Module, target_modules: list[str] | str, heads: list[str]) -> list[str]:
    """Names of the nn.Linear layers to adapt: all of them outside the head and lm_head (auto), or those matching."""
    excluded = list(heads) + [n for n, _ in model.named_children() if n in FROZEN_NAMES]
    linear = [name for name, m in model.named_modules() if isinstance(m, nn.Linear) and not _inside(name, excluded)]
    if target_modules == AUTO:
        chosen = linear
    else:
        chosen = [name for name in linear if _matches(name, target_modules)]
    if not chosen:
        sample = ", ".join(linear[:6]) or "none"
        raise ValueError(
            f"target_modules {target_modules} matched no nn.Linear layer outside the head; "
            f"the model's linear layers are named like: {sample}"
        )
    return chosen


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def freeze_except(model: nn.Module, trainable_prefixes: list[str]) -> None:
    """requires_grad only for the parameters of the listed modules (the task heads).

    Called on the base model before an adapter is built: every parameter the adapter then creates trains, whatever
    its name (a new parameter is requires_grad=True), and what trains is exactly what the adapter saves."""
    for name, param in model.named_parameters():
        param.requires_grad = _inside(name, trainable_prefixes)


def install_mask_hook(model: nn.Module, context: RoutingContext) -> None:
    """Copies the `attention_mask` keyword of each top-level forward into the MoE layers' routing context."""

    outer_masks = []  # the mask set before each (possibly nested) forward, restored after it

    def before(module, args, kwargs):
        outer_masks.append(context.given)
        mask = kwargs.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.dim() == 2:
            context.token_mask = mask

    def after(module, args, kwargs, output):
        context.token_mask = outer_masks.pop() if outer_masks else None

    model.register_forward_pre_hook(before, with_kwargs=True)
    model.register_forward_hook(after, with_kwargs=True, always_call=True)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; works on meta-device models."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
