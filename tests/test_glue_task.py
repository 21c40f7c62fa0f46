"""The GLUE loader on the real files in /work/shared/data/glue, on tiny files in the official release layout,
on a stand-in for the hub, and without network (a one-line DataUnavailableError)."""

import functools
from pathlib import Path

import datasets
import numpy as np
import pytest

from goat.config import DataUnavailableError, TaskConfig
from goat.tasks.glue import GLUE_TASKS, load_glue
from goat.tasks.records import seeded_subset, split_heldout

SHARED_GLUE = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"  # shared/ sits beside the checkout

PREFIXES = {
    "cola": "classify the grammaticality of the text: ",
    "sst2": "classify the sentiment of the text: ",
    "mrpc": "classify the semantic similarity of the text: ",
    "rte": "determine if the second sentence entails the first sentence: ",
}


def glue_config(task: str, data_dir=None, **fields) -> TaskConfig:
    return TaskConfig(
        name=f"glue/{task}",
        loader="glue",
        dataset="nyu-mll/glue",
        subset=task,
        data_dir=str(data_dir) if data_dir else None,
        **fields,
    )


@functools.cache
def shared_task(task: str, seed: int = 0, max_train_samples: int | None = None, max_eval_samples: int | None = None):
    """A task loaded from the shared files, once per argument set (SST-2's 67k rows take a second)."""
    if not SHARED_GLUE.is_dir():
        pytest.skip(f"{SHARED_GLUE} is missing: the real GLUE files these tests read are not on this machine")
    cfg = glue_config(task, SHARED_GLUE, max_train_samples=max_train_samples, max_eval_samples=max_eval_samples)
    return load_glue(cfg, seed)


def label_of(task, split: str, snippet: str) -> int:
    """The label of the one row of `split` whose text contains `snippet`."""
    matches = [row["label"] for row in task.splits[split] if snippet in row["text"]]
    assert len(matches) == 1, f"{len(matches)} rows contain {snippet!r}"
    return matches[0]


def write_tsv(path: Path, rows: list[list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join("\t".join(row) + "\n" for row in rows), encoding="utf-8")


# --- the shared files --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "task, train_rows, dev_rows",
    [("cola", 8551, 527 + 516), ("sst2", 67349, 872), ("mrpc", 3668, 408), ("rte", 2490, 277)],
)
def test_row_counts_match_the_readme(task, train_rows, dev_rows):
    loaded = shared_task(task)
    assert loaded.eval_splits == ["validation"]
    assert len(loaded.splits["train"]) == train_rows
    assert len(loaded.splits["validation"]) == dev_rows


@pytest.mark.parametrize("task", ["cola", "sst2", "mrpc", "rte"])
def test_every_text_is_prefix_sentences_result(task):
    loaded = shared_task(task)
    sentences_per_text = len(GLUE_TASKS[task].text_fields)
    for split in ("train", "validation"):
        for text in loaded.splits[split]["text"][:200]:
            assert text.startswith(PREFIXES[task]) and text.endswith("\nresult: ")
            assert text.count("\n") == sentences_per_text  # sentences joined by "\n", then "\nresult: "


def test_exact_texts_of_known_rows():
    rte_first = shared_task("rte").splits["validation"][0]
    assert rte_first["text"] == (
        "determine if the second sentence entails the first sentence: Dana Reeve, the widow of the actor Christopher"
        " Reeve, has died of lung cancer at age 44, according to the Christopher Reeve Foundation.\n"
        "Christopher Reeve had an accident.\nresult: "
    )
    mrpc_first = shared_task("mrpc").splits["validation"][0]["text"]
    # QUOTE_NONE: the unbalanced quote opening sentence 2 is text (a quoting csv reader would swallow rows)
    assert mrpc_first.endswith(
        'long-term growth strategy.\n"The foodservice pie business does not fit our long-term'
        " growth strategy.\nresult: "
    )


def test_cola_dev_is_in_domain_then_out_of_domain():
    dev = shared_task("cola").splits["validation"]["text"]
    assert dev[0] == PREFIXES["cola"] + "The sailors rode the breeze clear of the rocks.\nresult: "
    assert dev[-1].endswith(": John talked to Bill about himself.\nresult: ")  # last line of out_of_domain_dev.tsv


