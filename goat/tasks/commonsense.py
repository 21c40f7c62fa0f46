"""Commonsense reasoning (spec §6 CR): train on the LLM-Adapters mixture, score 8 test sets by generation (the
paper's protocol, task.scoring=generate) or by the log-likelihood of each option (task.scoring=loglik, for small
models: goat.tasks.loglik, docs/evaluation.md).

Files (the LLM-Adapters `dataset/` layout, as the reference uses): task.data_dir holds the training file
(task.train_file, default commonsense_170k.json) and one folder per test set with test.json; each file is a
JSON list of {"instruction", "input", "output", "answer"}. task.dataset, when set, is a hub dataset with the
same columns used for training instead of the local file. task.train_sets=[boolq, arc_e, ...] trains on the union
of those sets' train.json instead (the set kept per row), written as task.train_format says (instruction: the
Alpaca prompt; choice: what loglik scores); task.heldout_size rows of that union are held out and scored as the
split "heldout" (heldout/acc), and the test sets average as in_domain (the sets trained on) and transfer (the rest).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from goat.config import COMMONSENSE_SETS, DataUnavailableError
from goat.evaluators.answers import extract_commonsense_answer
from goat.tasks.choices import choice_record
from goat.tasks.instruction import InstructionTask, alpaca_prompt, decoding_kwargs
from goat.tasks.loglik import ChoiceTask
from goat.tasks.records import (
    EVAL_SUBSET_SEED,
    HELDOUT_SPLIT,
    read_records,
    seeded_subset,
    split_heldout,
    training_records,
)

TEST_SETS = COMMONSENSE_SETS  # task name -> folder of the LLM-Adapters layout (goat.config owns it)


TRAIN_FIELDS, TEST_FIELDS = ("instruction", "output"), ("instruction", "answer")  # the LLM-Adapters layout
DEFAULT_FILE = "commonsense_170k.json"


def load_commonsense(cfg, seed: int) -> InstructionTask | ChoiceTask:
    unknown = [name for name in cfg.eval_sets if name not in TEST_SETS]
    if unknown or not cfg.eval_sets:
        raise DataUnavailableError(f"task.eval_sets={list(cfg.eval_sets)}: choose among {', '.join(TEST_SETS)}")
    # (set name, record); the mixture file names no set (checks.py: choice records and held-out rows need train_sets)
    rows = (
        union_records(cfg) if cfg.train_sets else [("", r) for r in training_records(cfg, DEFAULT_FILE, TRAIN_FIELDS)]
    )
    kept, held = split_heldout(np.arange(len(rows)), cfg.heldout_size)
    train = [training_pair(cfg.train_format, *rows[i]) for i in seeded_subset(kept, cfg.max_train_samples, seed)]
    tests = {name: read_test_set(cfg, name, offset) for offset, name in enumerate(cfg.eval_sets)}
    one = len(tests) == 1
    if cfg.scoring == "loglik":
        eval_sets = {name: [choice_record(name, r) for r in records] for name, records in tests.items()}
        if len(held):  # scored like a test set, never trained on; averages leave it out (goat.tasks.loglik)
            eval_sets[HELDOUT_SPLIT] = [choice_record(*rows[i]) for i in held]
        main = f"{cfg.eval_sets[0]}/acc" if one else "average/acc"
        return ChoiceTask(cfg.name, train, eval_sets, main, average_groups(cfg.train_sets, cfg.eval_sets))
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


UNION_FIELDS = (*TRAIN_FIELDS, "answer")  # a choice record and a held-out row need the gold label


def union_records(cfg) -> list[tuple[str, dict]]:
    """(set name, record) of every row of task.train_sets' train splits, concatenated in the order given."""
    if not cfg.data_dir:
        raise DataUnavailableError(
            f"task.train_sets={list(cfg.train_sets)} needs task.data_dir=DIR (LLM-Adapters layout)"
        )
    root = Path(cfg.data_dir).expanduser()
    missing = [name for name in cfg.train_sets if not (root / TEST_SETS[name] / "train.json").exists()]
    if missing:
        have = [name for name in TEST_SETS if (root / TEST_SETS[name] / "train.json").exists()]
        raise DataUnavailableError(
            f"task.train_sets: {', '.join(missing)} has no {root}/{TEST_SETS[missing[0]]}/train.json; sets with a "
            f"train split there: {', '.join(have) or 'none'}"
        )
    paths = [(name, root / TEST_SETS[name] / "train.json") for name in cfg.train_sets]
    return [(name, record) for name, path in paths for record in read_records(path, UNION_FIELDS, "task.train_sets")]


def training_pair(train_format: str, set_name: str, record: dict) -> dict:
    """One training record {"prompt", "response"} (task.train_format): instruction = the Alpaca prompt and the
    LLM-Adapters output; choice = the loglik context of the gold option and " " + its text (goat.tasks.choices)."""
    if train_format == "choice":
        scored = choice_record(set_name, record)
        context, continuation = scored["pairs"][scored["gold"]]
        return {"prompt": context, "response": f" {continuation}"}
    return {"prompt": alpaca_prompt(record["instruction"], record.get("input", "")), "response": record["output"]}


def average_groups(train_sets, eval_sets) -> dict[str, list[str]]:
    """The averages a loglik evaluation reports: "average" over the test sets (never the held-out rows), and when
    training names its sets (task.train_sets) and both hold a set, in_domain (the test sets of the sets trained on)
    and transfer (the others)."""
    groups = {"average": list(eval_sets)}
    in_domain = [name for name in eval_sets if name in train_sets]
    transfer = [name for name in eval_sets if name not in train_sets]
    if in_domain and transfer:
        groups.update(in_domain=in_domain, transfer=transfer)
    return groups


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
