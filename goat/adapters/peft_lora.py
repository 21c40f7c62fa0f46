"""Single-LoRA baselines through PEFT itself: LoRA, rsLoRA, DoRA, PiSSA, MiLoRA (spec §7).

PEFT has LoRA, rsLoRA (use_rslora), DoRA (use_dora) and PiSSA (init_lora_weights="pissa"); MiLoRA
(bottom-r singular triplets) and the reference's shrunk SVD variant (svd_shrink) are initialised here
on PEFT's own LoRA layers, with the batched, cached SVD of goat.adapters.svd. Checkpoints are PEFT's
format; SVD-initialised adapters are saved converted to a plain LoRA on the original base weights
(PEFT's `path_initial_model_for_weight_conversion`), so `PeftModel.from_pretrained` loads them.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file, save_file

from goat.adapters.config import AdapterConfig
from goat.adapters.moe import apply_residual
from goat.adapters.svd import selected_triplets

INITIAL_ADAPTER = "initial"


def build_peft_lora(model, cfg: AdapterConfig, targets, heads, variant: str):
    on_meta = any(p.device.type == "meta" for p in model.parameters())  # shapes only: no SVD to run
    uses_peft_pissa = variant == "pissa" and not cfg.svd_shrink and not on_meta
    peft_config = LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=list(targets),
        modules_to_save=list(heads) or None,
        use_rslora=variant == "rslora",
        use_dora=variant == "dora",
        init_lora_weights="pissa" if uses_peft_pissa else True,
    )
    peft_model = get_peft_model(model, peft_config)
    if variant in ("pissa", "milora") and not uses_peft_pissa:
        _svd_init(peft_model, cfg, principal=variant == "pissa")
    if variant in ("pissa", "milora"):
        peft_model.goat_initial_lora = {  # A0, B0 of every layer, for the conversion at save time
            name: value.detach().clone() for name, value in peft_model.state_dict().items() if "lora_" in name
        }
    return peft_model


def _lora_layers(peft_model):
    return {name: m for name, m in peft_model.named_modules() if isinstance(m, LoraLayer)}


def _svd_init(peft_model, cfg: AdapterConfig, principal: bool) -> None:
    """sBA = U_r S_r V_r^T (top r: PiSSA, bottom r: MiLoRA), base <- W0 - coef * sBA (spec §7)."""
    layers = _lora_layers(peft_model)
    if any(layer.get_base_layer().weight.device.type == "meta" for layer in layers.values()):
        return
    weights = {name: layer.get_base_layer().weight for name, layer in layers.items()}
    indices = {}
    for name, weight in weights.items():
        h = min(weight.shape)
        indices[name] = torch.arange(cfg.r) if principal else torch.arange(h - cfg.r, h)
    report = selected_triplets(weights, indices, cfg.model_id, cfg.svd_cache_dir)
    shrink = cfg.rho if cfg.svd_shrink else 1.0
    coef = cfg.effective_init_coef()  # the presets give 1 (the original papers), goat/configs/method/pissa.yaml
    for name, layer in layers.items():
        found = report.triplets[name]
        s = layer.scaling["default"]
        root = torch.sqrt(found.S / (s * shrink))
        B, A = found.U * root[None, :], (found.V * root[None, :]).t()
        with torch.no_grad():
            layer.lora_A["default"].weight.copy_(A)
            layer.lora_B["default"].weight.copy_(B)
        apply_residual(layer.get_base_layer().weight, coef * s * B, A)
    peft_model.goat_svd_report = report


def save_peft(peft_model, directory: Path) -> None:
    """PEFT's save; SVD-initialised adapters are converted to a LoRA on the original base (rank 2r)."""
    initial = getattr(peft_model, "goat_initial_lora", None)
    if initial is None:
        peft_model.save_pretrained(str(directory))
        return
    trained = {name: value.detach().clone() for name, value in peft_model.state_dict().items() if name in initial}
    config = peft_model.peft_config["default"]
    init_setting = config.init_lora_weights
    with tempfile.TemporaryDirectory() as scratch:
        initial_dir = Path(scratch) / INITIAL_ADAPTER
        peft_model.load_state_dict(initial, strict=False)
        config.init_lora_weights = True  # PEFT's contract for the initial adapter
        try:
            peft_model.save_pretrained(str(initial_dir))
        finally:
            peft_model.load_state_dict(trained, strict=False)
        try:
            peft_model.save_pretrained(str(directory), path_initial_model_for_weight_conversion=str(initial_dir))
        finally:
            config.init_lora_weights = init_setting
    _restore_head(peft_model, directory)


def _restore_head(peft_model, directory: Path) -> None:
    """PEFT's conversion keeps only lora_ tensors; put the fully trained head (modules_to_save) back."""
    path = directory / "adapter_model.safetensors"
    converted = load_file(str(path))
    head = {k: v for k, v in get_peft_model_state_dict(peft_model).items() if "lora_" not in k and k not in converted}
    if head:
        save_file({**converted, **{k: v.detach().cpu().contiguous() for k, v in head.items()}}, str(path))


def load_peft(base_model, directory: Path):
    return PeftModel.from_pretrained(base_model, str(directory))
