"""Task loaders by name: TaskConfig -> a Task (goat.tasks.base) that carries its own pipeline."""

from __future__ import annotations

from importlib import import_module

from goat.config import ConfigError, DataUnavailableError
from goat.tasks.base import Task
from goat.tasks.classification import TextTask

# loader name -> "module:function"; imported on use so that a task's dependencies load only when needed.
LOADERS = {
    "chat": "goat.tasks.chat:load_chat",
    "code": "goat.tasks.code:load_code",
    "commonsense": "goat.tasks.commonsense:load_commonsense",
    "glue": "goat.tasks.glue:load_glue",
    "math": "goat.tasks.math:load_math",
    "packaged": "goat.tasks.packaged:load_packaged",
    "text_files": "goat.tasks.text_files:load_text_files",
    "vision": "goat.tasks.vision:load_vision",
}
# The loaders that can hold out training rows for model selection (task.heldout_size, goat.tasks.records.split_heldout);
# commonsense only from the union of task.train_sets, scored by loglik (goat.checks).
HELDOUT_LOADERS = ("commonsense", "glue", "packaged", "text_files")


def load_task(task_cfg, seed: int) -> Task:
    if task_cfg.loader not in LOADERS:
        raise ValueError(f"task.loader={task_cfg.loader!r} is unknown; valid loaders: {', '.join(sorted(LOADERS))}")
    module, function = LOADERS[task_cfg.loader].split(":")
    task = getattr(import_module(module), function)(task_cfg, seed)
    if getattr(type(task), "pipeline", Task.pipeline) is Task.pipeline:  # before any model loads
        raise ConfigError(
            f"task.loader={task_cfg.loader} gave a {type(task).__name__}, a task type without a pipeline: goat cannot "
            "train or score it (define its pipeline, see goat.tasks.base.Task)"
        )
    if task.train_size == 0:  # before the run folder exists: a loop over no batch would never step
        where = f"task.data_dir={task_cfg.data_dir}" if task_cfg.data_dir else f"task={task_cfg.name}"
        raise DataUnavailableError(
            f"the training set of {task_cfg.name} is empty ({where}"
            + (f", task.train_file={task_cfg.train_file}" if task_cfg.train_file else "")
            + "): give it training rows"
        )
    return task


__all__ = ["HELDOUT_LOADERS", "LOADERS", "DataUnavailableError", "Task", "TextTask", "load_task"]
