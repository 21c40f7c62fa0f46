"""GLUE's 8 tasks as the paper's reference code fed them to RoBERTa (spec §6), scored as the GLUE benchmark does.

Input text: instruction prefix + the sentence(s) joined by "\\n" + "\\nresult: "; label: the hub's class id
(STS-B: the similarity score, a regression). Metrics: the task's official GLUE metric (main) with accuracy
beside it; MNLI reports matched and mismatched validation.

Data comes from the Hugging Face hub (`nyu-mll/glue`) or, with `task.data_dir`, from local TSV files:
- the official GLUE release (its download script's layout): `train.tsv` and `dev.tsv` (MNLI: `dev_matched.tsv`,
  `dev_mismatched.tsv`), CoLA without a header, the other tasks with their release headers (MRPC `Quality`,
  `#1 String`, `#2 String`; QQP `is_duplicate`; MNLI `gold_label`; STS-B `score`) and text labels where the
  release has them ("entailment", "not_entailment", "neutral", "contradiction");
- CoLA's own release: `in_domain_train.tsv`, and `in_domain_dev.tsv` + `out_of_domain_dev.tsv` (= GLUE dev);
- GLUE-format copies with the hub's column names (`sentence1`, `sentence2`, `label`, ...) and hub label ids.
`task.data_dir` may be the task's folder or a folder that holds it (as `CoLA/`, `SST-2/`, ... or `cola/`, ...).
"""

from __future__ import annotations

import csv
import functools
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np

from goat import metrics
from goat.config import DataUnavailableError
from goat.tasks.base import hub_offline_unless_reachable
from goat.tasks.classification import TextTask
from goat.tasks.records import EVAL_SUBSET_SEED, HELDOUT_SPLIT, seeded_subset, split_heldout

# What load_dataset raises when the hub cannot be reached or lacks the files: the OSError family (connection, offline
# mode, not found, HTTP errors) and httpx's transport errors, which datasets sometimes lets through.
try:
    import httpx

    HUB_UNREACHABLE: tuple[type[Exception], ...] = (OSError, httpx.TransportError)
except ImportError:  # optional: older datasets talk to the hub through requests, whose errors are OSErrors
    HUB_UNREACHABLE = (OSError,)

logger = logging.getLogger(__name__)

HUB_PATH = "nyu-mll/glue"

# split -> the alternative file sets that hold it (a set of several files is concatenated in order).
RELEASE_FILES = {"train": (("train.tsv",),), "validation": (("dev.tsv",),)}
COLA_FILES = {
    "train": (("train.tsv",), ("in_domain_train.tsv",)),
    "validation": (("dev.tsv",), ("in_domain_dev.tsv", "out_of_domain_dev.tsv")),
}
MNLI_FILES = {
    "train": (("train.tsv",),),
    "validation_matched": (("dev_matched.tsv",),),
    "validation_mismatched": (("dev_mismatched.tsv",),),
}

SIMILARITY_PREFIX = "classify the semantic similarity of the text: "


@dataclass(frozen=True)
class GlueSpec:
    """One GLUE task: where its data lives, how its input text is built and how it is scored."""

    folder: str  # the task's folder in the official GLUE release
    text_fields: tuple[str, ...]  # the hub's text columns, in input order
    prefix: str  # the reference code's instruction prefix
    label_names: tuple[str, ...] | None  # in hub id order; None: regression (STS-B)
    metrics: tuple[str, ...]  # keys of METRICS; the first is the main metric
    files: dict = field(default_factory=lambda: RELEASE_FILES)  # split -> alternative local file sets
    release_columns: dict = field(default_factory=dict)  # hub column -> its header name in local files
    headerless: tuple[tuple[int, ...], int] | None = None  # (text column indices, label index) without header

    @property
    def eval_splits(self) -> list[str]:
        return [split for split in self.files if split != "train"]

    @property
    def num_labels(self) -> int:
        return len(self.label_names) if self.label_names else 1