@pytest.mark.parametrize(
    "task, split, snippet, label",
    [
        ("cola", "train", ": They drank the pub.\n", 0),  # unacceptable
        ("cola", "validation", ": The sailors rode the breeze clear of the rocks.\n", 1),  # acceptable
        ("sst2", "validation", ": it 's a charming and often affecting journey .\n", 1),  # positive
        ("sst2", "validation", ": one long string of cliches .\n", 0),  # negative
        ("mrpc", "validation", ": He said the foodservice pie business doesn't fit", 1),  # equivalent
        ("mrpc", "validation", ": Magnarelli said Racicot hated the Iraqi regime", 0),  # not equivalent
        ("rte", "validation", "\nChristopher Reeve had an accident.\n", 1),  # not entailment
        ("rte", "validation", "new variations.\nBacteria is winning the war against antibiotics.\n", 0),  # entailment
    ],
)
def test_labels_follow_the_hub_ids(task, split, snippet, label):
    assert label_of(shared_task(task), split, snippet) == label


def test_label_names_in_hub_order():
    assert shared_task("cola").label_names == ["unacceptable", "acceptable"]
    assert shared_task("sst2").label_names == ["negative", "positive"]
    assert shared_task("mrpc").label_names == ["not_equivalent", "equivalent"]
    assert shared_task("rte").label_names == ["entailment", "not_entailment"]
    assert {shared_task(task).num_labels for task in ("cola", "sst2", "mrpc", "rte")} == {2}


def test_max_samples_draw_a_seeded_random_subset():
    full = shared_task("rte").splits["train"]["text"]
    first = shared_task("rte", seed=0, max_train_samples=100, max_eval_samples=50)
    again = load_glue(glue_config("rte", SHARED_GLUE, max_train_samples=100, max_eval_samples=50), 0)
    other = shared_task("rte", seed=1, max_train_samples=100, max_eval_samples=50)
    subset = first.splits["train"]["text"]
    assert len(subset) == 100 and len(first.splits["validation"]) == 50
    assert subset == again.splits["train"]["text"]
    assert subset != other.splits["train"]["text"]
    assert subset != full[:100]
    assert set(subset) <= set(full)
    assert len(set(subset)) == 100


def test_heldout_rows_are_a_fixed_draw_from_train_disjoint_from_the_training_rows():
    """task.heldout_size: split_heldout's positions of the train file, the same for every seed and subset size; the
    training rows are the rest (max_train_samples draws from it); the dev set is untouched."""
    full, plain = shared_task("rte").splits["train"]["text"], shared_task("rte")
    train_rows, held_rows = split_heldout(np.arange(len(full)), 300)
    assert len(held_rows) == 300 and len(train_rows) == len(full) - 300 == 2190
    assert set(train_rows.tolist()).isdisjoint(held_rows.tolist())
    task = load_glue(glue_config("rte", SHARED_GLUE, heldout_size=300), seed=0)
    assert task.eval_splits == ["validation", "heldout"] and task.main_metric == plain.main_metric
    assert task.splits["heldout"]["text"] == [full[i] for i in held_rows]
    assert task.splits["train"]["text"] == [full[i] for i in train_rows]
    assert task.splits["validation"]["text"] == plain.splits["validation"]["text"]
    other = load_glue(glue_config("rte", SHARED_GLUE, heldout_size=300, max_train_samples=100), seed=1)
    assert other.splits["heldout"]["text"] == task.splits["heldout"]["text"]
    assert other.splits["train"]["text"] == [full[i] for i in seeded_subset(train_rows, 100, 1)]
    with pytest.raises(DataUnavailableError, match="task.heldout_size=2490 would hold out every training row"):
        load_glue(glue_config("rte", SHARED_GLUE, heldout_size=2490), seed=0)


def test_max_samples_must_keep_rows():
    with pytest.raises(ValueError, match="max_train_samples=0"):
        shared_task("rte", max_train_samples=0)


# Counted in the shared files: most frequent train label, and its share of the dev set.
@pytest.mark.parametrize(
    "task, metric_keys, majority_baseline",
    [
        ("cola", ["matthews_correlation", "accuracy"], 0.0),  # always "acceptable": MCC 0 (accuracy 719/1043)
        ("sst2", ["accuracy"], 100 * 444 / 872),  # positive
        ("mrpc", ["f1", "accuracy"], 100 * 2 * 279 / (2 * 279 + 129)),  # equivalent: tp 279, fp 129, fn 0
        ("rte", ["accuracy"], 100 * 146 / 277),  # entailment: 1249 of 2490 train rows
    ],
)
def test_metrics_and_majority_baseline(task, metric_keys, majority_baseline):
    loaded = shared_task(task)
    gold = np.asarray(loaded.splits["validation"]["label"])
    assert list(loaded.compute_metrics(gold, gold)) == metric_keys
    assert loaded.main_metric == metric_keys[0]
    assert all(value == pytest.approx(100) for value in loaded.compute_metrics(gold, gold).values())
    assert loaded.majority_baseline == pytest.approx(majority_baseline)


