"""Where a run's numbers go: always `metrics.jsonl` in the run directory, and W&B (offline by default)."""

from __future__ import annotations

import json
import os
from pathlib import Path

LOGGER_BACKENDS = ("wandb", "none")  # logger.backend


class MetricsLog:
    """Appends one JSON object per logged step to metrics.jsonl and forwards it to the Accelerate trackers."""

    def __init__(self, run_dir: Path, accelerator, logger_cfg, config: dict):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.accelerator = accelerator
        if accelerator.is_main_process:
            drop_partial_last_line(self.path)
        self.trackers = logger_cfg.backend != "none"
        if logger_cfg.backend not in LOGGER_BACKENDS:
            raise ValueError(f"logger.backend={logger_cfg.backend!r} is unknown; valid: {', '.join(LOGGER_BACKENDS)}")
        if self.trackers:
            os.environ.setdefault("WANDB_MODE", logger_cfg.mode)
            os.environ.setdefault("WANDB_SILENT", "true")
            init = {
                "wandb": {
                    "dir": str(run_dir),
                    "name": logger_cfg.run_name or str(config.get("output_dir")),
                    "mode": logger_cfg.mode,
                }
            }
            accelerator.init_trackers(logger_cfg.project, config=config, init_kwargs=init)

    def log(self, values: dict, step: int) -> None:
        if not self.accelerator.is_main_process:
            return
        record = {"step": step, **{k: _plain(v) for k, v in values.items()}}
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.trackers:
            self.accelerator.log({k: v for k, v in record.items() if isinstance(v, (int, float))}, step=step)

    def close(self) -> None:
        if self.trackers:
            self.accelerator.end_training()


def _plain(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


def drop_partial_last_line(path: Path) -> None:
    """A process killed mid-write leaves a line without its newline; cut it so that appending stays valid JSONL."""
    if not path.exists() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if data.endswith(b"\n"):
        return
    with open(path, "r+b") as handle:
        handle.truncate(data.rfind(b"\n") + 1)
