"""The method registry, its presets and the checks that run before any model is loaded."""

import pytest

from goat.adapters import METHODS, AdapterConfig, method_config, validate
from goat.cli import CONFIG_DIR

CONFIGS = CONFIG_DIR / "method"


def test_registry_equals_shipped_method_configs():
    assert set(METHODS) == {path.stem for path in CONFIGS.glob("*.yaml")}
    assert set(METHODS) == {
        "goat",
        "lora",
        "rslora",
        "dora",
        "pissa",
        "milora",
        "molora",
        "adamole",
        "hydralora",
        "full_ft",
        "full_ft_moe",
    }


def test_paper_defaults():
    cfg = method_config("goat")
    assert (cfg.num_experts, cfg.top_k, cfg.rho, cfg.lora_dropout, cfg.balance_coef) == (8, 2, 10.0, 0.05, 1e-3)
    assert cfg.effective_init_coef() == 1 / 8 and cfg.scaling == "reference" and cfg.segments == "ours"
    assert method_config("molora").scaling == "lora"


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"method": "gaot"}, "unknown method 'gaot'; choose one of"),
        ({"top_k": 9}, "top_k must be between 1 and num_experts=8"),
        ({"r": 12}, "r=12 is not divisible by num_experts=8"),
        ({"scaling": "big"}, "adapter.scaling must be one of"),
        ({"segments": "middle"}, "adapter.segments must be one of"),
        ({"lora_dropout": 1.5}, r"method.lora_dropout=1.5 must be a probability in \[0, 1\)"),
    ],
)
def test_invalid_configs_fail_with_one_clear_message(changes, message):
    with pytest.raises(ValueError, match=message):
        validate(AdapterConfig(**changes))


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ValueError, match="unknown adapter config keys \\['num_expert'\\]; valid keys"):
        method_config("goat", num_expert=4)
