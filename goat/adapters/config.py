"""AdapterConfig: every knob of GOAT and its baselines, with the paper's defaults.

Defaults follow `goat-method.md` ("goat's decisions" 1-4): they reproduce what produced the paper's
numbers. Method presets (the `goat/configs/method/*.yaml` files) override a few of them per method: those
files are the only place a preset is written (goat-train composes them, `method_config` reads them).

Three settings depend on the model and are written `auto` until the model is known: target_modules,
modules_to_save and model_id; dropout_kernel's `auto` depends on the device the model trains on.
`resolved()` fills the two derived numbers (init_coef, segment_count); apply_adapter resolves the rest, so a
saved adapter's config holds no `auto` and no None for a default.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path

import yaml

from goat.domains import NON_NEGATIVE, POSITIVE, POSITIVE_INT, PROBABILITY, SEED, domain_errors, ranged

SCALING_RULES = ("reference", "theory", "lora", "rs")
SEGMENT_CHOICES = ("ours", "principal", "minor", "random")
BALANCE_CONVENTIONS = ("reference", "paper")
DROPOUT_MODES = ("per_expert", "shared")
# How routed layers draw their dropout in training: torch ops (any device), or the fused Triton kernels (CUDA;
# goat/adapters/slot_dropout_triton.py: masks drawn inside the down-projection, nothing of x's size kept); auto:
# apply_adapter picks triton where it was measured faster (GOAT's and MoLoRA's per-expert masks on CUDA with
# triton installed, docs/benchmarks.md) and torch everywhere else, and writes down which
DROPOUT_KERNELS = ("auto", "torch", "triton")
PRESETS = Path(__file__).resolve().parents[1] / "configs" / "method"  # goat/configs/method/<name>.yaml
AUTO = "auto"  # target_modules, modules_to_save, model_id, dropout_kernel: chosen by apply_adapter
MODEL_RESOLVED = ("target_modules", "modules_to_save", "model_id")


@dataclass
class AdapterConfig:
    """One flat schema for every method of the registry (fields a method does not use are ignored).

    Scaling rules (spec §3), with d = r / num_experts the per-expert rank and n = in_features:
      reference: s = lora_alpha / d            (official scripts; 16 in every task)
      theory:    s = sqrt(3 * eta * n / d)     (paper Thm 3.5)
      lora:      s = lora_alpha / r            (plain LoRA)
      rs:        s = lora_alpha / sqrt(d)      (rank-stabilised)
    """

    method: str = "goat"
    # LoRA family (names as in PEFT).
    r: int = ranged(8, POSITIVE_INT)  # total rank over all experts (paper: ViT/NLG 8, GLUE/CR 32)
    lora_alpha: float = ranged(16.0, POSITIVE)  # paper: alpha = 2r
    lora_dropout: float = ranged(0.05, PROBABILITY)
    # auto: every nn.Linear except the head. Otherwise regexes matched (re.fullmatch) against module
    # names, or plain suffixes ("q_proj" matches "model.layers.0.self_attn.q_proj").
    target_modules: list[str] | str = AUTO
    # Modules trained fully and saved with the adapter (the task head). auto: detected by name.
    modules_to_save: list[str] | str = AUTO
    # MoE (GOAT, MoLoRA, AdaMoLE, HydraLoRA, full-FT MoE).
    num_experts: int = ranged(8, POSITIVE_INT)
    top_k: int = ranged(2, POSITIVE_INT)
    balance_coef: float = ranged(1e-3, NON_NEGATIVE)  # lambda, summed over layers (spec §4)
    balance_convention: str = "reference"  # reference = top_k x the paper's Eq. 26-28
    dropout_mode: str = "per_expert"  # independent dropout mask per (token, selected expert)
    dropout_kernel: str = AUTO  # auto | torch | triton (CUDA, needs the triton package): DROPOUT_KERNELS
    # GOAT initialisation (spec §2) and scaling (spec §3).
    scaling: str = "reference"
    eta: float = ranged(1.0, POSITIVE)  # lr_FullFT / lr_LoRA for scaling=theory (paper: 1 ViT/GLUE/NLG, 0.1 CR)
    rho: float = ranged(10.0, POSITIVE)  # shrink of the SVD factors
    init_coef: float | None = ranged(None, NON_NEGATIVE)  # residual coefficient; None means 1 / num_experts
    segments: str = "ours"  # ours | principal | minor | random (Table 5 ablations)
    # Number of evenly spaced SVD segments the total rank r is cut into (width r / segment_count); None =
    # num_experts. Table 5's "single LoRA + O": num_experts=1 top_k=1 segment_count=8 scaling=lora.
    segment_count: int | None = ranged(None, POSITIVE_INT)
    per_expert_scaling: bool = False  # GOAT-s (Table 8): s_i = s_1 * sqrt(sigma_1 / sigma_i)
    svd_shrink: bool = False  # PiSSA/MiLoRA: also divide by rho and keep init_coef (the reference's variant)
    seed: int = ranged(0, SEED)  # random segments, router and expert init
    # SVD cache: a directory, or None to disable.
    svd_cache_dir: str | None = "~/.cache/goat/svd"
    model_id: str = AUTO  # identity used in the SVD cache key; auto: the model's config._name_or_path

    def __post_init__(self):
        for name in MODEL_RESOLVED:  # None is how configs written before `auto` existed spell it
            if getattr(self, name) is None:
                setattr(self, name, AUTO)

    @property
    def expert_rank(self) -> int:
        return self.r // self.num_experts

    def scaling_value(self, in_features: int) -> float:
        """s of one expert for a layer with `in_features` inputs, by `self.scaling` (spec §3)."""
        d = self.expert_rank
        if self.scaling == "reference":
            return self.lora_alpha / d
        if self.scaling == "theory":
            return math.sqrt(3.0 * self.eta * in_features / d)
        if self.scaling == "lora":
            return self.lora_alpha / self.r
        return self.lora_alpha / math.sqrt(d)

    def effective_init_coef(self) -> float:
        return 1.0 / self.num_experts if self.init_coef is None else self.init_coef

    def effective_segment_count(self) -> int:
        return self.num_experts if self.segment_count is None else self.segment_count

    def resolved(self) -> AdapterConfig:
        """This config with its derived numbers written out: init_coef (1 / E) and segment_count (E) when None."""
        return self.replace(init_coef=self.effective_init_coef(), segment_count=self.effective_segment_count())

    def replace(self, **changes) -> AdapterConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> AdapterConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown adapter config keys {unknown}; valid keys: {sorted(known)}")
        return cls(**values)


def preset(method: str) -> dict:
    """The settings goat/configs/method/<method>.yaml gives over AdapterConfig's defaults (its `method` key too)."""
    path = PRESETS / f"{method}.yaml"
    if not path.is_file():
        choices = sorted(p.stem for p in PRESETS.glob("*.yaml"))
        raise ValueError(f"unknown method {method!r}; choose one of {choices}")
    return yaml.safe_load(path.read_text()) or {}


