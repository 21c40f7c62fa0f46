"""A NaN loss stops the run with its step, the router statistics logged and the last checkpoint kept;
trainer.on_nonfinite=skip drops that step and finishes."""

import json
import math

import pytest
import torch
from conftest import tiny_run_overrides
from safetensors.torch import load_file

from goat import checkpoint
from goat.cli import compose, train_main
from goat.config import ConfigError
from goat.train import train
from goat.trainer import NonFiniteLossError

COMMON = ["trainer.max_steps=12", "trainer.save_every_steps=5", "trainer.log_every_steps=1"]


def nan_once_after(step_to_break):
    """A callback that makes the classifier's next forward pass output NaN, once."""
    state = {"armed": False, "hooked": False}

    def callback(trainer, step):
        if step == step_to_break and not state["hooked"]:
            model = trainer.accelerator.unwrap_model(trainer.model)

            def poison(module, inputs, output):
                if state["armed"]:
                    state["armed"] = False
                    return output * float("nan")
                return output

            model.classifier.register_forward_hook(poison)
            state["armed"] = state["hooked"] = True

    return callback


def records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_nan_loss_stops_with_the_step_router_stats_and_the_last_checkpoint(tiny_model_dir, keyword_data, tmp_path):
    out = tmp_path / "run"
    cfg = compose(tiny_run_overrides(tiny_model_dir, keyword_data, out, *COMMON))
    with pytest.raises(NonFiniteLossError, match=r"not finite at step 7 .*step-00000005, is kept.*on_nonfinite=skip"):
        train(cfg, callbacks=[nan_once_after(6)])
    failing = next(r for r in records(out) if r.get("status") == "nonfinite")
    assert failing["step"] == 7 and math.isnan(failing["nonfinite/losses"][0])
    loads = [v for k, v in failing.items() if k.startswith("load/")]
    assert loads and all(abs(sum(load) - 1.0) < 1e-4 for load in loads)  # expert load of the failing pass
    kept = checkpoint.list_checkpoints(out)
    assert [p.name for p in kept] == ["step-00000005"] and checkpoint.verify(kept[0]) is None
    assert not (out / "results.json").exists()
    resumed = train(compose(tiny_run_overrides(tiny_model_dir, keyword_data, out, *COMMON, "resume=auto")))
    assert resumed["status"] == "finished" and resumed["steps"] == 12  # the kept checkpoint resumes


def test_skip_mode_drops_the_step_and_finishes(tiny_model_dir, keyword_data, tmp_path):
    out = tmp_path / "run"
    cfg = compose(tiny_run_overrides(tiny_model_dir, keyword_data, out, *COMMON, "trainer.on_nonfinite=skip"))
    results = train(cfg, callbacks=[nan_once_after(6)])
    assert results["status"] == "finished" and results["steps"] == 12
    assert [r["train/skipped_steps"] for r in records(out) if "train/skipped_steps" in r] == [1]
    steps = [r["step"] for r in records(out) if "train/loss" in r]
    assert steps == list(range(1, 13)) and all(
        math.isfinite(r["train/loss"]) for r in records(out) if "train/loss" in r
    )
    final = out / "final" / "adapter_model.safetensors"
    assert all(torch.isfinite(t).all() for t in load_file(str(final)).values())


def test_unknown_mode_is_a_config_error(tiny_model_dir, keyword_data, tmp_path, capsys):
    args = tiny_run_overrides(tiny_model_dir, keyword_data, tmp_path / "x", "trainer.on_nonfinite=ignore")
    with pytest.raises(ConfigError, match="trainer.on_nonfinite='ignore' is unknown; valid: stop, skip"):
        train(compose(args))
    assert train_main(args) == 2 and "on_nonfinite" in capsys.readouterr().err
