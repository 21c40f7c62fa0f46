"""Everything that can be wrong with a run's config, found before any data or weights are loaded.

Each check raises ConfigError with one message that names the key, what is wrong and what to do.
The order in goat.train: check_config (the config alone), check_output_dir (the file system),
check_model (the model's config.json and a weightless skeleton of the model), check_same_run (resuming).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from omegaconf import OmegaConf

from goat.adapters import validate
from goat.adapters.lora_moe import check_rank_fits
from goat.adapters.surgery import find_heads, find_targets
from goat.compile import COMPILE_BACKENDS, COMPILE_MODES
from goat.config import ConfigError, adapter_config, first_domain_error, load_run_config, same_method_setting
from goat.models import DTYPES, IMAGE_HEADS, MODEL_CLASSES, build_skeleton
from goat.schedule import SCHEDULES
from goat.tasks import HELDOUT_LOADERS, LOADERS
from goat.tasks.instruction import DECODINGS
from goat.tracking import LOGGER_BACKENDS

MIXED_PRECISION = ("no", "fp16", "bf16")
RESUME_MUST_MATCH = ("task.name", "model.name_or_path", "method")
FULL_FINE_TUNING = ("full_ft", "full_ft_moe")


def _one_of(key: str, value, valid) -> None:
    if value not in valid:
        raise ConfigError(f"{key}={value!r} is unknown; valid: {', '.join(valid)}")


def check_config(cfg, num_processes: int = 1, deepspeed: bool = False):
    """Checks that need neither data nor weights; returns the adapter config of the method."""
    t = cfg.trainer
    check_domains(cfg)
    _one_of("task.loader", cfg.task.loader, sorted(LOADERS))
    _one_of("model.kind", cfg.model.kind, list(MODEL_CLASSES))
    _one_of("model.dtype", cfg.model.dtype, list(DTYPES))
    _one_of("model.image_head", cfg.model.image_head, IMAGE_HEADS)
    _one_of("logger.backend", cfg.logger.backend, LOGGER_BACKENDS)
    _one_of("trainer.on_nonfinite", t.on_nonfinite, ("stop", "skip"))
    _one_of("task.decoding", cfg.task.decoding, DECODINGS)
    _one_of("trainer.scheduler", t.scheduler, list(SCHEDULES))
    _one_of("trainer.mixed_precision", t.mixed_precision, MIXED_PRECISION)
    _one_of("trainer.compile", t.compile, COMPILE_MODES)
    _one_of("trainer.compile_backend", t.compile_backend, COMPILE_BACKENDS)
    if t.compile == "reduce-overhead" and t.pad_to_multiple_of < 8:
        raise ConfigError(
            f"trainer.compile=reduce-overhead records one CUDA graph per batch shape; with "
            f"trainer.pad_to_multiple_of={t.pad_to_multiple_of} every sequence length is a new graph: set "
            "trainer.pad_to_multiple_of=64 (or another bucket width)"
        )
    if cfg.task.heldout_size and cfg.task.loader not in HELDOUT_LOADERS:  # its domain (>= 0) is checked above
        raise ConfigError(
            f"task.heldout_size={cfg.task.heldout_size}: task.loader={cfg.task.loader} cannot hold out training rows; "
            f"use 0, or a loader that can: {', '.join(HELDOUT_LOADERS)}"
        )
    if cfg.task.scoring == "loglik" and cfg.task.loader != "commonsense":
        raise ConfigError(
            f"task.scoring=loglik scores the options of commonsense test sets; task.loader={cfg.task.loader} has "
            "none: use task.scoring=generate"
        )
    check_commonsense_training(cfg.task)
    if cfg.task.num_samples > 1 and cfg.task.decoding != "sample":  # its domain (>= 1) is checked above
        raise ConfigError(
            f"task.num_samples={cfg.task.num_samples}: use 1, or more with task.decoding=sample "
            "(identical greedy samples would overstate pass@k)"
        )
    per_step = t.micro_batch_size * num_processes
    if t.batch_size < per_step or t.batch_size % per_step:
        raise ConfigError(
            f"trainer.batch_size={t.batch_size} must be a multiple of trainer.micro_batch_size x devices "
            f"= {t.micro_batch_size} x {num_processes}; change one of them"
        )
    if deepspeed and t.on_nonfinite == "skip":
        raise ConfigError(
            "trainer.on_nonfinite=skip is not available under DeepSpeed, whose engine takes the optimizer step "
            "inside backward; use trainer.on_nonfinite=stop (DeepSpeed's fp16 loss scaler skips overflow itself)"
        )
    if cfg.resume not in ("never", "auto") and not Path(cfg.resume).is_dir():
        raise ConfigError(f"resume={cfg.resume!r}: expected never, auto, or an existing checkpoint directory")
    try:
        adapter_cfg = adapter_config(cfg.method).resolved()
        validate(adapter_cfg)
    except (ValueError, TypeError) as error:
        message = str(error)
        raise ConfigError(message if message.startswith("method.") else f"method: {message}") from None
    return adapter_cfg


def check_commonsense_training(task) -> None:
    """task.train_sets and task.train_format=choice belong to the commonsense loader; choice records and held-out
    rows are parsed per set (so they need train_sets) and held-out rows are scored by loglik."""
    if (task.train_sets or task.train_format != "instruction") and task.loader != "commonsense":
        raise ConfigError(
            f"task.train_sets and task.train_format=choice are settings of the commonsense loader, not of "
            f"task.loader={task.loader}: leave them at [] and instruction"
        )
    if task.loader != "commonsense":
        return
    if task.train_format == "choice" and task.scoring != "loglik":
        raise ConfigError(
            "task.train_format=choice trains on what task.scoring=loglik scores; with task.scoring=generate use "
            "task.train_format=instruction (or task.scoring=loglik)"
        )
    needs_sets = [
        name
        for name, on in (
            ("task.train_format=choice", task.train_format == "choice"),
            (f"task.heldout_size={task.heldout_size}", task.heldout_size > 0),
        )
        if on
    ]
    if needs_sets and not task.train_sets:
        raise ConfigError(
            f"{needs_sets[0]} reads each training row as a question of a known set: name them with "
            "task.train_sets=[boolq,arc_e,arc_c,obqa] (their train.json under task.data_dir)"
        )
    if task.heldout_size and task.scoring != "loglik":
        raise ConfigError(
            f"task.heldout_size={task.heldout_size}: commonsense held-out rows are scored by log-likelihood; set "
            "task.scoring=loglik, or task.heldout_size=0"
        )


def check_domains(cfg) -> None:
    """Every numeric setting of trainer, task and method inside its domain (goat.domains, declared in the schema)."""
    problem = first_domain_error(cfg)
    if problem:
        raise ConfigError(problem)


def check_output_dir(output_dir) -> None:
    """The run directory can be created and written: a file is created (and removed) in its nearest existing
    folder, so a read-only disk or a path through a file fails here, not after hours of training."""
    path = Path(output_dir).expanduser().absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError(f"output_dir={output_dir}: {existing} is a file, not a folder; choose another output_dir=...")
    try:
        with tempfile.TemporaryFile(dir=existing, prefix=".goat-write-test-"):
            pass
    except OSError as error:
        raise ConfigError(
            f"output_dir={output_dir} cannot be written ({error.strerror or error} in {existing}); "
            "choose a folder you can write to with output_dir=..."
        ) from None


def check_model(adapter_cfg, model_cfg, model_config, num_labels: int | None = None):
    """The adapter fits the model: target_modules match layers and the rank fits each of them. Checked on a
    skeleton built on the meta device from the model's config (no weights, no memory). Returns adapter_cfg with
    target_modules and modules_to_save resolved to the skeleton's module names (unchanged without a skeleton)."""
    skeleton = build_skeleton(model_cfg, model_config, num_labels)
    if skeleton is None:
        return adapter_cfg
    try:
        heads = find_heads(skeleton, adapter_cfg.modules_to_save)
        targets = find_targets(skeleton, adapter_cfg.target_modules, heads)
        if adapter_cfg.method not in FULL_FINE_TUNING:
            check_rank_fits(skeleton, targets, adapter_cfg.r)
    except ValueError as error:
        raise ConfigError(f"method: {error}") from None
    return adapter_cfg.replace(target_modules=targets, modules_to_save=heads)


def check_same_run(cfg, run_dir: Path) -> None:
    """Resuming continues the same training: the task, the model and every method setting must be those of the
    run that wrote the checkpoint (its config.yaml), checked before anything loads."""
    saved_path = Path(run_dir) / "config.yaml"
    if not saved_path.exists():
        return
    saved = load_run_config(saved_path)  # a run written with null method values: those values as it ran them
    current = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    for key in RESUME_MUST_MATCH:
        detail = _difference(key, OmegaConf.select(saved, key), OmegaConf.select(current, key))
        if detail:
            raise ConfigError(
                f"cannot resume {run_dir}: its checkpoints come from another setting ({detail}); resume with the "
                "run's own settings (its config.yaml), or train the new setting in another output_dir=..."
            )


def _difference(key: str, before, now) -> str | None:
    """What changed in `key` between the saved run and now ("method.r: 8 -> 16"), or None."""
    if key != "method":
        return None if before == now else f"{key}: {before!r} -> {now!r}"
    changed = sorted(k for k in set(before) | set(now) if not same_method_setting(before.get(k), now.get(k)))
    return ", ".join(f"method.{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in changed) or None