GLUE_TASKS: dict[str, GlueSpec] = {
    "cola": GlueSpec(
        "CoLA",
        ("sentence",),
        "classify the grammaticality of the text: ",
        ("unacceptable", "acceptable"),
        ("matthews_correlation", "accuracy"),
        files=COLA_FILES,
        headerless=((3,), 1),  # source, label, original judgement mark, sentence
    ),
    "sst2": GlueSpec(
        "SST-2",
        ("sentence",),
        "classify the sentiment of the text: ",
        ("negative", "positive"),
        ("accuracy",),
        release_columns={"sentence": "content"},  # some GLUE-format copies of the dev set name it so
    ),
    "mrpc": GlueSpec(
        "MRPC",
        ("sentence1", "sentence2"),
        SIMILARITY_PREFIX,
        ("not_equivalent", "equivalent"),
        ("f1", "accuracy"),
        release_columns={"sentence1": "#1 String", "sentence2": "#2 String", "label": "Quality"},
    ),
    "qqp": GlueSpec(
        "QQP",
        ("question1", "question2"),
        SIMILARITY_PREFIX,
        ("not_duplicate", "duplicate"),
        ("f1", "accuracy"),
        release_columns={"label": "is_duplicate"},
    ),
    "mnli": GlueSpec(
        "MNLI",
        ("premise", "hypothesis"),
        SIMILARITY_PREFIX,
        ("entailment", "neutral", "contradiction"),
        ("accuracy",),
        files=MNLI_FILES,
        release_columns={"premise": "sentence1", "hypothesis": "sentence2", "label": "gold_label"},
    ),
    "qnli": GlueSpec(
        "QNLI",
        ("question", "sentence"),
        "classify the semantic similarity of the question and the sentence: ",
        ("entailment", "not_entailment"),
        ("accuracy",),
    ),
    "rte": GlueSpec(
        "RTE",
        ("sentence1", "sentence2"),
        "determine if the second sentence entails the first sentence: ",
        ("entailment", "not_entailment"),
        ("accuracy",),
    ),
    "stsb": GlueSpec(
        "STS-B",
        ("sentence1", "sentence2"),
        SIMILARITY_PREFIX,
        None,
        ("pearson", "spearman"),
        release_columns={"label": "score"},
    ),
}

METRICS = {
    "accuracy": metrics.accuracy,
    "f1": metrics.f1_binary,
    "matthews_correlation": metrics.matthews_correlation,
    "pearson": metrics.pearson,
    "spearman": metrics.spearman,
}

# Rows of one split before formatting: the sentences of each example (in text_fields order) and its label.
RawSplit = tuple[list[tuple[str, ...]], list]


def load_glue(cfg, seed: int) -> TextTask:
    """The GLUE task named by `cfg.subset` (or the last part of `cfg.name`), from the hub or `cfg.data_dir`.

    `cfg.heldout_size` training rows are held out as the split "heldout" (goat.tasks.records.split_heldout);
    `cfg.max_train_samples` / `cfg.max_eval_samples` then keep a random subset of the remaining training rows and of
    each dev split, drawn with `seed` (training) or the fixed EVAL_SUBSET_SEED (evaluation: the same examples for
    every seed).
    """
    key = _task_key(cfg)
    spec = GLUE_TASKS[key]
    raw = _read_local(cfg.data_dir, key, spec) if cfg.data_dir else _read_hub(cfg, key, spec)
    prefix = cfg.prefix or spec.prefix
    train_rows, heldout_rows = split_heldout(np.arange(len(raw["train"][1])), cfg.heldout_size)
    keep = {"train": seeded_subset(train_rows, _sample_limit(cfg, "train"), seed)}
    for split in spec.eval_splits:
        keep[split] = seeded_subset(np.arange(len(raw[split][1])), _sample_limit(cfg, split), EVAL_SUBSET_SEED)
    eval_splits = spec.eval_splits
    if len(heldout_rows):
        keep[HELDOUT_SPLIT], eval_splits = heldout_rows, [*eval_splits, HELDOUT_SPLIT]
    splits = {
        split: _to_dataset(raw["train" if split == HELDOUT_SPLIT else split], prefix, rows)
        for split, rows in keep.items()
    }
    compute_metrics = functools.partial(_score, spec.metrics)
    task = TextTask(
        name=cfg.name,
        splits=splits,
        eval_splits=eval_splits,
        num_labels=spec.num_labels,
        compute_metrics=compute_metrics,
        main_metric=spec.metrics[0],
        label_names=list(spec.label_names) if spec.label_names else None,
    )
    task.majority_baseline = _majority_baseline(task)
    return task