def validate_choices(cfg: AdapterConfig) -> None:
    """Checks that need no model: enumerations and MoE shape constraints."""
    for name, allowed in (
        ("scaling", SCALING_RULES),
        ("segments", SEGMENT_CHOICES),
        ("balance_convention", BALANCE_CONVENTIONS),
        ("dropout_mode", DROPOUT_MODES),
        ("dropout_kernel", DROPOUT_KERNELS),
    ):
        value = getattr(cfg, name)
        if value not in allowed:
            raise ValueError(f"method.{name} must be one of {list(allowed)}, got {value!r}")
    if cfg.dropout_kernel == "triton" and importlib.util.find_spec("triton") is None:
        raise ValueError("method.dropout_kernel=triton needs the triton package (pip install triton), or use auto")
    for name in ("target_modules", "modules_to_save"):
        value = getattr(cfg, name)
        if value != AUTO and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise ValueError(f"method.{name} must be {AUTO!r} or a list of module names, got {value!r}")
    errors = domain_errors(lambda name: getattr(cfg, name), AdapterConfig, "method")
    if errors:
        raise ValueError(errors[0])


def validate_moe(cfg: AdapterConfig) -> None:
    """MoE constraints (spec §0), after validate_choices has checked each field's domain: d = r / E must be a
    whole number >= 1, and top_k <= E."""
    if not 1 <= cfg.top_k <= cfg.num_experts:
        raise ValueError(
            f"adapter.top_k must be between 1 and num_experts={cfg.num_experts}, got {cfg.top_k}; "
            "lower top_k or raise num_experts"
        )
    if cfg.r % cfg.num_experts != 0:
        raise ValueError(
            f"adapter.r={cfg.r} is not divisible by num_experts={cfg.num_experts}: each expert needs "
            f"rank r / E; use r={cfg.num_experts * max(1, cfg.r // cfg.num_experts)} or change num_experts"
        )
    validate_segment_count(cfg)


def validate_segment_count(cfg: AdapterConfig) -> None:
    """segment_count (None = num_experts) cuts r into equal SVD segments, so it must divide r (spec §2.2)."""
    count = cfg.segment_count
    if count is None:
        return
    if cfg.r % count != 0:
        divisors = [c for c in range(1, cfg.r + 1) if cfg.r % c == 0]
        raise ValueError(
            f"adapter.r={cfg.r} is not divisible by segment_count={count}: each SVD segment has width "
            f"r / segment_count; use a segment_count in {divisors} or null (= num_experts)"
        )
    if cfg.per_expert_scaling and count != cfg.num_experts:
        raise ValueError(
            f"adapter.per_expert_scaling (GOAT-s) is ambiguous with segment_count={count} != "
            f"num_experts={cfg.num_experts} (scale per expert or per segment?); set segment_count=null "
            "or per_expert_scaling=false"
        )