def test_prefix_in_the_config_replaces_the_table_prefix(tmp_path):
    write_tsv(tmp_path / "train.tsv", [["sentence", "label"], ["fine", "1"], ["bad", "0"]])
    write_tsv(tmp_path / "dev.tsv", [["sentence", "label"], ["good", "1"]])
    task = load_glue(glue_config("sst2", tmp_path, prefix="sentiment: "), 0)
    assert task.splits["validation"]["text"] == ["sentiment: good\nresult: "]


# --- the official GLUE release layout ---------------------------------------------------------------------------

MNLI_DEV_HEADER = [
    "index",
    "promptID",
    "pairID",
    "genre",
    "sentence1_binary_parse",
    "sentence2_binary_parse",
    "sentence1_parse",
    "sentence2_parse",
    "sentence1",
    "sentence2",
    "label1",
    "label2",
    "label3",
    "label4",
    "label5",
    "gold_label",
]


def mnli_row(index: int, premise: str, hypothesis: str, gold: str, votes: int) -> list[str]:
    return [
        str(index),
        "1",
        f"{index}e",
        "fiction",
        "( x )",
        "( y )",
        "(ROOT x)",
        "(ROOT y)",
        premise,
        hypothesis,
        *[gold] * votes,
        gold,
    ]


def test_mnli_release_layout_with_text_labels(tmp_path):
    mnli = tmp_path / "MNLI"  # data_dir may be the folder that holds the release's task folders
    write_tsv(
        mnli / "train.tsv",
        [
            MNLI_DEV_HEADER[:11] + ["gold_label"],
            mnli_row(0, 'He said "yes.', "He agreed.", "entailment", 1),
            mnli_row(1, "It rained.", "It was dry.", "contradiction", 1),
            mnli_row(2, "A man sat.", "He was tired.", "neutral", 1),
            mnli_row(3, "It snowed.", "It was hot.", "contradiction", 1),
        ],
    )
    write_tsv(
        mnli / "dev_matched.tsv", [MNLI_DEV_HEADER, mnli_row(0, "A cat slept.", "An animal slept.", "entailment", 5)]
    )
    write_tsv(
        mnli / "dev_mismatched.tsv",
        [
            MNLI_DEV_HEADER,
            mnli_row(0, "Snow fell.", "It was warm.", "contradiction", 5),
            mnli_row(1, "She ran.", "She won.", "neutral", 5),
        ],
    )
    task = load_glue(glue_config("mnli", tmp_path), 0)
    assert task.eval_splits == ["validation_matched", "validation_mismatched"]
    assert task.num_labels == 3 and task.label_names == ["entailment", "neutral", "contradiction"]
    assert task.splits["train"]["label"] == [0, 2, 1, 2]
    assert task.splits["train"]["text"][0] == (
        'classify the semantic similarity of the text: He said "yes.\nHe agreed.\nresult: '
    )
    assert task.splits["validation_matched"]["label"] == [0]
    assert task.splits["validation_mismatched"]["label"] == [2, 1]
    assert list(task.compute_metrics(np.array([2, 0]), np.array([2, 1]))) == ["accuracy"]
    assert task.majority_baseline == 0.0  # "contradiction" (train majority) on the matched split's one entailment


def test_stsb_release_layout_with_float_scores(tmp_path):
    header = [
        "index",
        "genre",
        "filename",
        "year",
        "old_index",
        "source1",
        "source2",
        "sentence1",
        "sentence2",
        "score",
    ]
    rows = [
        [
            "0",
            "main-captions",
            "MSRvid",
            "2012test",
            "0001",
            "none",
            "none",
            "A plane takes off.",
            "An air plane is taking off.",
            "5.000",
        ],
        [
            "1",
            "main-captions",
            "MSRvid",
            "2012test",
            "0004",
            "none",
            "none",
            "A man plays a flute.",
            "A man plays a bamboo flute.",
            "3.800",
        ],
    ]
    write_tsv(tmp_path / "train.tsv", [header, *rows])
    write_tsv(tmp_path / "dev.tsv", [header, rows[1], rows[0]])
    task = load_glue(glue_config("stsb", tmp_path), 0)
    assert task.num_labels == 1 and task.label_names is None and task.majority_baseline is None
    assert task.splits["validation"]["label"] == pytest.approx([3.8, 5.0])
    assert task.splits["train"]["text"][0] == (
        "classify the semantic similarity of the text: A plane takes off.\nAn air plane is taking off.\nresult: "
    )
    assert list(task.compute_metrics(np.array([3.0, 4.5]), np.array([3.8, 5.0]))) == ["pearson", "spearman"]


