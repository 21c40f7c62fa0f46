"""goat-eval: score the final adapter of a run directory with its task's own evaluator (any task family)."""

from __future__ import annotations

import json
from pathlib import Path

from accelerate import Accelerator
from accelerate.utils import set_seed

from goat.adapters import load_adapter
from goat.config import load_run_config
from goat.models import load_model
from goat.tasks import load_task


def evaluate_run(run_dir: Path) -> dict[str, float]:
    """Reloads the base model, applies <run_dir>/final, evaluates as training did, writes <run_dir>/eval.json
    (generation tasks also write their completions under <run_dir>/eval/)."""
    run_dir = Path(run_dir)
    for needed in ("config.yaml", "final/adapter_config.json"):
        if not (run_dir / needed).exists():
            raise FileNotFoundError(f"{run_dir / needed} is missing: goat-eval needs the directory of a finished run")
    cfg = load_run_config(run_dir / "config.yaml")  # on the current schema, older runs included
    accelerator = Accelerator(mixed_precision=cfg.trainer.mixed_precision, cpu=cfg.trainer.cpu)
    set_seed(cfg.trainer.seed)  # as train() did: a model built from its config gets the same weights
    task = load_task(cfg.task, cfg.trainer.seed)
    model, tokenizer = load_model(cfg.model, getattr(task, "num_labels", None), getattr(task, "label_names", None))
    model = accelerator.prepare(load_adapter(model, run_dir / "final"))
    _, evaluator, _ = task.pipeline(cfg, tokenizer, accelerator, run_dir / "eval")
    metrics = evaluator(model, 0)
    (run_dir / "eval.json").write_text(json.dumps(metrics, indent=1))
    return metrics
