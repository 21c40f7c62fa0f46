"""Image classification with CLIP ViT (spec §6 ViT): the task-arithmetic datasets, the reference's head and
transforms, top-1 accuracy.

Model: the CLIP vision tower, then the mean of the patch tokens (CLS excluded, no post-layernorm or
projection), then a new linear head trained fully (`goat.models.CLIPPatchMeanClassifier`), as the reference ran it.
Data: hub datasets with columns image (PIL) and label, e.g. tanganke/stanford_cars; the reference trains on
90% of the official train split and holds out 10% (at most 5000 images, seed 0) for validation, and reports
top-1 on the official test split after every epoch. Transforms are written with PIL and numpy (transformers'
CLIP image processor needs torchvision, which does not install beside torch 2.13 here): train
RandomResizedCrop(224, scale (0.9, 1), ratio (3/4, 4/3), bicubic); test Resize(224, bicubic) + CenterCrop(224);
CLIP's mean and std.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import datasets
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from goat.config import DataUnavailableError, first_line
from goat.evaluate import evaluate
from goat.metrics import accuracy
from goat.tasks.base import Task, hub_offline_unless_reachable
from goat.tasks.classification import resumable_loader
from goat.tasks.records import EVAL_SUBSET_SEED, seeded_subset

CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)
HELD_OUT_FRACTION, HELD_OUT_MAX, HELD_OUT_SEED = 0.1, 5000, 0


@dataclass
class ImageTask(Task):
    name: str
    splits: dict  # name -> sequence of {"image": PIL.Image, "label": int}
    eval_splits: list
    num_labels: int
    main_metric: str = "accuracy"
    label_names: list | None = None

    @property
    def train_size(self) -> int:
        return len(self.splits["train"])

    def compute_metrics(self, predictions, labels) -> dict[str, float]:
        return {"accuracy": accuracy(predictions, labels)}

    def pipeline(self, cfg, tokenizer, accelerator, run_dir):
        return vision_pipeline(cfg, self, tokenizer, accelerator, run_dir)


def random_resized_crop(image, size: int, rng: random.Random, scale=(0.9, 1.0), ratio=(3 / 4, 4 / 3)):
    """torchvision's RandomResizedCrop sampling (10 tries, then a center crop), bicubic resize to size x size."""
    width, height = image.size
    area = width * height
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            left, top = rng.randint(0, width - w), rng.randint(0, height - h)
            return image.crop((left, top, left + w, top + h)).resize((size, size), Image.BICUBIC)
    side = min(width, height)
    return center_crop(image, side).resize((size, size), Image.BICUBIC)


def center_crop(image, size: int):
    width, height = image.size
    left, top = (width - size) // 2, (height - size) // 2
    return image.crop((left, top, left + size, top + size))


def resize_shorter(image, size: int):
    width, height = image.size
    scale = size / min(width, height)
    return image.resize((max(size, round(width * scale)), max(size, round(height * scale))), Image.BICUBIC)


def to_tensor(image) -> torch.Tensor:
    """(3, H, W) float32, CLIP-normalised."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(((array - CLIP_MEAN) / CLIP_STD).transpose(2, 0, 1).copy())


class ImageSplit(Dataset):
    def __init__(self, rows, size: int, train: bool):
        self.rows, self.size, self.train = rows, size, train

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        row = self.rows[index]
        if self.train:  # a per-item RNG from the global torch RNG: reproducible and resumable with the run's seed
            rng = random.Random(int(torch.randint(0, 2**31 - 1, (1,))))
            image = random_resized_crop(row["image"], self.size, rng)
        else:
            image = center_crop(resize_shorter(row["image"], self.size), self.size)
        return {"pixel_values": to_tensor(image), "labels": int(row["label"])}


def collate(rows: list[dict]) -> dict:
    return {
        "pixel_values": torch.stack([r["pixel_values"] for r in rows]),
        "labels": torch.tensor([r["labels"] for r in rows], dtype=torch.long),
    }


def held_out_split(rows: list, seed: int = HELD_OUT_SEED) -> tuple[list, list]:
    """(train 90%, validation 10% capped at 5000), the reference's split of the official train split."""
    held = min(HELD_OUT_MAX, round(HELD_OUT_FRACTION * len(rows)))
    order = np.random.default_rng(seed).permutation(len(rows))
    keep, out = sorted(order[held:].tolist()), sorted(order[:held].tolist())
    return [rows[i] for i in keep], [rows[i] for i in out]


