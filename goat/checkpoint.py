"""Training checkpoints: the run's state (TrainState), written atomically, the last k kept, the newest found again
for resume=auto.

A checkpoint is a directory `checkpoints/step-00000123/` holding what TrainState.state_dict() gives: the
trainable tensors (safetensors), the optimizer and scheduler states (state.pt, read back with
weights_only=True), the RNG states and the loop position (JSON), and last a manifest of every file's size and
sha256. It is written under a temporary name, fsynced, checked against its manifest and only then renamed, so
a crash or a full disk mid-write never leaves a checkpoint that looks finished, and old checkpoints are pruned
only after the new one is intact. On resume a checkpoint whose files no longer match its manifest
(truncated, corrupted) is reported and the previous intact one is used. What differs between engines (DDP,
ZeRO, FSDP) is in goat/distributed.py.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from goat.config import CheckpointError
from goat.distributed import restore_weights_and_optimizer, saved_weights_and_optimizer

STEP_DIR = re.compile(r"step-(\d{8})")
TMP_SUFFIX = ".tmp"
MANIFEST = "manifest.json"
ENGINE_DIR = "engine"  # DeepSpeed: every process's part of the optimizer state
RNG_JSON = ("python", "numpy")  # the RNG states kept in rng.json; the tensor ones (torch, cuda) go in state.pt

logger = logging.getLogger(__name__)


@dataclass(kw_only=True)
class TrainState:
    """Everything a resumed run needs, as one object: the loop position (the fields from `step` on, written to
    position.json) and, through the objects it is given (as accelerator.prepare() returned them), the trainable
    weights, the optimizer and scheduler states and the RNG states.

    state_dict() -> {"position", "trainable", "optimizer" (or "engine_dir" under DeepSpeed), "scheduler", "rng"}
    is collective: every process calls it, the main process gets the contents, the others None.
    load_state_dict() puts such contents back on every process."""

    accelerator: Any = field(repr=False, compare=False)
    model: Any = field(repr=False, compare=False)
    optimizer: Any = field(repr=False, compare=False)
    scheduler: Any = field(repr=False, compare=False)
    run_dir: Path = field(repr=False, compare=False)  # where DeepSpeed stages its parts before the save
    step: int = 0  # optimizer steps done
    epoch: int = 0
    batches_in_epoch: int = 0  # micro-batches of this epoch already trained on
    history: list = field(default_factory=list)  # one entry per evaluation
    best: dict | None = None

    def state_dict(self) -> dict | None:
        engine_dir = engine_staging_dir(self.run_dir, self.step)
        saved = saved_weights_and_optimizer(self.accelerator, self.model, self.optimizer, engine_dir)
        if saved is None:
            return None
        position = {
            "step": self.step,
            "epoch": self.epoch,
            "batches_in_epoch": self.batches_in_epoch,
            "history": self.history,
            "best": self.best,
        }
        return {"position": position, **saved, "scheduler": self.scheduler.state_dict(), "rng": rng_state()}

    def load_state_dict(self, state: dict) -> None:
        restore_weights_and_optimizer(self.accelerator, self.model, self.optimizer, state)
        self.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        position = state["position"]
        self.step, self.epoch = position["step"], position["epoch"]
        self.batches_in_epoch = position["batches_in_epoch"]
        self.history, self.best = position.get("history", []), position.get("best")


def engine_staging_dir(run_dir: Path, step: int) -> Path:
    """Where the processes write their DeepSpeed parts before the main process seals the checkpoint."""
    return Path(run_dir) / "checkpoints" / f"step-{step:08d}.engine"


def rng_state() -> dict:
    """The Python, NumPy, torch (and CUDA) RNG states; the first two as plain lists, so that nothing needs pickle."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version, list(internal), gauss], "numpy": [name, keys.tolist(), pos, has_gauss, cached]}
    state["torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir: Path, state: dict, keep_last: int) -> Path:
    """Writes TrainState.state_dict()'s `state` to checkpoints/step-<step>/ atomically and verified, then deletes
    all but the newest `keep_last`.

    Files: trainable.safetensors, state.pt (scheduler, torch RNG, optimizer), rng.json, position.json, and
    engine/ (under DeepSpeed the processes' parts of the optimizer state, moved from state["engine_dir"])."""
    step = state["position"]["step"]
    engine_dir = state.get("engine_dir")
    root = Path(run_dir) / "checkpoints"
    final = root / f"step-{step:08d}"
    partial = final.with_name(final.name + TMP_SUFFIX)
    leftovers = [*root.glob(f"step-*{TMP_SUFFIX}"), *root.glob("step-*.engine")]  # a process killed mid-save
    for stale in leftovers:
        if engine_dir is None or stale != Path(engine_dir):
            shutil.rmtree(stale, ignore_errors=True)
    try:
        partial.mkdir(parents=True)
        save_file(state["trainable"], str(partial / "trainable.safetensors"))
        rng_tensors = {key: value for key, value in state["rng"].items() if key not in RNG_JSON}
        tensors = {"scheduler": state["scheduler"], "rng": rng_tensors}
        if engine_dir is None:
            tensors["optimizer"] = state["optimizer"]
        else:
            os.replace(engine_dir, partial / ENGINE_DIR)
        torch.save(tensors, partial / "state.pt")
        (partial / "rng.json").write_text(json.dumps({key: state["rng"][key] for key in RNG_JSON}))
        (partial / "position.json").write_text(json.dumps(state["position"], indent=1))
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


def read_checkpoint(path: Path) -> dict:
    """The contents of an intact checkpoint, as TrainState.state_dict() gave them (for load_state_dict)."""
    path = Path(path)
    if not (path / "position.json").exists():
        raise FileNotFoundError(f"{path} is not a goat checkpoint (no position.json); pass a checkpoints/step-* dir")
    problem = verify(path)
    if problem:
        raise CheckpointError(f"checkpoint {path} is not intact: {problem}; resume from an earlier one")
    tensors = torch.load(path / "state.pt", weights_only=True)
    state = {
        "position": json.loads((path / "position.json").read_text()),
        "trainable": load_file(str(path / "trainable.safetensors")),
        "scheduler": tensors["scheduler"],
        "rng": {**tensors["rng"], **json.loads((path / "rng.json").read_text())},
    }
    if "optimizer" in tensors:
        state["optimizer"] = tensors["optimizer"]
    if (path / ENGINE_DIR).is_dir():
        state["engine_dir"] = path / ENGINE_DIR
    return state


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
