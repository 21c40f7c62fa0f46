"""The decoder comparison (goat/paper_results.yaml small_decoder): training on the union of commonsense train splits in
the format loglik scores, held-out rows of that union to choose the learning rate on, and the grid through goat-grid
and goat-report with the untrained row, the chosen-on column, t intervals and the paired test."""

import copy
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import byte_level_bpe

from goat.checks import check_config
from goat.cli import compose
from goat.config import ConfigError, DataUnavailableError
from goat.grid import execute, expand
from goat.report import markdown
from goat.significance import question_outcomes, winner_line
from goat.tables import load_spec
from goat.tasks import load_task
from goat.tasks.choices import choice_record
from goat.tasks.records import HELDOUT_SEED, seeded_subset

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
UNION = ["boolq", "arc_e", "arc_c", "obqa"]
FOLDERS = {"boolq": "boolq", "arc_e": "ARC-Easy", "arc_c": "ARC-Challenge", "obqa": "openbookqa"}


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    """30 train rows of each union set and 12 test rows of each of the 7 test sets, copied from ../shared/data."""
    root = tmp_path_factory.mktemp("commonsense")
    source = SHARED / "commonsense"
    for folder in ("boolq", "ARC-Easy", "ARC-Challenge", "openbookqa", "piqa", "social_i_qa", "winogrande"):
        (root / folder).mkdir()
        for split, size in (("train", 30), ("test", 12)):
            if (source / folder / f"{split}.json").exists():
                rows = json.loads((source / folder / f"{split}.json").read_text())[:size]
                (root / folder / f"{split}.json").write_text(json.dumps(rows))
    return root


def union_cfg(data, *extra):
    return compose(["task=commonsense/union", f"task.data_dir={data}", "method=lora", *extra])


def test_union_trains_on_every_set_in_the_scored_format_and_holds_rows_out(small_data):
    cfg = union_cfg(small_data, "task.heldout_size=20", "task.max_train_samples=64")
    check_config(cfg)
    task = load_task(cfg.task, seed=0)
    union = [(n, r) for n in UNION for r in json.loads((small_data / FOLDERS[n] / "train.json").read_text())]
    held = seeded_subset(np.arange(len(union)), 20, HELDOUT_SEED)  # the one seeded draw, as text classification's
    expected_held = [choice_record(*union[i]) for i in held]
    assert task.eval_sets["heldout"] == expected_held
    # choice format: the context loglik scores for the gold option, then " " + that option's text
    kept = [union[i] for i in range(len(union)) if i not in set(held)]
    every = []
    for name, record in kept:
        scored = choice_record(name, record)
        context, text = scored["pairs"][scored["gold"]]
        every.append({"prompt": context, "response": f" {text}"})
    assert len(task.train) == 64 and all(row in every for row in task.train)
    assert not any(row["prompt"].startswith("Below is an instruction") for row in task.train)
    assert {"Question: " in row["prompt"] and row["response"] in (" true", " false") for row in task.train} >= {True}
    # held-out rows are the same whatever the run's seed; the training draw is the seed's
    other = load_task(cfg.task, seed=1)
    assert other.eval_sets["heldout"] == task.eval_sets["heldout"] and other.train != task.train
    assert task.groups == {
        "average": ["arc_e", "arc_c", "obqa", "boolq", "piqa", "siqa", "winogrande"],
        "in_domain": ["arc_e", "arc_c", "obqa", "boolq"],
        "transfer": ["piqa", "siqa", "winogrande"],
    }
    # instruction format: today's Alpaca prompt and the LLM-Adapters output
    alpaca = load_task(union_cfg(small_data, "task.train_format=instruction").task, seed=0)
    assert len(alpaca.train) == 120 and alpaca.train[0]["prompt"].startswith("Below is an instruction")
    assert alpaca.train[0]["response"] == union[0][1]["output"]


