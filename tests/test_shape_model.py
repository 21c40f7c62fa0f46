"""The paper's recipe at the paper's shape without a download: a config-and-tokenizer folder, random weights."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from shape_model import LLAMA2_7B, write_shape  # noqa: E402

from goat.cli import compose  # noqa: E402
from goat.train import train  # noqa: E402

MATH = Path(__file__).resolve().parents[2] / "shared" / "data" / "math"
SHRINK = {"hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 2, "num_attention_heads": 4}


def test_shape_folder_is_llama2_7b_with_a_byte_tokenizer(tmp_path):
    from transformers import AutoConfig, AutoTokenizer

    folder = write_shape(tmp_path / "llama2-7b")
    config = AutoConfig.from_pretrained(folder)
    assert {key: getattr(config, key) for key in LLAMA2_7B} == LLAMA2_7B
    tokenizer = AutoTokenizer.from_pretrained(folder)
    text = "Natalia sold 48/2 = 24 clips in May. ✓"
    ids = tokenizer(text)["input_ids"]
    assert ids[0] == config.bos_token_id and len(ids) == 1 + len(text.encode())  # one token per byte
    assert tokenizer.decode(ids, skip_special_tokens=True) == text and max(ids) < config.vocab_size


@pytest.mark.skipif(not (MATH / "gsm8k_official").is_dir(), reason=f"{MATH} (shared test data) is missing")
def test_math_recipe_runs_on_the_shape_with_random_weights_and_says_so(tmp_path, caplog):
    """goat-train's math recipe (micro-batch 4, 512 tokens) on the folder, shrunk here to 2 tiny blocks."""
    folder = write_shape(tmp_path / "llama2-7b", **SHRINK, num_key_value_heads=4)
    out = tmp_path / "run"
    overrides = [
        "task=math/gsm8k",
        f"task.data_dir={MATH}",
        "task.max_train_samples=16",
        "task.max_eval_samples=2",
        "task.max_new_tokens=4",
        f"model.name_or_path={folder}",
        "model.from_config=true",
        "model.dtype=float32",
        "method=goat",
        "trainer=cpu",
        "trainer.max_steps=2",
        "trainer.batch_size=4",
        "trainer.progress=false",
        "logger=none",
        f"output_dir={out}",
    ]
    results = train(compose(overrides))
    assert results["status"] == "finished" and results["steps"] == 2 and results["random_weights"] is True
    assert "RANDOM weights" in caplog.text
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any(row.get("train/tokens_per_s", 0) > 0 for row in rows)


@pytest.mark.skipif(not (MATH / "gsm8k_official").is_dir(), reason=f"{MATH} (shared test data) is missing")
def test_profile_train_times_the_steps_and_the_stages_without_adding_steps_to_the_run(tmp_path):
    """scripts/profile_train.py (PART=profile's device run) on the shrunk shape: synchronised step times, the
    profiler's tables, the three stages on the trainer's model; the stages' optimizer steps are not the run's."""
    from profile_train import main

    folder = write_shape(tmp_path / "llama2-7b", **SHRINK, num_key_value_heads=4)
    out, run = tmp_path / "profile", tmp_path / "run"
    summary = main(
        ["--out", str(out), "--skip", "1", "--steps", "1", "--"]
        + [f"task.data_dir={MATH}", f"model.name_or_path={folder}", f"output_dir={run}", "task=math/gsm8k"]
        + ["task.max_train_samples=16", "task.max_eval_samples=2", "task.max_new_tokens=4", "model.from_config=true"]
        + ["model.dtype=float32", "method=goat", "trainer=cpu", "trainer.max_steps=3", "trainer.batch_size=2"]
        + ["trainer.micro_batch_size=2", "trainer.progress=false", "logger=none"]
    )
    assert len(summary["step_s"]) == 2 and all(t > 0 for t in summary["step_s"])
    assert list(summary["stages_ms"]) == [
        "a benchmark step",
        "b benchmark step, loader batch",
        "c Trainer._optimizer_step",
    ] and all(ms > 0 for ms in summary["stages_ms"].values())
    assert json.loads((out / "steps.json").read_text()) == summary
    assert "by self_cpu_time_total" in (out / "profile.txt").read_text()
    assert json.loads((run / "results.json").read_text())["steps"] == 3