LAYOUT = "train/<class>/*.jpg and test/<class>/*.jpg"


def load_vision(cfg, seed: int) -> ImageTask:
    """task.dataset (hub) with train/test splits, or task.data_dir with an imagefolder layout (train/, test/)."""
    try:
        with hub_offline_unless_reachable(datasets.config):
            if cfg.data_dir:
                data = datasets.load_dataset("imagefolder", data_dir=cfg.data_dir)
            else:
                data = datasets.load_dataset(cfg.dataset)
    except (OSError, ValueError) as error:
        if cfg.data_dir:
            raise DataUnavailableError(
                f"{cfg.data_dir} (task.data_dir) could not be read as an image folder ({type(error).__name__}: "
                f"{first_line(error)}); it must hold {LAYOUT}"
            ) from None
        raise DataUnavailableError(
            f"{cfg.dataset} could not be loaded ({type(error).__name__}; no network?): point the task "
            f"at local images with task.data_dir=DIR holding {LAYOUT}"
        ) from None
    source = f"{cfg.data_dir} (task.data_dir)" if cfg.data_dir else f"task.dataset={cfg.dataset}"
    missing = [split for split in ("train", "test") if split not in data]
    unlabelled = "label" not in data["train"].column_names or None in data["train"]["label"]
    if missing or unlabelled:
        what = f"no {' or '.join(missing)} split" if missing else "no class labels (no class subfolders)"
        raise DataUnavailableError(f"{source} has {what}; it must hold {LAYOUT}")
    if "validation" in data:  # a predefined validation split (EuroSAT's) is used as it is
        train_rows, validation_rows = list(data["train"]), list(data["validation"])
    else:
        train_rows, validation_rows = held_out_split(list(data["train"]))
    test_rows = list(data["test"])
    splits = {
        "train": seeded_subset(train_rows, cfg.max_train_samples, seed),
        "validation": seeded_subset(validation_rows, cfg.max_eval_samples, EVAL_SUBSET_SEED),
        "test": seeded_subset(test_rows, cfg.max_eval_samples, seed + 2),
    }
    num_labels = int(max(int(r["label"]) for r in train_rows + test_rows)) + 1
    feature = data["train"].features.get("label")
    names = list(feature.names) if hasattr(feature, "names") else None
    return ImageTask(cfg.name, splits, ["test", "validation"], num_labels, label_names=names)


def loaders(task: ImageTask, size: int, micro_batch: int, eval_batch: int, seed: int, num_workers: int = 0):
    train = ImageSplit(task.splits["train"], size, train=True)
    train_loader = resumable_loader(train, micro_batch, collate, seed, num_workers)
    evals = {
        name: DataLoader(
            ImageSplit(task.splits[name], size, train=False),
            batch_size=eval_batch,
            collate_fn=collate,
            num_workers=num_workers,
            generator=torch.Generator(),
        )
        for name in task.eval_splits
    }
    return train_loader, evals


def vision_pipeline(cfg, task, tokenizer, accelerator, run_dir):
    """(train loader, evaluator, main metric key) for image classification: top-1 on test and validation."""
    t = cfg.trainer
    train, evals = loaders(task, cfg.task.image_size, t.micro_batch_size, t.eval_batch_size, t.seed, t.num_workers)
    prepared = {name: accelerator.prepare(loader) for name, loader in evals.items()}

    def evaluator(model, step):
        return evaluate(model, prepared, task, accelerator)

    return train, evaluator, f"{task.eval_splits[0]}/{task.main_metric}"