def test_a_set_without_a_train_split_and_inconsistent_settings_are_one_line_errors(small_data):
    with pytest.raises(
        DataUnavailableError, match=r"task.train_sets: piqa has no .*piqa/train.json; sets with a train"
    ):
        load_task(union_cfg(small_data, "task.train_sets=[boolq,piqa]").task, seed=0)
    problems = {
        "task.train_sets=[]": "task.train_format=choice reads each training row as a question of a known set",
        "task.scoring=generate": "task.train_format=choice trains on what task.scoring=loglik scores",
        "task.train_format=instruction task.scoring=generate task.heldout_size=5": "held-out rows are scored by log",
    }
    for overrides, message in problems.items():
        with pytest.raises(ConfigError, match=message):
            check_config(union_cfg(small_data, *overrides.split()))


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    """A 2-layer LLaMA with saved random weights (a finished run of from_config weights is refused by goat-report)
    and a byte-level BPE tokenizer trained on commonsense questions."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    texts = [r["instruction"] for r in json.loads((SHARED / "commonsense" / "ARC-Easy" / "train.json").read_text())]
    tokenizer = byte_level_bpe(texts[:300], vocab_size=500, prepend_bos=False)
    root = tmp_path_factory.mktemp("tiny_llama")
    tokenizer.save_pretrained(root)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
    )
    LlamaForCausalLM(config).save_pretrained(root)
    return root


def tiny_spec(model: Path) -> dict:
    """small_decoder as shipped, shrunk: the tiny LLaMA, 2 rates, 3 rows, a few rows and questions, fp32 on the CPU."""
    spec = copy.deepcopy(load_spec())
    table = spec["tables"]["small_decoder"]
    table["overrides"] = [
        "model=smollm2-135m",
        f"model.name_or_path={model}",
        "model.pretrained_label=tiny",
        "task.data_dir={data}/commonsense",
        "task.max_train_samples=32",
        "task.max_eval_samples=8",
        "task.max_length=128",
        "trainer=cpu",
        "trainer.epochs=1",
        "trainer.batch_size=16",
        "trainer.micro_batch_size=16",
        "trainer.eval_batch_size=64",
        "trainer.progress=false",
        "logger=none",
    ]
    table["sweep"].update(values=["1e-3", "1e-2"], heldout=16, by_row={"untrained": ["1e-3"]})
    table["rows"] = {"untrained": None, "lora": None, "goat": None}
    return spec


def test_the_grid_runs_and_reports_untrained_chosen_on_intervals_and_the_paired_test(tiny_llama, small_data, tmp_path):
    spec = tiny_spec(tiny_llama)
    data = tmp_path / "data"
    data.mkdir()
    (data / "commonsense").symlink_to(small_data)
    runs = expand("small_decoder", [0, 1], tmp_path / "runs", data=data, spec=spec)
    assert len(runs) == (1 + 2 + 2) * 2  # untrained at one rate; lora and goat at two; 2 seeds; 9 columns, one run
    assert execute(runs, in_process=True, log=lambda line: None) == []
    results = json.loads((runs[0].output_dir / "results.json").read_text())
    assert results["steps"] == 0 and results["heldout"]["rows"] == 16
    final = results["final"]
    assert final["in_domain/acc"] == pytest.approx(np.mean([final[f"{s}/acc"] for s in UNION]))
    assert final["transfer/acc"] == pytest.approx(np.mean([final[f"{s}/acc"] for s in ("piqa", "siqa", "winogrande")]))
    assert "heldout/acc" in final and final["average/acc"] == pytest.approx(
        np.mean([final[f"{s}/acc"] for s in (*UNION, "piqa", "siqa", "winogrande")])
    )
    trained = json.loads(
        next(r for r in runs if r.variant == "goat_lr1e-2").output_dir.joinpath("results.json").read_text()
    )
    assert trained["steps"] == 2  # 32 rows of the union less nothing held out of them, batch 16

    text = markdown(spec, tmp_path / "runs", "small_decoder")
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("| method |"))
    assert "In-domain avg" in header and "Transfer avg" in header and "chosen on" in header
    untrained = next(line for line in lines if line.startswith("| untrained |"))
    assert untrained.endswith("| — | 0,1 |") and "@ lr1e-3" in untrained  # one rate: chosen on nothing
    assert "16 held-out train rows, seed 2" in next(line for line in lines if line.startswith("| goat |"))
    assert "± 0.00 [" in untrained  # its two seeds score the same model on the same questions: std 0, interval a point
    assert "### Is it noise? Every row against lora" in text and "### Is it noise? Every row against goat" in text
    against_goat = text.split("Every row against goat")[1].split("\n\n- ")[0]
    assert "| lora | " in against_goat and "| goat | " not in against_goat  # each baseline's table leaves it out
    # one held-out score chooses all 9 columns: its per-rate table is shown once, not once per column
    assert text.count("(reported split)\n") == 9 and text.count("Held-out training rows at each") == 1
    assert "these choose)" not in text
    assert any(line.startswith("| goat | ") for line in lines) and any(
        line.startswith("- **In-domain**") for line in lines
    )
    winner = next(line for line in lines if line.startswith("- **Transfer**"))
    assert "24 questions" in winner and (("wins with" in winner and "p = " in winner) or " tie at " in winner)
    # the paired test reads each question's outcome, averaged over the row's seeds at its chosen rate
    column = spec["tables"]["small_decoder"]["columns"][0]
    outcomes = question_outcomes(spec, tmp_path / "runs", "small_decoder", column, "untrained")
    rows = [json.loads(line) for line in (runs[0].output_dir / "generations" / "step-00000000" / "arc_e.jsonl").open()]
    assert list(outcomes) == [float(r["choice"] == r["gold"]) for r in rows]
    assert 100 * outcomes.mean() == pytest.approx(final["arc_e/acc"])
    spec["tables"]["small_decoder"]["significance"]["baseline"] = ["lora", "qlora"]
    with pytest.raises(ValueError, match=r"significance names rows \['qlora'\] that are not rows of the table"):
        markdown(spec, tmp_path / "runs", "small_decoder")


def test_the_winner_line_names_the_margin_and_the_paired_test():
    """Three rows on the same 4 questions of one set: x right on 3, y on 1 of them, z on none. x wins by 50 points
    over y; 2 questions differ, so the exact sign-flip p is 2/4 (only ++ and -- reach |50|): within noise."""
    sets = np.array(["ARC-e"] * 4)
    pooled = {
        "y": (np.array([1.0, 0, 0, 0]), sets),
        "x": (np.array([1.0, 1, 1, 0]), sets),
        "z": (np.zeros(4), sets),
    }
    line = winner_line("In-domain", ["ARC-e"], pooled)
    assert line.startswith("- **In-domain** (ARC-e; 4 questions): **x** wins with 75.00, ahead of y (25.00) by +50.00")
    assert "p = 0.5: within noise" in line
    tie = winner_line("T", ["ARC-e"], {"x": pooled["x"], "w": (np.array([0.0, 1, 1, 1]), sets)})
    assert tie.endswith("no single winner: x and w tie at 75.00.")