def test_cola_and_rte_release_layouts(tmp_path):
    cola, rte = tmp_path / "CoLA", tmp_path / "RTE"
    write_tsv(cola / "train.tsv", [["gj04", "1", "", "The dog barked."], ["gj04", "0", "*", "Barked dog the."]])
    write_tsv(cola / "dev.tsv", [["clc95", "0", "*", "Him left."]])
    rte_header = ["index", "sentence1", "sentence2", "label"]
    write_tsv(
        rte / "train.tsv",
        [rte_header, ["0", "A fell.", "A moved.", "entailment"], ["1", "B sat.", "B ran.", "not_entailment"]],
    )
    write_tsv(rte / "dev.tsv", [rte_header, ["0", "C ate.", "C fasted.", "not_entailment"]])
    cola_task = load_glue(glue_config("cola", cola), 0)
    assert cola_task.splits["train"]["label"] == [1, 0]
    assert cola_task.splits["validation"]["text"] == ["classify the grammaticality of the text: Him left.\nresult: "]
    rte_task = load_glue(glue_config("rte", tmp_path), 0)
    assert rte_task.splits["train"]["label"] == [0, 1] and rte_task.splits["validation"]["label"] == [1]


def test_missing_file_names_the_expected_files(tmp_path):
    write_tsv(tmp_path / "train.tsv", [["sentence1", "sentence2", "label", "idx"], ["a", "b", "0", "0"]])
    with pytest.raises(DataUnavailableError) as error:
        load_glue(glue_config("rte", tmp_path), 0)
    assert "dev.tsv" in str(error.value) and "task.data_dir" in str(error.value) and "\n" not in str(error.value)


def test_unknown_label_names_file_and_line(tmp_path):
    write_tsv(
        tmp_path / "train.tsv", [["sentence1", "sentence2", "label"], ["a", "b", "entailment"], ["c", "d", "maybe"]]
    )
    write_tsv(tmp_path / "dev.tsv", [["sentence1", "sentence2", "label"], ["a", "b", "1"]])
    with pytest.raises(DataUnavailableError, match=rf"train.tsv, line 3: label 'maybe'.*\(task.data_dir={tmp_path}\)$"):
        load_glue(glue_config("rte", tmp_path), 0)
    write_tsv(tmp_path / "train.tsv", [["premise", "hypothesis", "label"], ["a", "b", "1"]])  # MNLI's columns
    with pytest.raises(DataUnavailableError, match=r"train.tsv: the header .* lacks the columns .*task.data_dir="):
        load_glue(glue_config("rte", tmp_path), 0)
    (tmp_path / "train.tsv").write_bytes(b"sentence1\tsentence2\tlabel\n\xff\xfe\t\xff\t1\n")
    with pytest.raises(DataUnavailableError, match=r"train.tsv is not UTF-8 text"):
        load_glue(glue_config("rte", tmp_path), 0)


# --- the hub ------------------------------------------------------------------------------------------------------


def test_hub_rows_become_the_same_texts(monkeypatch):
    calls = []

    def fake_load_dataset(path, name):
        calls.append((path, name))
        split = {"question": ["Who?", "Where?"], "sentence": ["Ann did.", "Here."], "label": [0, 1], "idx": [0, 1]}
        return datasets.DatasetDict(
            {"train": datasets.Dataset.from_dict(split), "validation": datasets.Dataset.from_dict(split)}
        )

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    task = load_glue(glue_config("qnli"), 0)
    assert calls == [("nyu-mll/glue", "qnli")]
    assert task.splits["validation"]["text"][0] == (
        "classify the semantic similarity of the question and the sentence: Who?\nAnn did.\nresult: "
    )
    assert task.splits["train"]["label"] == [0, 1] and task.main_metric == "accuracy"


def test_offline_hub_raises_one_line_naming_the_override(monkeypatch, tmp_path):
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    # both libraries read the variables when imported: set their copies too, and hide any cached GLUE
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(DataUnavailableError) as error:
        load_glue(glue_config("cola"), 0)
    message = str(error.value)
    assert "\n" not in message
    assert "task.data_dir" in message and "nyu-mll/glue" in message
