"""What every task gives the trainer: labelled text splits, how to score predictions, and its main metric.

Data flows one way: a task loader turns a `TaskConfig` into a task (a `Task`: TextTask, InstructionTask,
ChoiceTask, or a family's own, ChatTask, ImageTask); the task's `pipeline` gives goat-train and goat-eval its
batches and its evaluator, so neither ever asks which class a task is. A task module never imports the trainer.
Each task type is defined beside its pipeline (TextTask in goat.tasks.classification, InstructionTask in
goat.tasks.instruction, ChoiceTask in goat.tasks.loglik), so those modules import this one and never the reverse.
"""

from __future__ import annotations

import os
import socket
from collections import Counter
from collections.abc import Callable
from urllib.parse import urlparse

import huggingface_hub.constants as hub_constants
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


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers a TCP connection within `timeout` s (False in HF offline mode)."""
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
    of retries. huggingface_hub is switched always; a library that copied its HF_HUB_OFFLINE at import is given
    by the caller who uses it (`hub_offline_unless_reachable(datasets.config)`), so this module never imports
    datasets (1.9 s) for a model download."""

    def __init__(self, *configs):
        self.configs = configs

    def __enter__(self):
        self.saved = None
        if hub_reachable():
            return self
        modules = [hub_constants, *self.configs]
        self.saved = [(module, module.HF_HUB_OFFLINE) for module in modules]
        for module in modules:
            module.HF_HUB_OFFLINE = True
        return self

    def __exit__(self, *exc):
        for module, value in self.saved or []:
            module.HF_HUB_OFFLINE = value
        return False
