"""Training checkpoints: written atomically, the last k kept, the newest found again for resume=auto.

A checkpoint is a directory `checkpoints/step-00000123/` holding the trainable tensors (safetensors), the
optimizer and scheduler states (state.pt, read back with weights_only=True), the RNG states and the loop
position (JSON), and last a manifest of every file's size and sha256. It is written under a temporary name,
fsynced, checked against its manifest and only then renamed, so a crash or a full disk mid-write never leaves
a checkpoint that looks finished, and old checkpoints are pruned only after the new one is intact.
On resume a checkpoint whose files no longer match its manifest (truncated, corrupted) is reported and the
previous intact one is used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from goat.distributed import assign

STEP_DIR = re.compile(r"step-(\d{8})")
TMP_SUFFIX = ".tmp"
MANIFEST = "manifest.json"
ENGINE_DIR, ENGINE_TAG = "engine", "zero"  # DeepSpeed: every process's part of the optimizer state


def engine_staging_dir(run_dir: Path, step: int) -> Path:
    """Where the processes write their DeepSpeed parts before the main process seals the checkpoint."""
    return Path(run_dir) / "checkpoints" / f"step-{step:08d}.engine"


logger = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be written or is not intact."""


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().cpu().contiguous() for name, p in model.named_parameters() if p.requires_grad}


def rng_state() -> tuple[dict, dict]:
    """(tensor states for state.pt, Python and NumPy states as JSON), so that nothing needs pickle to load."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    plain = {"python": [version, list(internal), gauss], "numpy": [name, keys.tolist(), pos, has_gauss, cached]}
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors["cuda"] = torch.cuda.get_rng_state_all()
    return tensors, plain


def set_rng_state(tensors: dict, plain: dict) -> None:
    version, internal, gauss = plain["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = plain["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["torch"])
    if "cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(tensors["cuda"])


def save_checkpoint(
    root: Path,
    step: int,
    model,
    optimizer,
    scheduler,
    position: dict,
    keep_last: int,
    engine_dir: Path | None = None,
    trainable: dict | None = None,
    optimizer_state: dict | None = None,
) -> Path:
    """Writes checkpoints/step-<step>/ atomically and verified, then deletes all but the newest `keep_last`.

    Under DeepSpeed the optimizer state is partitioned over the processes: each one has written its part into
    `engine_dir` (engine.save_checkpoint), which moves into the checkpoint as engine/ and is covered by the
    manifest; `trainable` is then the gathered trainable state (ZeRO-3 and FSDP shard the parameters), and
    `optimizer_state` the optimizer state gathered whole (FSDP)."""
    root = Path(root) / "checkpoints"
    final = root / f"step-{step:08d}"
    partial = final.with_name(final.name + TMP_SUFFIX)
    leftovers = [*root.glob(f"step-*{TMP_SUFFIX}"), *root.glob("step-*.engine")]  # a process killed mid-save
    for stale in leftovers:
        if engine_dir is None or stale != Path(engine_dir):
            shutil.rmtree(stale, ignore_errors=True)
    try:
        partial.mkdir(parents=True)
        trainable = trainable if trainable is not None else trainable_state(model)
        save_file(trainable, str(partial / "trainable.safetensors"))
        rng_tensors, rng_plain = rng_state()
        state = {"scheduler": scheduler.state_dict(), "rng": rng_tensors}
        if engine_dir is None:
            state["optimizer"] = optimizer_state if optimizer_state is not None else optimizer.state_dict()
        else:
            os.replace(engine_dir, partial / ENGINE_DIR)
        torch.save(state, partial / "state.pt")
        (partial / "rng.json").write_text(json.dumps(rng_plain))
        (partial / "position.json").write_text(json.dumps({"step": step, **position}, indent=1))
        _write_manifest(partial)
        _fsync_dir(partial)
        problem = verify(partial)
        if problem:
            raise CheckpointError(f"the checkpoint just written does not read back: {problem}")
    except (OSError, CheckpointError) as error:
        shutil.rmtree(partial, ignore_errors=True)
        kept = list_checkpoints(root.parent)
        raise CheckpointError(
            f"could not save the step {step} checkpoint in {root} ({type(error).__name__}: {error}); free disk "
            "space (or fix the directory's permissions) and resume with resume=auto: "
            + (f"the previous checkpoint, {kept[-1].name}, is untouched" if kept else "there is no earlier checkpoint")
        ) from error
    if final.exists():
        shutil.rmtree(final)
    os.replace(partial, final)
    _fsync_path(root)
    for old in list_checkpoints(root.parent)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def verify(path: Path) -> str | None:
    """None if the checkpoint's files match its manifest, else what is wrong (one line)."""
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.exists():
        return f"{path.name} has no {MANIFEST} (written before goat 0.1 checked checkpoints, or cut short)"
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as error:
        return f"{path.name}/{MANIFEST} is unreadable ({error})"
    for name, expected in manifest.items():
        file = path / name
        if not file.exists():
            return f"{path.name}/{name} is missing"
        size = file.stat().st_size
        if size != expected["bytes"]:
            return f"{path.name}/{name} has {size} bytes, {expected['bytes']} were written (truncated?)"
        if _sha256(file) != expected["sha256"]:
            return f"{path.name}/{name} does not match its checksum (corrupted)"
    return None


