"""A run's config says what ran (issue 19): `goat-train --cfg`, every run's config.yaml (and so W&B's run config)
and final/adapter_config.json show the same, real value of every method setting, for every method."""

import json
import subprocess
import sys

import pytest
import yaml

from goat.adapters import METHODS, method_config
from goat.adapters.config import AUTO, MODEL_RESOLVED
from goat.checks import check_same_run
from goat.cli import compose
from goat.config import ConfigError, load_run_config
from goat.train import train
from tests.conftest import tiny_run_overrides

RESUMED = ("method.num_experts=4", "trainer.max_steps=1", "resume=auto")
PEFT_CONVERTED = ("pissa", "milora")  # saved as a LoRA of rank 2r on the original base (PEFT's conversion)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_composed_config_shows_the_presets_values_and_no_null(method):
    """Before any model loads: every method value is written out and is the value the adapter gets (the preset of
    goat/configs/method/<method>.yaml over AdapterConfig's defaults, derived numbers resolved); only the three
    model-dependent names read `auto`."""
    shown = dict(compose([f"method={method}"]).method)
    assert all(value is not None for value in shown.values()), shown
    expected = method_config(method, lora_dropout=0.0).resolved().to_dict()  # the default task sets dropout 0
    assert shown == expected
    # chosen once the model and the device are known (apply_adapter), and written into config.yaml then
    assert {name for name, value in shown.items() if value == AUTO} == {*MODEL_RESOLVED, "dropout_kernel"}


def test_presets_and_derived_numbers_follow_the_paper():
    """Spec §7 and goat's decision 1: 1 / E residual for GOAT, 1 for PiSSA and MiLoRA, alpha / r for the MoE
    baselines, dense routing for HydraLoRA, one dropout mask per token for AdaMoLE."""
    goat = compose(["method=goat", "method.num_experts=4"]).method
    assert (goat.init_coef, goat.segment_count, goat.top_k, goat.scaling) == (0.25, 4, 2, "reference")
    assert compose(["method=pissa"]).method.init_coef == compose(["method=milora"]).method.init_coef == 1.0
    hydra = compose(["method=hydralora"]).method
    assert (hydra.top_k, hydra.num_experts, hydra.scaling) == (8, 8, "lora")
    assert compose(["method=adamole"]).method.dropout_mode == "shared"
    assert compose(["method=goat", "method.init_coef=0.5"]).method.init_coef == 0.5  # an explicit value stays


def test_goat_train_cfg_job_prints_no_null_under_method():
    shown = subprocess.run(
        [sys.executable, "-m", "goat.cli", "method=goat", "--cfg", "job"], capture_output=True, text=True, timeout=120
    )
    assert shown.returncode == 0, shown.stderr[-2000:]
    method = yaml.safe_load(shown.stdout)["method"]
    assert [name for name, value in method.items() if value is None] == []
    numbers = (method["r"], method["num_experts"], method["top_k"], method["rho"], method["init_coef"])
    assert numbers == (8, 8, 2, 10.0, 0.125)  # AdapterConfig's defaults, the paper's (spec, goat's decision 1)


def tiny_run(model_dir, data, out, method, *extra):
    """A one-step run of `method` on the tiny BERT; returns (config.yaml's method section, adapter_config.json)."""
    overrides = tiny_run_overrides(model_dir, data, out, f"method={method}", "trainer.max_steps=1", *extra)
    assert train(compose(overrides))["status"] == "finished"
    saved = yaml.safe_load((out / "config.yaml").read_text())["method"]
    return saved, json.loads((out / "final" / "adapter_config.json").read_text())


@pytest.mark.parametrize("method", sorted(METHODS))
def test_config_yaml_equals_the_saved_adapter_config(method, tiny_model_dir, keyword_data, tmp_path):
    saved, adapter = tiny_run(tiny_model_dir, keyword_data, tmp_path / "run", method)
    assert [name for name, value in saved.items() if value is None or value == AUTO] == []
    assert (saved["method"], saved["r"], saved["lora_alpha"]) == (method, 32, 64.0)  # tiny_run_overrides' values
    assert saved["modules_to_save"] == ["classifier"]
    # 2 layers x (query, key, value, attention output, intermediate, output) + the pooler: every linear but the head
    assert len(saved["target_modules"]) == 2 * 6 + 1 and "bert.pooler.dense" in saved["target_modules"]
    assert saved["model_id"] == str(tiny_model_dir)  # the model's config._name_or_path
    assert saved["dropout_kernel"] == "torch"  # auto on a CPU: the torch ops
    if METHODS[method].backend == "goat":
        assert adapter["adapter"] == saved
        assert (adapter["targets"], adapter["heads"]) == (saved["target_modules"], saved["modules_to_save"])
        return
    # PEFT's own adapter_config.json: its LoRA fields are config.yaml's (PiSSA and MiLoRA are saved converted to a
    # plain LoRA of rank 2r and alpha 2 alpha on the original base weights, PEFT's documented conversion).
    factor = 2 if method in PEFT_CONVERTED else 1
    assert (adapter["r"], adapter["lora_alpha"]) == (factor * saved["r"], factor * saved["lora_alpha"])
    assert adapter["lora_dropout"] == saved["lora_dropout"]
    assert sorted(adapter["target_modules"]) == sorted(saved["target_modules"])
    assert adapter["modules_to_save"] == saved["modules_to_save"]
    assert (adapter["use_rslora"], adapter["use_dora"]) == (method == "rslora", method == "dora")


def test_a_run_config_written_with_nulls_loads_as_it_ran(tiny_model_dir, keyword_data, tmp_path):
    """Runs written before every value was recorded (method values null = the preset) still load, resume and
    evaluate: null reads as the preset value that trained, not as AdapterConfig's default."""
    from goat.evaluate_run import evaluate_run

    out = tmp_path / "run"
    saved, _ = tiny_run(tiny_model_dir, keyword_data, out, "molora", "method.num_experts=4")
    final = json.loads((out / "results.json").read_text())["final"]
    old = yaml.safe_load((out / "config.yaml").read_text())
    old["method"] = {"method": "molora", "r": 32, "lora_alpha": 64.0, "num_experts": 4}
    nulls = ("lora_dropout", "top_k", "scaling", "init_coef", "segment_count", *MODEL_RESOLVED)
    old["method"].update({name: None for name in nulls})
    (out / "config.yaml").write_text(yaml.safe_dump(old))

    loaded = load_run_config(out / "config.yaml").method
    assert (loaded.scaling, loaded.top_k, loaded.init_coef, loaded.segment_count) == ("lora", 2, 0.25, 4)
    assert {name: loaded[name] for name in MODEL_RESOLVED} == {name: AUTO for name in MODEL_RESOLVED}
    assert {k: v for k, v in dict(loaded).items() if k not in MODEL_RESOLVED} == {
        k: v for k, v in saved.items() if k not in MODEL_RESOLVED
    }
    assert evaluate_run(out) == pytest.approx({k: v for k, v in final.items() if "/" in k})  # goat-eval, same scores
    check_same_run(compose(tiny_run_overrides(tiny_model_dir, keyword_data, out, "method=molora", *RESUMED)), out)
    with pytest.raises(ConfigError, match=r"method.scaling: 'lora' -> 'reference'"):
        check_same_run(compose(tiny_run_overrides(tiny_model_dir, keyword_data, out, "method=goat", *RESUMED)), out)
