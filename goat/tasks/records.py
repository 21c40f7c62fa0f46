"""Reading instruction-tuning records: local JSON / JSONL files or a hub dataset; seeded subsets and
held-out training rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from goat.config import DataUnavailableError
from goat.tasks.base import hub_offline_unless_reachable

# Subsets of evaluation sets (task.max_eval_samples) are drawn with this fixed seed, not the run's: every seed of a
# method, and every method, is scored on the same examples, so differences between seeds are training noise only.
EVAL_SUBSET_SEED = 1
# Training rows held out for model selection (task.heldout_size) are drawn with this fixed seed, not the run's, from
# the whole train split before task.max_train_samples: every method, learning rate and seed chooses on the same rows
# and trains on the same rest, so a seed's spread stays training noise. Written to results.json with the row count.
HELDOUT_SEED = 2
HELDOUT_SPLIT = "heldout"  # the split's name in eval_splits and in the metric keys ("heldout/accuracy")


def seeded_subset(rows, size: int | None, seed: int):
    """`size` of `rows` (a list or a NumPy array) drawn at random with `seed`, kept in file order; all rows when
    size is None or not smaller. Every loader's subsets come from here (goat shuffles subsets; the reference took
    the first N, spec §9.13): the same seed and size pick the same positions whatever the rows hold."""
    if size is None or size >= len(rows):
        return rows
    keep = np.sort(np.random.default_rng(seed).choice(len(rows), size=size, replace=False))
    return rows[keep] if isinstance(rows, np.ndarray) else [rows[i] for i in keep]


def split_heldout(positions: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(training positions, held-out positions) of a train split's `positions`: `size` of them held out for model
    selection, drawn by seeded_subset with HELDOUT_SEED; both sorted, disjoint, together all of `positions`."""
    if not size:
        return positions, positions[:0]
    if size >= len(positions):
        raise DataUnavailableError(
            f"task.heldout_size={size} would hold out every training row (the train split has {len(positions)}): "
            "hold out fewer, or 0 to choose on nothing"
        )
    held = seeded_subset(positions, size, HELDOUT_SEED)
    return np.setdiff1d(positions, held), held


def read_records(path: Path, fields: tuple[str, ...] = (), setting: str = "task.data_dir") -> list[dict]:
    """A JSON list or a JSONL file of records, each holding `fields`. Anything else is one DataUnavailableError that
    names the file, the line or record, and the setting that points at the file."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DataUnavailableError(f"{path} does not exist: point task.data_dir (and task.train_file) at your files")
    rows = _parse_records(path, setting)
    check_fields(rows, fields, f"{path} ({setting})")
    return rows


def _parse_records(path: Path, setting: str) -> list[dict]:
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise DataUnavailableError(f"{path} is not UTF-8 text ({setting} points at it): give JSON or JSONL") from None
    try:
        if text.lstrip().startswith("["):
            rows = json.loads(text)
        else:
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as error:
        line = error.lineno if text.lstrip().startswith("[") else _bad_line(text)
        raise DataUnavailableError(f"{path}:{line}: not valid JSON ({error.msg}; {setting} points at it)") from None
    for number, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise DataUnavailableError(
                f"{path}: record {number} is a JSON {type(row).__name__}, not an object ({setting} points at it); "
                "give a JSON list of objects or one object per line"
            )
    return rows


def _bad_line(text: str) -> int:
    """The number of the first line of a JSONL text that does not parse."""
    for number, line in enumerate(text.splitlines(), 1):
        try:
            if line.strip():
                json.loads(line)
        except json.JSONDecodeError:
            return number
    return 0


def check_fields(rows: list[dict], fields: tuple[str, ...], source: str) -> None:
    """Every record holds `fields`; the first that does not is named with what it has."""
    for number, row in enumerate(rows, 1):
        missing = [name for name in fields if name not in row]
        if missing:
            raise DataUnavailableError(
                f"{source}: record {number} lacks the field{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
                f"(it has {', '.join(sorted(row)) or 'none'})"
            )


def training_records(cfg, default_file: str | None = None, fields: tuple[str, ...] = ()) -> list[dict]:
    """The training rows (each holding `fields`): the hub dataset task.dataset (split train) when set, else
    data_dir/train_file."""
    if cfg.dataset:
        import datasets  # lazy: 1.6-1.9 s on top of goat.train's 9 s; only task.dataset runs need it

        try:
            with hub_offline_unless_reachable(datasets.config):
                rows = list(datasets.load_dataset(cfg.dataset, split="train"))
        except OSError:
            raise DataUnavailableError(
                f"{cfg.dataset} could not be loaded from the Hugging Face hub (no network?): train on local files "
                "with task.dataset='' task.data_dir=DIR task.train_file=FILE"
            ) from None
        check_fields(rows, fields, f"task.dataset={cfg.dataset}")
        return rows
    train_file = cfg.train_file or default_file
    if not cfg.data_dir or not train_file:
        raise DataUnavailableError(
            f"task {cfg.name} needs a hub task.dataset, or task.data_dir=DIR with task.train_file=FILE"
        )
    return read_records(Path(cfg.data_dir).expanduser() / train_file, fields, "task.data_dir and task.train_file")
