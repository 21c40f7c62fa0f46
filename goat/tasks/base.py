"""What every task gives the trainer: labelled text splits, how to score predictions, and its main metric.

Data flows one way: a task loader turns a `TaskConfig` into a task (a `Task`: TextTask, InstructionTask,
ChoiceTask, or a family's own, ChatTask, ImageTask); the task's `pipeline` gives goat-train and goat-eval its
batches and its evaluator, so neither ever asks which class a task is. A task module never imports the trainer.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from goat import metrics

MetricFn = Callable[[np.ndarray, np.ndarray], dict[str, float]]
Evaluator = Callable[[object, int], dict[str, float]]  # (model, step) -> {"<split>/<metric>": value}


class Task:
    """A task type: how its runs are trained and scored. Every task a loader returns is one."""

    def pipeline(self, cfg, tokenizer, accelerator, run_dir) -> tuple[object, Evaluator, str]:
        """(train loader, evaluator, main metric key) for a run of this task; the evaluator writes what it
        generates under `run_dir`. cfg: the composed run config (task and trainer settings)."""
        name = type(self).__name__
        raise NotImplementedError(f"task type {name} has no pipeline: define {name}.pipeline (goat.tasks.base.Task)")


@dataclass
class TextTask(Task):
    """Labelled text for sequence classification (or regression when num_labels == 1).

    splits: split name -> `datasets.Dataset` with a column "text" (the model's whole input, prompt prefix
        included) and a column "label" (int class id; float for regression). Must hold "train" and every
        name in `eval_splits`.
    eval_splits: the splits evaluated after each epoch, in report order (MNLI: matched, mismatched).
    compute_metrics(predictions, labels) -> {metric name: value in [0, 100] or [-100, 100]}: predictions
        are class ids (argmax of the logits), or floats for regression.
    main_metric: the key of compute_metrics' result that the task is reported and selected by.
    majority_baseline: compute_metrics' main value when always predicting the most frequent train label
        (None for regression); the offline default run checks it learns above this.
    """

    name: str
    splits: dict
    eval_splits: list[str]
    num_labels: int
    compute_metrics: MetricFn
    main_metric: str
    label_names: list[str] | None = None
    majority_baseline: float | None = None

    @property
    def train_size(self) -> int:
        return len(self.splits["train"])

    def pipeline(self, cfg, tokenizer, accelerator, run_dir):
        from goat.tasks.classification import classification_pipeline

        return classification_pipeline(cfg, self, tokenizer, accelerator, run_dir)


def classification_metrics(predictions, labels) -> dict[str, float]:
    """Accuracy; for two classes also F1 of class 1 and Matthews correlation."""
    result = {"accuracy": metrics.accuracy(predictions, labels)}
    if max(np.max(labels), np.max(predictions)) <= 1:
        result["f1"] = metrics.f1_binary(predictions, labels)
        result["matthews_correlation"] = metrics.matthews_correlation(predictions, labels)
    return result


def majority_baseline(train_labels, validation_labels) -> float:
    """Accuracy on validation of always predicting the most frequent train label."""
    majority = Counter(list(train_labels)).most_common(1)[0][0]
    return metrics.accuracy(np.full(len(validation_labels), majority), validation_labels)


class DataUnavailableError(RuntimeError, ValueError):
    """The task's data cannot be used as given: missing, unreachable, malformed or empty. The message is one line
    that names the file (with its line or record) and the setting pointing at it; goat-train prints it, exit 2."""


def first_line(error: BaseException) -> str:
    """The first line of an exception's message, for one-line errors that quote a library's own words."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else "(no message)"


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers a TCP connection within `timeout` s (False in HF offline mode)."""
    import os
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


class hub_offline_unless_reachable:
    """Within the block, the hub libraries run in offline mode (local cache only, no retries) when the hub does
    not answer: a cached dataset or model still loads, and a missing one fails at once instead of after ~30 s
    of retries."""

    def __enter__(self):
        self.saved = None
        if hub_reachable():
            return self
        import huggingface_hub.constants as hub_constants

        modules = [hub_constants]
        try:
            import datasets.config as datasets_config

            modules.append(datasets_config)
        except ImportError:
            pass
        self.saved = [(module, module.HF_HUB_OFFLINE) for module in modules]
        for module in modules:
            module.HF_HUB_OFFLINE = True
        return self

    def __exit__(self, *exc):
        for module, value in self.saved or []:
            module.HF_HUB_OFFLINE = value
        return False


@dataclass
class InstructionTask(Task):
    """Instruction tuning of a causal LM, scored by generating answers (spec §6 CR, Math).

    train: [{"prompt": str, "response": str}]: the loss is on the response (and EOS) only.
    eval_sets: set name -> [{"prompt": str, "answer": gold}]; each prompt is completed by greedy generation.
    score(set name, completion, gold) -> bool: the set's answer extraction and comparison.
    main_metric: the key of the results reported and selected by ("average/accuracy" over the sets, or one set's).
    """

    name: str
    train: list
    eval_sets: dict
    score: Callable[[str, str, object], bool]
    main_metric: str = "average/accuracy"
    max_new_tokens: int = 32
    decoding: dict = field(default_factory=dict)  # generate() kwargs; empty = greedy
    samples: int = 1  # completions per prompt (n of pass@k; > 1 needs sampling)

    @property
    def train_size(self) -> int:
        return len(self.train)

    def pipeline(self, cfg, tokenizer, accelerator, run_dir):
        from goat.tasks.instruction import evaluate_generation, generation_pipeline

        return generation_pipeline(cfg, self, tokenizer, accelerator, run_dir, evaluate_generation)


@dataclass
class ChoiceTask(Task):
    """Instruction tuning of a causal LM (as InstructionTask), scored by the log-likelihood of each option's text
    (task.scoring=loglik, goat.tasks.loglik).

    train: [{"prompt": str, "response": str}]: the loss is on the response (and EOS) only.
    eval_sets: set name -> [{"options": [str], "pairs": [(context, continuation)] one per option, "gold": int}]
        (goat.tasks.choices.choice_record); "heldout": training rows held out to choose on, in no average.
    main_metric: "<set>/acc" for one set, "average/acc" over several (acc_norm is reported beside it).
    groups: average name -> the sets it averages ("average": the test sets, "heldout" never in one; in_domain,
        transfer); empty: "average" over every set.
    """

    name: str
    train: list
    eval_sets: dict
    main_metric: str = "average/acc"
    groups: dict = field(default_factory=dict)

    @property
    def train_size(self) -> int:
        return len(self.train)

    def pipeline(self, cfg, tokenizer, accelerator, run_dir):
        from goat.tasks.instruction import generation_pipeline
        from goat.tasks.loglik import evaluate_loglik

        return generation_pipeline(cfg, self, tokenizer, accelerator, run_dir, evaluate_loglik)
