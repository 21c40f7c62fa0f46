"""TextTask (labelled text for sequence classification) and its pipeline: tokenised batches and argmax scoring."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from goat.evaluate import evaluate
from goat.tasks.base import MetricFn, Task


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
        return classification_pipeline(cfg, self, tokenizer, accelerator, run_dir)


class TokenizedSplit(Dataset):
    """One split, tokenised once (truncated to max_length, not padded: batches pad to their longest row)."""

    def __init__(self, split, tokenizer, max_length: int, regression: bool):
        encoded = tokenizer(list(split["text"]), truncation=True, max_length=max_length)
        self.input_ids = encoded["input_ids"]
        self.labels = list(split["label"])
        self.label_dtype = torch.float32 if regression else torch.long

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        return {"input_ids": self.input_ids[index], "label": self.labels[index]}


class EpochSampler(Sampler):
    """A fresh permutation per epoch from (seed, epoch): resuming mid-epoch sees the same order."""

    def __init__(self, size: int, seed: int):
        self.size, self.seed, self.epoch = size, seed, 0

    def use_epoch(self, epoch: int) -> None:
        """Named so that Accelerate (which calls set_epoch with its own counter) leaves the epoch to the trainer."""
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())

    def __len__(self) -> int:
        return self.size


def collate(tokenizer, label_dtype, pad_to_multiple_of: int = 1):
    def pad(rows: list[dict]) -> dict:
        ids = {"input_ids": [row["input_ids"] for row in rows]}
        batch = tokenizer.pad(ids, return_tensors="pt", pad_to_multiple_of=pad_to_multiple_of)
        batch["labels"] = torch.tensor([row["label"] for row in rows], dtype=label_dtype)
        return dict(batch)

    return pad


def resumable_loader(dataset, batch_size: int, collate_fn, seed: int, num_workers: int = 0) -> DataLoader:
    """The training loader of every task family: batch order a function of (seed, epoch) through EpochSampler,
    and an own generator, so creating an iterator draws its base seed from it, not from the global RNG that
    dropout uses: a resumed run draws the same dropout masks as an uninterrupted one."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=EpochSampler(len(dataset), seed),
        collate_fn=collate_fn,
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(seed),
    )


def train_loader(
    split: TokenizedSplit, tokenizer, batch_size: int, seed: int, num_workers: int = 0, pad_to_multiple_of: int = 1
) -> DataLoader:
    pad = collate(tokenizer, split.label_dtype, pad_to_multiple_of)
    return resumable_loader(split, batch_size, pad, seed, num_workers)


def eval_loader(split: TokenizedSplit, tokenizer, batch_size: int, num_workers: int = 0) -> DataLoader:
    return DataLoader(
        split,
        batch_size=batch_size,
        shuffle=False,
        collate_fn=collate(tokenizer, split.label_dtype),
        num_workers=num_workers,
        generator=torch.Generator(),
    )


def classification_pipeline(cfg, task, tokenizer, accelerator, run_dir):
    """(train loader, evaluator, main metric key) for a TextTask: eval splits scored by argmax predictions."""
    t, regression = cfg.trainer, task.num_labels == 1
    splits = {
        name: TokenizedSplit(task.splits[name], tokenizer, cfg.task.max_length, regression)
        for name in ["train", *task.eval_splits]
    }
    loaders = {
        name: accelerator.prepare(eval_loader(splits[name], tokenizer, t.eval_batch_size, t.num_workers))
        for name in task.eval_splits
    }

    def evaluator(model, step):
        return evaluate(model, loaders, task, accelerator)

    train = train_loader(splits["train"], tokenizer, t.micro_batch_size, t.seed, t.num_workers, t.pad_to_multiple_of)
    return train, evaluator, f"{task.eval_splits[0]}/{task.main_metric}"