def _task_key(cfg) -> str:
    """The GLUE task of the config: its subset when that names one, else the last part of its name (glue/cola)."""
    for candidate in (cfg.subset or "", cfg.name.rsplit("/", 1)[-1]):
        key = candidate.lower().replace("-", "")  # SST-2, STS-B as the release spells them
        if key in GLUE_TASKS:
            return key
    raise DataUnavailableError(
        f"task {cfg.name!r} (subset {cfg.subset!r}) is not one of the paper's 8 GLUE tasks; set task.subset to one "
        f"of: {', '.join(GLUE_TASKS)}"
    )


def _sample_limit(cfg, split: str) -> int | None:
    name = "max_train_samples" if split == "train" else "max_eval_samples"
    limit = getattr(cfg, name)
    if limit is not None and limit < 1:
        raise DataUnavailableError(f"task.{name}={limit} keeps no rows; give a positive number, or null for every row")
    return limit


def _score(metric_names: tuple[str, ...], predictions, labels) -> dict[str, float]:
    """The task's metrics (module-level, so that compute_metrics pickles for worker processes)."""
    return {name: METRICS[name](predictions, labels) for name in metric_names}


def _majority_baseline(task: TextTask) -> float | None:
    """The main metric on the first eval split when always predicting the most frequent train label."""
    if task.num_labels == 1:
        return None
    majority = np.bincount(np.asarray(task.splits["train"]["label"]), minlength=task.num_labels).argmax()
    gold = np.asarray(task.splits[task.eval_splits[0]]["label"])
    return task.compute_metrics(np.full_like(gold, majority), gold)[task.main_metric]


def _to_dataset(raw: RawSplit, prefix: str, rows: np.ndarray) -> datasets.Dataset:
    """Rows `rows` of a split as the model reads them: "text" = prefix + sentences joined by "\\n" + "\\nresult: ",
    "label"."""
    sentences, labels = raw
    texts = [prefix + "\n".join(sentences[i]) + "\nresult: " for i in rows]
    return datasets.Dataset.from_dict({"text": texts, "label": [labels[i] for i in rows]})


# --- the Hugging Face hub ------------------------------------------------------------------------------------


def _read_hub(cfg, key: str, spec: GlueSpec) -> dict[str, RawSplit]:
    path, subset = cfg.dataset or HUB_PATH, cfg.subset or key
    try:
        with hub_offline_unless_reachable(datasets.config):
            hub = datasets.load_dataset(path, subset)
    except HUB_UNREACHABLE as error:
        reason = " ".join(f"{type(error).__name__}: {error}".split())[:200]
        raise DataUnavailableError(
            f"GLUE {key} could not be loaded from the Hugging Face hub ({path}, {subset}; {reason}): no network? "
            f"Point the task at local files with task.data_dir=/path/to/{spec.folder} (the official GLUE release "
            "layout)."
        ) from None
    raw = {}
    for split in ["train", *spec.eval_splits]:
        if split not in hub:
            raise DataUnavailableError(
                f"{path} ({subset}) has no split {split!r}, only {', '.join(hub)}; use {HUB_PATH}"
            )
        columns = hub[split].select_columns([*spec.text_fields, "label"]).to_dict()
        raw[split] = (list(zip(*(columns[name] for name in spec.text_fields), strict=True)), columns["label"])
    return raw


# --- local TSV files -----------------------------------------------------------------------------------------


def _read_local(data_dir: str, key: str, spec: GlueSpec) -> dict[str, RawSplit]:
    folder = _task_folder(Path(data_dir).expanduser(), key, spec)
    raw = {}
    for split in ["train", *spec.eval_splits]:
        sentences, labels = [], []
        for path in _split_paths(folder, key, spec, split):
            try:
                for parts, label in _read_tsv(path, spec):
                    sentences.append(parts)
                    labels.append(label)
            except DataUnavailableError as error:  # the file is named; add the setting that points at it
                raise DataUnavailableError(f"{error} (task.data_dir={data_dir})") from None
            except UnicodeDecodeError:
                raise DataUnavailableError(f"{path} is not UTF-8 text (task.data_dir={data_dir})") from None
        raw[split] = (sentences, labels)
    return raw


