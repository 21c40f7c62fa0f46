"""Adapter-only checkpoints: `adapter_config.json` + `adapter_model.safetensors`.

PEFT methods are saved by PEFT (and load with `peft.PeftModel.from_pretrained`). goat's own methods
store their trainable tensors, the per-expert scalings, and the low-rank residual factors (B_res, A_res)
with W_res = B_res A_res: loading onto a freshly loaded base model recomputes W0 - W_res exactly as
at initialisation, without an SVD and without a copy of the base weights.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from goat.adapters.config import AUTO, AdapterConfig
from goat.adapters.moe import MoELoRALinear
from goat.adapters.peft_lora import load_peft, save_peft
from goat.adapters.registry import METHODS, apply_adapter

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
FORMAT_VERSION = 1


def save_adapter(model: nn.Module, directory: str | os.PathLike) -> Path:
    """Writes the adapter of a model returned by apply_adapter into `directory` (created if needed)."""
    info = getattr(model, "goat_adapter", None)
    if info is None:
        raise ValueError("save_adapter needs a model returned by goat.adapters.apply_adapter")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if METHODS[info.config.method].backend == "peft":
        save_peft(model, directory)
        return directory
    tensors = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}
    for name, module in model.named_modules():
        if isinstance(module, MoELoRALinear):
            tensors[f"{name}.scaling"] = module.scaling
            if module.residual_factors is not None:
                tensors[f"{name}.residual_B"], tensors[f"{name}.residual_A"] = module.residual_factors
    tensors = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
    config = {
        "format": "goat",
        "format_version": FORMAT_VERSION,
        "adapter": info.config.to_dict(),
        "targets": info.targets,
        "heads": info.heads,
    }
    _write_atomically(directory / WEIGHTS_NAME, lambda path: save_file(tensors, str(path)))
    _write_atomically(directory / CONFIG_NAME, lambda path: path.write_text(json.dumps(config, indent=2)))
    return directory


def load_adapter(base_model: nn.Module, directory: str | os.PathLike) -> nn.Module:
    """Applies the adapter saved in `directory` to a freshly loaded base model and returns the adapted model."""
    directory = Path(directory)
    config_path = directory / CONFIG_NAME
    if not config_path.exists():
        raise FileNotFoundError(f"no {CONFIG_NAME} in {directory}: not an adapter directory")
    saved = json.loads(config_path.read_text())
    if "peft_type" in saved:
        return load_peft(base_model, directory)
    if saved.get("format") != "goat":
        raise ValueError(f"{config_path} is neither a goat nor a PEFT adapter config")
    modules = dict(base_model.named_modules())
    absent = [name for name in saved["targets"] + saved["heads"] if name not in modules]
    if absent:
        raise ValueError(
            f"adapter in {directory} was saved for another model: {len(absent)} of its layers, e.g. {absent[:2]}, "
            "are not in this model; load it onto the base model it was trained from"
        )
    cfg = AdapterConfig.from_dict(saved["adapter"])
    # the dropout kernel only draws training dropout: chosen again for this machine (a run trained with the
    # Triton kernels loads where triton is not installed)
    cfg = cfg.replace(target_modules=saved["targets"], modules_to_save=saved["heads"], dropout_kernel=AUTO)
    model = apply_adapter(base_model, cfg, initialize=False)
    tensors = load_file(str(directory / WEIGHTS_NAME))
    _load_tensors(model, tensors)
    return model


def _load_tensors(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    parameters = dict(model.named_parameters())
    expected = {name for name, p in parameters.items() if p.requires_grad}
    missing = sorted(expected - set(tensors))
    if missing:
        raise ValueError(f"adapter checkpoint lacks {len(missing)} trainable tensors, e.g. {missing[:3]}")
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, MoELoRALinear):
                module.scaling.copy_(tensors.pop(f"{name}.scaling"))
                if f"{name}.residual_A" in tensors:
                    module.subtract_residual(tensors.pop(f"{name}.residual_B"), tensors.pop(f"{name}.residual_A"))
        for name, value in tensors.items():
            if name not in parameters:
                raise ValueError(f"adapter checkpoint tensor {name!r} matches no parameter of the model")
            parameters[name].copy_(value)


def _write_atomically(final: Path, write) -> None:
    temporary = final.with_name(final.name + ".tmp")
    write(temporary)
    with open(temporary, "rb") as handle:
        os.fsync(handle.fileno())
    temporary.replace(final)
