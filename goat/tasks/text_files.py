"""Your own labelled text: `task.loader=text_files task.data_dir=DIR` with DIR/train.jsonl and DIR/validation.jsonl.

Each line is {"text": "...", "label": <int class id>} (or a float label with task.subset=regression).
With task.heldout_size=N, N rows of train.jsonl are held out (split "heldout", goat.tasks.records.split_heldout).
Metrics: accuracy (main), plus F1 of class 1 and Matthews correlation for two classes; Pearson/Spearman for
regression.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from datasets import Dataset

from goat import metrics
from goat.config import DataUnavailableError
from goat.tasks.base import classification_metrics, majority_baseline
from goat.tasks.classification import TextTask
from goat.tasks.records import EVAL_SUBSET_SEED, HELDOUT_SPLIT, seeded_subset, split_heldout

SPLITS = ("train", "validation")


def _read(path: Path, regression: bool) -> dict:
    """The rows of one JSONL file, each checked; a bad line is named by file and number."""
    texts, labels = [], []
    with open(path) as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataUnavailableError(
                    f"{path}:{number}: not valid JSON ({error.msg}); one JSON object per line"
                ) from None
            if not isinstance(row, dict) or "text" not in row or "label" not in row:
                raise DataUnavailableError(f"{path}:{number}: each line needs the keys 'text' and 'label'")
            label = row["label"]
            wanted = (int, float) if regression else int
            if isinstance(label, bool) or not isinstance(label, wanted) or (not regression and label < 0):
                kind = "a number (task.subset=regression)" if regression else "a class id 0, 1, 2, ... (an integer)"
                raise DataUnavailableError(f"{path}:{number}: label {label!r} must be {kind}")
            if not isinstance(row["text"], str):
                raise DataUnavailableError(f"{path}:{number}: text must be a string, got {type(row['text']).__name__}")
            texts.append(row["text"])
            labels.append(label)
    if not texts:
        raise DataUnavailableError(
            f'{path} holds no rows; write one JSON object per line: {{"text": ..., "label": ...}}'
        )
    return {"text": texts, "label": labels}


def _rows(columns: dict, positions) -> dict:
    return {key: [values[i] for i in positions] for key, values in columns.items()}


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
    regression = cfg.subset == "regression"
    for name in ("max_train_samples", "max_eval_samples"):
        limit = getattr(cfg, name)
        if limit is not None and limit < 1:
            raise DataUnavailableError(f"task.{name}={limit} keeps no rows; give a positive number, or null for all")
    rows = _read(root / "train.jsonl", regression)
    dev = _read(root / "validation.jsonl", regression)
    train_rows, heldout_rows = split_heldout(np.arange(len(rows["label"])), cfg.heldout_size)
    columns = {
        "train": _rows(rows, seeded_subset(train_rows, cfg.max_train_samples, seed)),
        "validation": _rows(dev, seeded_subset(np.arange(len(dev["label"])), cfg.max_eval_samples, EVAL_SUBSET_SEED)),
    }
    if len(heldout_rows):
        columns[HELDOUT_SPLIT] = _rows(rows, heldout_rows)
    for split in columns.values():
        split["text"] = [cfg.prefix + text for text in split["text"]]
    splits = {name: Dataset.from_dict(split) for name, split in columns.items()}
    eval_splits = [name for name in splits if name != "train"]
    if regression:
        return TextTask(cfg.name, splits, eval_splits, 1, _regression_metrics, "pearson")
    num_labels = int(max(rows["label"] + dev["label"])) + 1
    baseline = majority_baseline(columns["train"]["label"], columns["validation"]["label"])
    return TextTask(
        cfg.name, splits, eval_splits, num_labels, classification_metrics, "accuracy", majority_baseline=baseline
    )


def _regression_metrics(predictions, labels) -> dict[str, float]:
    return {"pearson": metrics.pearson(predictions, labels), "spearman": metrics.spearman(predictions, labels)}
