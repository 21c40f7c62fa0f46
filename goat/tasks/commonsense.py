"""Commonsense reasoning (spec §6 CR): train on the LLM-Adapters mixture, score 8 test sets by generation (the
paper's protocol, task.scoring=generate) or by the log-likelihood of each option (task.scoring=loglik, for small
models: goat.tasks.loglik, docs/evaluation.md).

Files (the LLM-Adapters `dataset/` layout, as the reference uses): task.data_dir holds the training file
(task.train_file, default commonsense_170k.json) and one folder per test set with test.json; each file is a
JSON list of {"instruction", "input", "output", "answer"}. task.dataset, when set, is a hub dataset with the
same columns used for training instead of the local file.
"""

from __future__ import annotations

from pathlib import Path

from goat.config import DataUnavailableError
from goat.evaluators.answers import extract_commonsense_answer
from goat.tasks.choices import choice_record
from goat.tasks.instruction import InstructionTask, alpaca_prompt, decoding_kwargs
from goat.tasks.loglik import ChoiceTask
from goat.tasks.records import EVAL_SUBSET_SEED, read_records, seeded_subset, training_records

# task name -> folder of the LLM-Adapters layout
TEST_SETS = {
    "boolq": "boolq",
    "piqa": "piqa",
    "siqa": "social_i_qa",
    "hellaswag": "hellaswag",
    "winogrande": "winogrande",
    "arc_e": "ARC-Easy",
    "arc_c": "ARC-Challenge",
    "obqa": "openbookqa",
}


TRAIN_FIELDS, TEST_FIELDS = ("instruction", "output"), ("instruction", "answer")  # the LLM-Adapters layout


def load_commonsense(cfg, seed: int) -> InstructionTask | ChoiceTask:
    unknown = [name for name in cfg.eval_sets if name not in TEST_SETS]
    if unknown or not cfg.eval_sets:
        raise DataUnavailableError(f"task.eval_sets={list(cfg.eval_sets)}: choose among {', '.join(TEST_SETS)}")
    rows = training_records(cfg, "commonsense_170k.json", TRAIN_FIELDS)
    train = [
        {"prompt": alpaca_prompt(r["instruction"], r.get("input", "")), "response": r["output"]}
        for r in seeded_subset(rows, cfg.max_train_samples, seed)
    ]
    tests = {name: read_test_set(cfg, name, offset) for offset, name in enumerate(cfg.eval_sets)}
    one = len(tests) == 1
    if cfg.scoring == "loglik":
        eval_sets = {name: [choice_record(name, r) for r in records] for name, records in tests.items()}
        return ChoiceTask(cfg.name, train, eval_sets, f"{cfg.eval_sets[0]}/acc" if one else "average/acc")
    eval_sets = {
        name: [{"prompt": alpaca_prompt(r["instruction"], r.get("input", "")), "answer": r["answer"]} for r in records]
        for name, records in tests.items()
    }
    return InstructionTask(
        cfg.name,
        train,
        eval_sets,
        score_commonsense,
        f"{cfg.eval_sets[0]}/accuracy" if one else "average/accuracy",
        cfg.max_new_tokens,
        decoding_kwargs(cfg.decoding, "commonsense"),
        cfg.num_samples,
    )


def read_test_set(cfg, name: str, offset: int) -> list[dict]:
    """The LLM-Adapters test records of one set (its task.max_eval_samples subset, the same for both scorings)."""
    if not cfg.data_dir:
        raise DataUnavailableError(f"the {name} test set needs task.data_dir=DIR holding {TEST_SETS[name]}/test.json")
    records = read_records(Path(cfg.data_dir) / TEST_SETS[name] / "test.json", TEST_FIELDS)
    return seeded_subset(records, cfg.max_eval_samples, EVAL_SUBSET_SEED + offset)


def score_commonsense(set_name: str, completion: str, gold) -> bool:
    """The LLM-Adapters protocol: the first answer keyword of the completion equals the gold answer."""
    predicted = extract_commonsense_answer(completion, set_name)
    return predicted is not None and predicted == str(gold).strip().lower()