def _task_folder(root: Path, key: str, spec: GlueSpec) -> Path:
    """`root` when it holds the task's train file, else its subfolder named as in the release (CoLA) or the key."""
    for folder in (root, root / spec.folder, root / key):
        if any((folder / names[0]).is_file() for names in spec.files["train"]):
            return folder
    return root


def _split_paths(folder: Path, key: str, spec: GlueSpec, split: str) -> list[Path]:
    for names in spec.files[split]:
        if all((folder / name).is_file() for name in names):
            return [folder / name for name in names]
    expected = " or ".join(" + ".join(names) for names in spec.files[split])
    raise DataUnavailableError(
        f"GLUE {key} has no {split} split in {folder}: expected {expected} there; point task.data_dir at the "
        f"{spec.folder} folder of the official GLUE release."
    )


def _read_tsv(path: Path, spec: GlueSpec) -> Iterator[tuple[tuple[str, ...], int | float]]:
    """(sentences, label) per row. QUOTE_NONE: GLUE's sentences hold unbalanced quotes that are text, not quoting.
    Rows lacking a column or a label are skipped, as the hub's GLUE builder skips them, and counted in a warning."""
    with open(path, encoding="utf-8-sig", newline="") as file:  # utf-8-sig: MRPC copies start with a BOM
        rows = csv.reader(file, delimiter="\t", quoting=csv.QUOTE_NONE)
        first = next(rows, None)
        if first is None:
            raise DataUnavailableError(f"{path} is empty; a GLUE {spec.folder} file has one example per line")
        text_columns, label_column, first_is_data = _columns(first, path, spec)
        if first_is_data:
            rows = _prepend(first, rows)
        needed = max(*text_columns, label_column) + 1
        skipped = 0
        for line, row in enumerate(rows, start=1 if first_is_data else 2):
            if len(row) < needed or not row[label_column].strip():
                skipped += 1
                continue
            yield tuple(row[i] for i in text_columns), _parse_label(row[label_column].strip(), spec, path, line)
    if skipped:
        logger.warning("%s: skipped %d rows that lack a column or a label", path, skipped)


def _prepend(first: list[str], rows: Iterator[list[str]]) -> Iterator[list[str]]:
    yield first
    yield from rows


def _columns(first: list[str], path: Path, spec: GlueSpec) -> tuple[tuple[int, ...], int, bool]:
    """(text column indices, label column index, whether the first row is data) from the header or its absence."""
    header = [name.strip() for name in first]
    found = [_find_column(header, field_name, spec) for field_name in (*spec.text_fields, "label")]
    if None not in found:
        return tuple(found[:-1]), found[-1], False
    if spec.headerless and len(first) > max(*spec.headerless[0], spec.headerless[1]):
        text_columns, label_column = spec.headerless
        return text_columns, label_column, True
    wanted = [
        f"{name}/{spec.release_columns[name]}" if name in spec.release_columns else name
        for name in (*spec.text_fields, "label")
    ]
    raise DataUnavailableError(
        f"{path}: the header {header} lacks the columns {', '.join(wanted)}; is it GLUE {spec.folder}?"
    )


def _find_column(header: list[str], field_name: str, spec: GlueSpec) -> int | None:
    for name in (field_name, spec.release_columns.get(field_name)):
        if name in header:
            return header.index(name)
    return None


def _parse_label(value: str, spec: GlueSpec, path: Path, line: int) -> int | float:
    """A hub label: STS-B's float score, else the class id of a label name (entailment, ...) or an id as text."""
    if spec.label_names is None:
        try:
            return float(value)
        except ValueError:
            raise DataUnavailableError(
                f"{path}, line {line}: the {spec.folder} score {value!r} is not a number"
            ) from None
    if value in spec.label_names:
        return spec.label_names.index(value)
    if value.isdigit() and int(value) < len(spec.label_names):
        return int(value)
    raise DataUnavailableError(
        f"{path}, line {line}: label {value!r} is neither a {spec.folder} label name ({', '.join(spec.label_names)}) "
        f"nor a class id 0..{len(spec.label_names) - 1}"
    )
