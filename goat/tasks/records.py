"""Reading instruction-tuning records: local JSON / JSONL files or a hub dataset, and seeded subsets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from goat.tasks.base import DataUnavailableError, hub_offline_unless_reachable

# Subsets of evaluation sets (task.max_eval_samples) are drawn with this fixed seed, not the run's: every seed of a
# method, and every method, is scored on the same examples, so differences between seeds are training noise only.
EVAL_SUBSET_SEED = 1


def seeded_subset(rows: list, size: int | None, seed: int) -> list:
    """`size` rows drawn at random with `seed`, kept in file order (goat shuffles subsets; the reference took
    the first N, spec §9.13); all rows when size is None or not smaller."""
    if size is None or size >= len(rows):
        return rows
    keep = np.sort(np.random.default_rng(seed).choice(len(rows), size=size, replace=False))
    return [rows[i] for i in keep]


def read_records(path: Path) -> list[dict]:
    """A JSON list or a JSONL file of records."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DataUnavailableError(f"{path} does not exist: point task.data_dir (and task.train_file) at your files")
    text = path.read_text()
    if text.lstrip().startswith("["):
        return json.loads(text)
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def training_records(cfg, default_file: str | None = None) -> list[dict]:
    """The training rows: the hub dataset task.dataset (split train) when set, else data_dir/train_file."""
    if cfg.dataset:
        import datasets

        try:
            with hub_offline_unless_reachable():
                return list(datasets.load_dataset(cfg.dataset, split="train"))
        except OSError:
            raise DataUnavailableError(
                f"{cfg.dataset} could not be loaded from the Hugging Face hub (no network?): train on local files "
                "with task.dataset='' task.data_dir=DIR task.train_file=FILE"
            ) from None
    train_file = cfg.train_file or default_file
    if not cfg.data_dir or not train_file:
        raise DataUnavailableError(
            f"task {cfg.name} needs a hub task.dataset, or task.data_dir=DIR with task.train_file=FILE"
        )
    return read_records(Path(cfg.data_dir).expanduser() / train_file)