def newest_intact_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint that passes verify(); each newer broken one is reported and skipped."""
    for checkpoint in reversed(list_checkpoints(run_dir)):
        problem = verify(checkpoint)
        if problem is None:
            return checkpoint
        logger.warning("skipping checkpoint %s: %s; trying the previous one", checkpoint, problem)
    return None


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete step checkpoints of a run directory, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and STEP_DIR.fullmatch(p.name)]
    return sorted(found, key=lambda p: int(STEP_DIR.fullmatch(p.name).group(1)))


def load_checkpoint(path: Path, model, optimizer, scheduler, engine=None, restore_optimizer=None) -> dict:
    """Restores a checkpoint into model/optimizer/scheduler and the RNGs; returns the loop position. Under
    DeepSpeed, `engine` restores the trainable weights and this process's part of the optimizer state;
    `restore_optimizer(state)` replaces optimizer.load_state_dict (FSDP shards the saved whole state)."""
    path = Path(path)
    if not (path / "position.json").exists():
        raise FileNotFoundError(f"{path} is not a goat checkpoint (no position.json); pass a checkpoints/step-* dir")
    problem = verify(path)
    if problem:
        raise CheckpointError(f"checkpoint {path} is not intact: {problem}; resume from an earlier one")
    tensors = load_file(str(path / "trainable.safetensors"))
    if engine is not None:
        engine.load_checkpoint(
            str(path / ENGINE_DIR), tag=ENGINE_TAG, load_module_strict=False, load_lr_scheduler_states=False
        )
        tensors = {}  # the engine restored them, partitioned as it keeps them
    params = dict(model.named_parameters())
    missing = [name for name, p in params.items() if p.requires_grad and name not in tensors and engine is None]
    if missing or any(name not in params for name in tensors):
        raise ValueError(
            f"checkpoint {path} does not match this model's trainable parameters (method or model "
            f"changed?): first mismatch {(missing or list(set(tensors) - set(params)))[0]!r}"
        )
    for name, value in tensors.items():
        assign(params[name], value)
    state = torch.load(path / "state.pt", weights_only=True)
    if "optimizer" in state:
        (restore_optimizer or optimizer.load_state_dict)(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"], json.loads((path / "rng.json").read_text()))
    return json.loads((path / "position.json").read_text())


def _sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_manifest(directory: Path) -> None:
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST)
    manifest = {str(p.relative_to(directory)): {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in files}
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=1))


def _fsync_dir(directory: Path) -> None:
    for item in directory.rglob("*"):
        if item.is_file():
            with open(item, "rb") as handle:
                os.fsync(handle.fileno())
        else:
            _fsync_path(item)
    _fsync_path(directory)


def _fsync_path(directory: Path) -> None:
    """fsync a directory itself, so that a rename inside it survives a power loss (where the OS allows)."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
