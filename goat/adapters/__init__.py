"""Adapter library: one registry of methods and one call to apply any of them."""

from goat.adapters.config import AdapterConfig
from goat.adapters.io import load_adapter, save_adapter
from goat.adapters.moe import auxiliary_loss, expert_load, moe_layers, token_mask
from goat.adapters.registry import METHODS, apply_adapter, method_config, validate

__all__ = [
    "AdapterConfig",
    "METHODS",
    "apply_adapter",
    "auxiliary_loss",
    "expert_load",
    "load_adapter",
    "method_config",
    "moe_layers",
    "save_adapter",
    "token_mask",
    "validate",
]
