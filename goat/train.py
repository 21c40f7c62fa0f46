"""One training run, start to end: config -> task -> model + adapter -> trainer -> results.

Everything that can be wrong with the config is checked before any data or weights are loaded, and a run
directory that holds a finished run is never written over.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from accelerate.utils import set_seed
from omegaconf import OmegaConf

from goat import distributed
from goat.adapters import apply_adapter, save_adapter
from goat.checkpoint import list_checkpoints, newest_intact_checkpoint, verify
from goat.checks import check_config, check_model, check_output_dir, check_same_run
from goat.config import ConfigError, record_adapter
from goat.models import load_config, load_model
from goat.run_costs import steady_step_seconds
from goat.tasks import load_task
from goat.tasks.records import HELDOUT_SEED, HELDOUT_SPLIT
from goat.tracking import MetricsLog
from goat.trainer import Trainer

logger = logging.getLogger("goat")
RESULTS = "results.json"


def prepare_run_dir(cfg, main_process: bool = True) -> tuple[Path, Path | None]:
    """(run directory, checkpoint to resume from or None); refuses to overwrite a finished run, whatever `resume`
    says, and verifies an explicit checkpoint before anything is written. Of several processes only the main one
    moves a run aside (overwrite=true); all reach the same answer."""
    run_dir = Path(cfg.output_dir)
    finished = (run_dir / RESULTS).exists()
    checkpoints = list_checkpoints(run_dir)
    if cfg.resume == "auto":
        if finished and not cfg.overwrite:
            raise ConfigError(
                f"{run_dir} already holds a finished run ({RESULTS}); nothing to resume. Choose another "
                f"output_dir=..., or overwrite=true to keep it aside as {run_dir.name}.old-* and train again"
            )
        if not checkpoints:
            return run_dir, None
        check_same_run(cfg, run_dir)
        intact = newest_intact_checkpoint(run_dir)
        if intact is None:
            raise ConfigError(
                f"none of the {len(checkpoints)} checkpoints in {run_dir / 'checkpoints'} is intact (see the warnings "
                "above): start over with overwrite=true instead of resume=auto (the directory is kept aside as .old-*)"
            )
        return run_dir, intact
    if cfg.resume != "never":
        return run_dir, explicit_checkpoint(cfg, run_dir, finished, main_process)
    if finished or checkpoints:
        if not cfg.overwrite:
            what = (
                f"a finished run ({RESULTS})"
                if finished
                else f"checkpoints of an unfinished run ({checkpoints[-1].name})"
            )
            raise ConfigError(
                f"{run_dir} already holds {what}: pass resume=auto to continue it, another "
                f"output_dir=..., or overwrite=true to keep it aside as {run_dir.name}.old-* and start over"
            )
        if main_process:
            _move_aside(run_dir)
    return run_dir, None


def explicit_checkpoint(cfg, run_dir: Path, finished: bool, main_process: bool) -> Path:
    """resume=<checkpoint>: an intact checkpoint of the same setting, resumed into a folder that holds no finished
    run (with overwrite=true a finished one is moved aside first, unless the checkpoint lies inside it)."""
    checkpoint = Path(cfg.resume)
    problem = verify(checkpoint)
    if problem is not None:
        raise ConfigError(
            f"resume={cfg.resume} is not an intact goat checkpoint ({problem}); pass a checkpoints/step-* "
            "folder of a run, or resume=auto"
        )
    check_same_run(cfg, checkpoint.parent.parent)
    if finished:
        inside = run_dir.resolve() in checkpoint.resolve().parents
        if not cfg.overwrite or inside:
            raise ConfigError(
                f"{run_dir} already holds a finished run ({RESULTS}); resume=... never writes over one. Resume into "
                "another output_dir=..."
                + ("" if inside else f", or pass overwrite=true to keep it aside as {run_dir.name}.old-*")
            )
        if main_process:
            _move_aside(run_dir)
    else:
        check_same_run(cfg, run_dir)  # an unfinished run of another setting is not continued with this one
    return checkpoint


def _move_aside(run_dir: Path) -> None:
    aside = run_dir.with_name(f"{run_dir.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
    shutil.move(str(run_dir), aside)  # never deleted: a finished result stays on disk
    logger.warning("moved the previous run to %s", aside)


def write_run_info(run_dir: Path, cfg) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    packages = {name: _version(name) for name in ("goat", "torch", "transformers", "peft", "accelerate", "datasets")}
    info = {
        "git_commit": _git_commit(),
        "argv": sys.argv,
        "packages": packages,
        "python": sys.version.split()[0],
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    (run_dir / "run_info.json").write_text(json.dumps(info, indent=1))


def precision_advice(device_type: str, mixed_precision: str) -> str | None:
    """A warning for bf16 autocast on a CPU: most CPUs have no bf16 matrix units, and autocast there is slower than
    fp32 (2 steps of MiniLM on MRPC, batch 64: 223 s in bf16, 18.8 s in fp32 on this project's 2-core machine)."""
    if device_type == "cpu" and mixed_precision == "bf16":
        return (
            "trainer.mixed_precision=bf16 on a CPU: bf16 autocast is often many times slower than fp32 there; for a "
            "CPU run add trainer=cpu (or trainer.mixed_precision=no)"
        )
    return None


def train(cfg, callbacks=()) -> dict:
    """Runs the whole job; returns the results (also written to <output_dir>/results.json)."""
    t = cfg.trainer
    launched = distributed.process_state(t.cpu)
    adapter_cfg = check_config(cfg, launched.num_processes, distributed.is_deepspeed(launched))
    check_output_dir(cfg.output_dir)
    adapter_cfg = check_model(adapter_cfg, cfg.model, load_config(cfg.model))
    record_adapter(cfg, adapter_cfg)  # derived numbers, target and head names written out before the resume check
    run_dir, resume_checkpoint = prepare_run_dir(cfg, launched.is_main_process)
    launched.wait_for_everyone()
    accelerator = distributed.make_accelerator(t, log_with="wandb" if cfg.logger.backend == "wandb" else None)
    advice = precision_advice(accelerator.device.type, t.mixed_precision)
    if advice:
        logger.warning(advice)
    set_seed(t.seed)
    task = load_task(cfg.task, t.seed)
    num_labels = getattr(task, "num_labels", None)  # None for instruction tasks (causal LMs)

    with distributed.whole_weights(accelerator):
        # random weights are drawn where they train, unless an engine shards them from the host copy
        device = None if distributed.shards_parameters(accelerator) else accelerator.device
        model, tokenizer = load_model(cfg.model, num_labels, getattr(task, "label_names", None), device)
        model = apply_adapter(model, adapter_cfg, device_type=accelerator.device.type)
    record_adapter(cfg, model.goat_adapter.config)  # config.yaml and W&B say what runs: no `auto` left
    if accelerator.is_main_process:
        write_run_info(run_dir, cfg)
    accelerator.wait_for_everyone()
    loader, evaluator, main_metric = task.pipeline(cfg, tokenizer, accelerator, run_dir)
    log = MetricsLog(run_dir, accelerator, cfg.logger, OmegaConf.to_container(cfg, resolve=True))
    trainer = Trainer(cfg, accelerator, model, loader, evaluator, main_metric, run_dir, log, callbacks)
    if resume_checkpoint is not None:
        trainer.resume_from(resume_checkpoint)
        logger.info("resumed from %s (step %d)", resume_checkpoint, trainer.state.step)
    start, first_step = time.perf_counter(), trainer.state.step
    state = trainer.fit()
    log.close()
    if trainer.stop_requested:
        logger.warning("stopped at step %d; checkpoint saved. Continue with resume=auto", state.step)
        return {"status": "interrupted", "step": state.step}
    results = _results(cfg, task, state, trainer, time.perf_counter() - start, state.step - first_step)
    with distributed.gathered(accelerator.unwrap_model(trainer.model), accelerator):  # ZeRO-3, FSDP: whole weights
        if accelerator.is_main_process:
            _save_final(accelerator.unwrap_model(trainer.model), run_dir)
    if accelerator.is_main_process:
        _atomic_write(run_dir / RESULTS, json.dumps(results, indent=1))
    return results


def _results(cfg, task, state, trainer, seconds: float, steps_run: int) -> dict:
    """results.json; train_seconds, epoch_hours and the memory peaks cover what this process ran (after a resume:
    since it). epoch_hours and peak_memory_gb are the paper's Table 7 columns: the training steps' time without
    evaluation, checkpoints or the first log window (compilation, warm-up), and the training steps' peak memory;
    memory_peaks_gb gives setup, train and evaluation apart."""
    main = trainer.main_metric
    step_s = steady_step_seconds(trainer.windows)  # None when no step ran (no log window)
    peaks = trainer.memory.gib()
    return {
        "status": "finished",
        "task": cfg.task.name,
        "method": cfg.method.method,
        "variant": cfg.variant,
        "model": cfg.model.name_or_path,
        "model_note": cfg.model.pretrained_label,
        "random_weights": cfg.model.from_config,
        "seed": cfg.trainer.seed,
        "main_metric": main,
        "heldout": _heldout(cfg.task.heldout_size),
        "final": state.history[-1] if state.history else None,
        "best": state.best,
        "majority_baseline": getattr(task, "majority_baseline", None),
        "steps": state.step,
        "train_seconds": round(seconds, 1),
        # trainer.max_steps=0 runs no step: no time per epoch to extrapolate, no training memory
        "step_seconds": None if step_s is None else round(step_s, 4),
        "epoch_hours": None if step_s is None else round(step_s * trainer.steps_per_epoch / 3600, 4),
        "peak_memory_gb": peaks["train"] if steps_run else None,
        "memory_peaks_gb": peaks,
        "trainable_parameters": sum(getattr(p, "ds_numel", p.numel()) for p in trainer.params),  # ZeRO-3: whole
        "history": state.history,
    }


def _heldout(size: int) -> dict | None:
    """What the "heldout/<metric>" scores in the evaluations were measured on (None: no rows were held out); goat-report
    chooses a swept setting on them."""
    if not size:
        return None
    return {"split": HELDOUT_SPLIT, "rows": size, "drawn_from": "train", "seed": HELDOUT_SEED}


def _save_final(model, run_dir: Path) -> None:
    """The trained adapter in goat's adapter format (goat-eval and load_adapter read it), written atomically."""
    final, partial = run_dir / "final", run_dir / "final.tmp"
    shutil.rmtree(partial, ignore_errors=True)
    save_adapter(model, partial)
    if final.exists():
        shutil.rmtree(final)
    os.replace(partial, final)


def _atomic_write(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".tmp")
    partial.write_text(text)
    os.replace(partial, path)


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    try:
        root = Path(__file__).resolve().parents[1]
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None
