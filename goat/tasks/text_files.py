"""Your own labelled text: `task.loader=text_files task.data_dir=DIR` with DIR/train.jsonl and DIR/validation.jsonl.

Each line is {"text": "...", "label": <int class id>} (or a float label with task.subset=regression).
Metrics: accuracy (main), plus F1 of class 1 and Matthews correlation for two classes; Pearson/Spearman for
regression.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from datasets import Dataset

from goat import metrics
from goat.tasks.base import DataUnavailableError, TextTask, classification_metrics, majority_baseline
from goat.tasks.records import EVAL_SUBSET_SEED

SPLITS = ("train", "validation")


def _read(path: Path) -> dict:
    texts, labels = [], []
    with open(path) as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            if "text" not in row or "label" not in row:
                raise ValueError(f"{path}:{number}: each line needs the keys 'text' and 'label'")
            texts.append(row["text"])
            labels.append(row["label"])
    return {"text": texts, "label": labels}


def _subset(columns: dict, size: int | None, seed: int) -> dict:
    if size is None or size >= len(columns["label"]):
        return columns
    keep = np.sort(np.random.default_rng(seed).permutation(len(columns["label"]))[:size])
    return {key: [values[i] for i in keep] for key, values in columns.items()}


def load_text_files(cfg, seed: int) -> TextTask:
    if not cfg.data_dir:
        raise DataUnavailableError(
            "task.loader=text_files needs task.data_dir=DIR holding train.jsonl and validation.jsonl"
        )
    root = Path(cfg.data_dir).expanduser()
    missing = [f"{split}.jsonl" for split in SPLITS if not (root / f"{split}.jsonl").exists()]
    if missing:
        raise DataUnavailableError(
            f"{root} lacks {', '.join(missing)}: task.data_dir must hold train.jsonl and validation.jsonl"
        )
    train = _subset(_read(root / "train.jsonl"), cfg.max_train_samples, seed)
    validation = _subset(_read(root / "validation.jsonl"), cfg.max_eval_samples, EVAL_SUBSET_SEED)
    for columns in (train, validation):
        columns["text"] = [cfg.prefix + text for text in columns["text"]]
    regression = cfg.subset == "regression"
    splits = {"train": Dataset.from_dict(train), "validation": Dataset.from_dict(validation)}
    if regression:
        return TextTask(cfg.name, splits, ["validation"], 1, _regression_metrics, "pearson")
    num_labels = int(max(train["label"] + validation["label"])) + 1
    baseline = majority_baseline(train["label"], validation["label"])
    return TextTask(
        cfg.name, splits, ["validation"], num_labels, classification_metrics, "accuracy", majority_baseline=baseline
    )


def _regression_metrics(predictions, labels) -> dict[str, float]:
    return {"pearson": metrics.pearson(predictions, labels), "spearman": metrics.spearman(predictions, labels)}
