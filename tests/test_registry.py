"""The method registry, its presets and the checks that run before any model is loaded."""

import pytest

from goat.adapters import METHODS, AdapterConfig, method_config, validate
from goat.compose import CONFIG_DIR

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
        ({"scaling": "big"}, "method.scaling must be one of"),
        ({"segments": "middle"}, "method.segments must be one of"),
        ({"lora_dropout": 1.5}, r"method.lora_dropout=1.5 must be a probability in \[0, 1\)"),
    ],
)
def test_invalid_configs_fail_with_one_clear_message(changes, message):
    with pytest.raises(ValueError, match=message):
        validate(AdapterConfig(**changes))


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ValueError, match="unknown adapter config keys \\['num_expert'\\]; valid keys"):
        method_config("goat", num_expert=4)


def test_a_new_methods_parameters_train_whatever_their_name(monkeypatch):
    """What trains is what the adapter builds (plus the heads), not parameters named lora_*: a method whose layer
    owns a parameter called `gain` trains it, and the base model stays frozen."""
    import torch
    from torch import nn

    from goat.adapters import apply_adapter
    from goat.adapters.registry import Method
    from goat.adapters.surgery import replace_module

    class Scaled(nn.Module):
        def __init__(self, base):
            super().__init__()
            self.base, self.gain = base, nn.Parameter(torch.ones(base.out_features))

        def forward(self, x):
            return self.base(x) * self.gain

    def build(model, cfg, targets, initialize=True):
        for name in targets:
            replace_module(model, name, Scaled(model.get_submodule(name)))
        return model

    monkeypatch.setitem(METHODS, "scaled", Method(build, "goat"))
    model = nn.Sequential()
    model.add_module("proj", nn.Linear(4, 4))
    model.add_module("classifier", nn.Linear(4, 2))
    apply_adapter(model, AdapterConfig.from_dict({"method": "scaled"}))
    trainable = sorted(name for name, p in model.named_parameters() if p.requires_grad)
    assert trainable == ["classifier.bias", "classifier.weight", "proj.gain"]
