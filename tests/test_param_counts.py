"""Trainable-parameter percentages of the paper's configurations next to its '# Params (%)' columns (spec §5-§8).

Models are built from configs on the meta device (no download, nothing allocated): the CLIP ViT-B/32 vision
tower + a new Linear(768, 10) head (Table 1), RoBERTa-large + its classification head, 2 labels (Table 4),
LLaMA-2-7B (Table 3). Each method is applied with `apply_adapter` and the paper's settings (spec §6):
ViT r=8, alpha=16, every Linear; GLUE r=32, alpha=64, every encoder Linear; commonsense reasoning (CR)
r=32, alpha=64 on q,k,v,up,down; E=8, top-2.

Percentage used throughout (the one rule that reproduces the paper best):

    100 * (trainable parameters outside the new task head) / (parameters of the pretrained model outside the head)

i.e. the denominator is the model before adaptation and the new task head (ViT classifier, RoBERTa
classification head) is left out of both counts. LLaMA has no new head: its lm_head is pretrained, frozen
and in the denominator. The head is left out because it reproduces Table 4: RoBERTa-large LoRA r=32 trains
14,155,776 parameters = 3.995% of the 354,310,144-parameter encoder (paper 4.00); counting the head's
1,051,650 parameters would give 4.29% (or 3.98% with it in the denominator only). For ViT the head is only
769*C parameters (0.009% for C=10). Every method still trains the head fully, once, and the test checks that.

Where the paper differs (KNOWN_DIFFERENCES), the test documents why with numbers, and checks that a stated
alternative computation does reproduce the paper's value, so a wrong explanation makes the test fail:
  * ViT, every row except Full FT: the paper's denominator is about 1.5% larger than the 87,456,000-parameter
    vision tower (each row needs one between 88.7M and 89.5M). The whole column matches the tower + the
    rank-8 LoRA adapter (88,783,104: the "all params" that PEFT's print_trainable_parameters reports for the
    LoRA run) used as the denominator of every row. Inferred, not stated in the paper.
  * DoRA (ViT, GLUE): its trainable magnitude vector (out_features per adapted layer) is left out of the
    paper's "DoRA = LoRA" percentages. On LLaMA it is 876,544 parameters (0.013%): 0.846 vs 0.84 passes the
    tolerance on the real model (it would be 0.851 under the GQA assumption below).
  * LLaMA GOAT/MoLoRA: spec §9.16, the paper's count assumes grouped-query attention that LLaMA-2-7B does
    not have; with 8 KV heads it reproduces 0.96. LoRA/PiSSA/MiLoRA are within the tolerance of 0.84 either
    way (0.833 on the real model, 0.840 with 8 KV heads). 4 KV heads would fit as well (0.841 / 0.962).
  * LLaMA HydraLoRA: the paper lists LoRA's 0.84; HydraLoRA's own count is 0.572%.

Tolerances: 0.01 absolute (percentages are printed with two decimals), 1% relative for Full FT (MoE).

Meta device: adapters are applied inside `torch.device("meta")` too, so PEFT creates its LoRA factors on
meta directly (outside it PEFT allocates and kaiming-initialises them on the CPU first: ~4 s per LLaMA
method) and PEFT's PiSSA SVD runs on meta tensors (outside it, PEFT's `pissa_init` fails on a meta base
layer with "variable.set_data(tensor) ... incompatible tensor type": goat's `apply_adapter` does not
handle method "pissa" on a meta model by itself). torch.nn.init is made a no-op meanwhile (`skip_init`):
values do not matter for counting, and on meta the initialisers only cost Python time.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from unittest import mock

import pytest
import torch

from goat.adapters import apply_adapter, method_config
from goat.adapters.surgery import find_heads

LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]

# Spec §6: total rank, alpha, target layers (None: every Linear outside the head).
SETTINGS = {
    "vit": dict(r=8, lora_alpha=16, target_modules=None),
    "glue": dict(r=32, lora_alpha=64, target_modules=None),
    "cr": dict(r=32, lora_alpha=64, target_modules=LLAMA_TARGETS),
}
NUM_TARGETS = {"vit": 12 * 6, "glue": 24 * 6, "cr": 32 * 5}

# Spec §8: '# Params (%)' of Table 1 (ViT), Table 4 (GLUE) and Table 3 (CR).
PAPER = {
    "vit": {
        "full_ft": 100,
        "full_ft_moe": 770,
        "lora": 1.49,
        "dora": 1.49,
        "pissa": 1.49,
        "milora": 1.49,
        "molora": 2.24,
        "adamole": 2.33,
        "hydralora": 1.58,
        "goat": 2.24,
    },
    "glue": {
        "full_ft": 100,
        "full_ft_moe": 698,
        "lora": 4.00,
        "dora": 4.00,
        "pissa": 4.00,
        "milora": 4.00,
        "rslora": 4.00,
        "molora": 4.50,
        "adamole": 4.56,
        "hydralora": 2.75,
        "goat": 4.50,
    },
    "cr": {
        "lora": 0.84,
        "dora": 0.84,
        "pissa": 0.84,
        "milora": 0.84,
        "molora": 0.96,
        "hydralora": 0.84,
        "goat": 0.96,
    },
}

ADAPTER_METHODS = ("lora", "rslora", "dora", "pissa", "milora", "molora", "adamole", "hydralora", "goat")
PEFT_PREFIX = "base_model.model."


# ---------------------------------------------------------------- models from configs, on the meta device


def build_model(family: str, kv_heads: int = 32) -> torch.nn.Module:
    """The paper's pretrained model of `family` from its config alone; call inside torch.device('meta')."""
    if family == "vit":
        from transformers import CLIPConfig, CLIPForImageClassification, CLIPVisionConfig

        vision = CLIPVisionConfig(
            hidden_size=768,
            num_hidden_layers=12,
            num_attention_heads=12,
            intermediate_size=3072,
            patch_size=32,
            image_size=224,
        )
        # CLIPForImageClassification: vision tower + mean of patch tokens + new Linear(768, C), spec §6.
        return CLIPForImageClassification(CLIPConfig(vision_config=vision.to_dict(), num_labels=10))
    if family == "glue":
        from transformers import RobertaConfig, RobertaForSequenceClassification

        config = RobertaConfig(
            hidden_size=1024,
            num_hidden_layers=24,
            num_attention_heads=16,
            intermediate_size=4096,
            vocab_size=50265,
            max_position_embeddings=514,
            type_vocab_size=1,
            num_labels=2,
        )
        return RobertaForSequenceClassification(config)
    if family == "cr":
        from transformers import LlamaConfig, LlamaForCausalLM

        config = LlamaConfig(
            hidden_size=4096,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=kv_heads,
            intermediate_size=11008,
            vocab_size=32000,
        )
        return LlamaForCausalLM(config)
    raise ValueError(family)


def _inside(name: str, prefixes: list[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


@dataclass(frozen=True)
class Count:
    trainable: int  # trainable parameters outside the task head (adapter, or everything for full FT)
    base: int  # parameters of the pretrained model outside the task head
    head: int  # parameters of the task head (0 for LLaMA)
    head_trainable: int  # trainable head parameters after adaptation (PEFT: its modules_to_save copy)
    magnitude: int  # DoRA's magnitude vectors (part of `trainable`)
    non_adapter: tuple[str, ...]  # trainable parameters outside the head that are not adapter ("lora_") ones
    frozen: int  # frozen parameters outside the head
    targets: int

    @property
    def percent(self) -> float:
        return 100.0 * self.trainable / self.base


def _identity(tensor, *args, **kwargs):
    return tensor


def skip_init():
    """torch.nn.init's in-place initialisers as no-ops: on meta tensors they only cost Python time (~2.5 s here)."""
    names = [n for n in dir(torch.nn.init) if n.endswith("_") and not n.startswith("_")]
    return mock.patch.multiple(torch.nn.init, **dict.fromkeys(names, _identity))


@functools.cache
def measure(family: str, method: str, kv_heads: int = 32) -> Count:
    """Parameter counts of `method` applied with the paper's settings to a fresh meta model of `family`."""
    with torch.device("meta"), skip_init():
        model = build_model(family, kv_heads)
        heads = find_heads(model, "auto")
        head = sum(p.numel() for n, p in model.named_parameters() if _inside(n, heads))
        base = sum(p.numel() for p in model.parameters()) - head
        cfg = method_config(method, **SETTINGS[family], svd_cache_dir=None)
        adapted = apply_adapter(model, cfg)
    assert all(p.device.type == "meta" for p in adapted.parameters())
    trainable = head_trainable = magnitude = frozen = 0
    non_adapter = []
    for name, param in adapted.named_parameters():
        name = name.removeprefix(PEFT_PREFIX)
        if _inside(name, heads):
            head_trainable += param.numel() if param.requires_grad else 0
            continue
        if not param.requires_grad:
            frozen += param.numel()
            continue
        trainable += param.numel()
        if "lora_magnitude_vector" in name:
            magnitude += param.numel()
        if "lora_" not in name:
            non_adapter.append(name)
    return Count(
        trainable, base, head, head_trainable, magnitude, tuple(non_adapter), frozen, len(adapted.goat_adapter.targets)
    )


# ---------------------------------------------------------------- known differences, each with its alternative


def vit_paper_denominator() -> int:
    """Vision tower + the rank-8 LoRA adapter: PEFT's 'all params' of the LoRA run (88,783,104)."""
    lora = measure("vit", "lora")
    return lora.base + lora.trainable


@dataclass(frozen=True)
class Known:
    reason: str
    alternative: Callable[[], float]  # the paper's value recomputed the way `reason` says it was computed


def _vit_alternative(method: str) -> Callable[[], float]:
    return lambda: 100.0 * measure("vit", method).trainable / vit_paper_denominator()


VIT_DENOMINATOR = (
    "the paper's ViT column divides by 88.7M-89.5M, not by the 87,456,000 parameters of the CLIP ViT-B/32 "
    "vision tower: LoRA r=8 trains 1,327,104 = 1.517% of the tower (paper 1.49), GOAT 1,990,656 = 2.276% "
    "(paper 2.24), Full FT MoE 683,242,752 = 781% (paper 770). Inferred: every row is divided by the tower "
    "plus the rank-8 LoRA adapter, 88,783,104, the 'all params' PEFT prints for the LoRA run; that gives "
    "LoRA 1.495, GOAT/MoLoRA 2.242, AdaMoLE 2.336, HydraLoRA 1.588, Full FT MoE 769.6"
)
DORA_MAGNITUDE = (
    "DoRA also trains its magnitude vector, out_features per adapted layer ({numbers}), which the paper's "
    "DoRA = LoRA percentage leaves out; alternative: the count without lora_magnitude_vector{denominator}"
)
LLAMA_GQA = (
    "spec §9.16: the paper's LLaMA-2-7B count assumes grouped-query attention, which LLaMA-2-7B does not have "
    "(32 KV heads). On the real model GOAT and MoLoRA train 63,111,168 of 6,738,415,616 parameters = 0.937%; with 8 "
    "KV heads (k/v_proj 4096 -> 1024) the same adapter is 56,819,712 of 5,933,109,248 = 0.958%, the paper's "
    "0.96 (the same assumption gives LoRA 0.840 vs 0.833 on the real model, both within tolerance of 0.84); "
    "alternative: the count on the 8-KV-head model"
)

KNOWN_DIFFERENCES: dict[tuple[str, str], Known] = {
    # One cause (the ViT denominator) for the whole ViT column except Full FT (100 by definition).
    **{
        ("vit", m): Known(VIT_DENOMINATOR, _vit_alternative(m))
        for m in ("lora", "pissa", "milora", "molora", "adamole", "hydralora", "goat", "full_ft_moe")
    },
    ("vit", "dora"): Known(
        DORA_MAGNITUDE.format(
            numbers="12 x (4x768 + 3072 + 768) = 82,944 = +0.095%, 1.612% in all",
            denominator=" divided by ViT's 88,783,104 as for the other ViT rows (1.495%)",
        ),
        lambda: 100.0 * (measure("vit", "dora").trainable - measure("vit", "dora").magnitude) / vit_paper_denominator(),
    ),
    ("glue", "dora"): Known(
        DORA_MAGNITUDE.format(
            numbers="24 x (4x1024 + 4096 + 1024) = 221,184 = +0.062%, 4.058% in all", denominator=" (3.995%)"
        ),
        lambda: (
            100.0
            * (measure("glue", "dora").trainable - measure("glue", "dora").magnitude)
            / measure("glue", "dora").base
        ),
    ),
    ("cr", "goat"): Known(LLAMA_GQA, lambda: measure("cr", "goat", kv_heads=8).percent),
    ("cr", "molora"): Known(LLAMA_GQA, lambda: measure("cr", "molora", kv_heads=8).percent),
    ("cr", "hydralora"): Known(
        "the paper lists LoRA's 0.84 for HydraLoRA: with r=32, E=8 (one shared A of d x n, d=4, eight heads "
        "B_i of m x d, a router of 8 x n) HydraLoRA trains 38,567,936 = 0.572% (0.544% with 8 KV heads), "
        "0.69x LoRA, the ratio of the paper's own GLUE column at the same r=32, E=8 (2.75 vs 4.00); "
        "alternative: LoRA r=32 on the 8-KV-head model (0.840)",
        lambda: measure("cr", "lora", kv_heads=8).percent,
    ),
}


def tolerance(paper: float) -> float:
    return 0.01 * paper if paper >= 100 else 0.01


def table(family: str) -> tuple[str, list[str]]:
    """The printed comparison and the list of failures for one family."""
    rows = [f"[{family}] method | ours % | paper % | diff | note", "-" * 80]
    failures = []
    for method, paper in PAPER[family].items():
        ours = measure(family, method).percent
        diff = ours - paper
        close = abs(diff) <= tolerance(paper)
        known = KNOWN_DIFFERENCES.get((family, method))
        note = ""
        if known is not None:
            alternative = known.alternative()
            alt_close = abs(alternative - paper) <= tolerance(paper)
            note = f"known: paper's way gives {alternative:.4f}" + ("" if alt_close else "  <-- does NOT match")
            if close:
                failures.append(
                    f"{family}/{method}: listed as a known difference but ours {ours:.4f} "
                    f"matches the paper's {paper}; remove the entry"
                )
            if not alt_close:
                failures.append(
                    f"{family}/{method}: the documented alternative gives {alternative:.4f}, "
                    f"not the paper's {paper}: {known.reason}"
                )
        elif not close:
            note = "<-- DIFFERS, undocumented"
            failures.append(f"{family}/{method}: ours {ours:.4f}% vs paper {paper}% (diff {diff:+.4f})")
        rows.append(f"{method:12s} | {ours:9.4f} | {paper:7.2f} | {diff:+9.4f} | {note}")
    reasons: dict[str, list[str]] = {}
    for (fam, method), known in KNOWN_DIFFERENCES.items():
        if fam == family:
            reasons.setdefault(known.reason, []).append(method)
    rows += [f"  known difference ({', '.join(methods)}): {reason}" for reason, methods in reasons.items()]
    return "\n".join(rows), failures


# ---------------------------------------------------------------- tests


@pytest.mark.parametrize("family", ["vit", "glue", "cr"])
def test_trainable_percentages_match_the_paper_or_a_documented_difference(family, capsys):
    text, failures = table(family)
    with capsys.disabled():  # shown with or without -s
        print("\n" + text)
    print(text)  # also in the captured output of a failure
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("family", ["vit", "glue", "cr"])
def test_counts_have_the_paper_structure(family):
    """Every method adapts the paper's target layers and trains the head fully (once); adapter methods keep the
    whole pretrained model frozen and train only adapter weights; full FT (MoE) trains everything."""
    for method in PAPER[family]:
        count = measure(family, method)
        assert count.targets == NUM_TARGETS[family], (method, count.targets)
        assert count.head_trainable == count.head, (method, count.head_trainable, count.head)
        if method in ADAPTER_METHODS:
            assert count.non_adapter == (), (method, count.non_adapter[:5])
            assert count.frozen == count.base, (method, count.frozen, count.base)
        else:
            assert count.frozen == 0, (method, count.frozen)
            assert count.trainable == count.base if method == "full_ft" else count.trainable > count.base
    assert set(KNOWN_DIFFERENCES) <= {(f, m) for f in PAPER for m in PAPER[f]}


def test_closed_form_counts():
    """The counts against hand formulas, so a change in layer shapes cannot hide behind the percentages."""
    # ViT: per layer 4 x (768 -> 768) + (768 -> 3072) + (3072 -> 768); 12 layers.
    shapes = [(768, 768)] * 4 + [(768, 3072), (3072, 768)]
    lora = 12 * sum(8 * (n + m) for n, m in shapes)
    router = 12 * sum(8 * n for n, m in shapes)
    assert measure("vit", "lora").trainable == lora == 1_327_104
    assert measure("vit", "goat").trainable == lora + router
    assert measure("vit", "adamole").trainable == lora + router + 12 * sum(n + 1 for n, m in shapes)
    assert measure("vit", "hydralora").trainable == 12 * sum(n + 8 * m + 8 * n for n, m in shapes)
    assert measure("vit", "dora").magnitude == 12 * sum(m for n, m in shapes) == 82_944
    # RoBERTa-large: 24 layers of 4 x (1024 -> 1024) + (1024 -> 4096) + (4096 -> 1024).
    shapes = [(1024, 1024)] * 4 + [(1024, 4096), (4096, 1024)]
    assert measure("glue", "lora").base == 354_310_144
    assert measure("glue", "lora").trainable == 24 * sum(32 * (n + m) for n, m in shapes) == 14_155_776
    assert measure("glue", "hydralora").trainable == 24 * sum(4 * n + 32 * m + 8 * n for n, m in shapes)
    # Full FT MoE: 8 copies (weights and biases) of every target + routers + the rest of the encoder.
    targets = 24 * sum(n * m + m for n, m in shapes)
    assert measure("glue", "full_ft_moe").trainable == 8 * targets + 24 * sum(8 * n for n, m in shapes) + (
        354_310_144 - targets
    )
    # LLaMA-2-7B: q,k,v (4096 -> 4096), up (4096 -> 11008), down (11008 -> 4096); 32 layers.
    shapes = [(4096, 4096)] * 3 + [(4096, 11008), (11008, 4096)]
    assert measure("cr", "lora").base == 6_738_415_616
    assert measure("cr", "lora").trainable == 32 * sum(32 * (n + m) for n, m in shapes) == 56_098_816
    assert measure("cr", "goat").trainable == 56_098_816 + 32 * sum(8 * n for n, m in shapes) == 63_111_168
    assert measure("cr", "goat", kv_heads=8).base == 5_933_109_248
