"""What a run costs, measured so that it extrapolates: peak GPU memory per phase, and seconds per training step.

The paper's Table 7 gives a method's training memory and hours per epoch. A short run's wall clock and whole-run
memory peak say little about either: its first steps compile and warm up, and evaluation (generation at batch 64,
a KV cache) can need more memory than a training step. So goat-train reports each apart.
"""

from __future__ import annotations

import torch

PHASES = ("setup", "train", "evaluation")


class PhasePeaks:
    """The most GPU memory allocated in each phase of a run: setup (model loading, adapter initialisation),
    train (optimizer steps, checkpoints) and evaluation. `enter(phase)` closes the current phase (reads the
    allocator's peak, then resets it) and opens `phase`; a phase entered again keeps its largest peak. On a run
    without CUDA every peak stays None."""

    def __init__(self, device: torch.device):
        self.enabled = device.type == "cuda"
        self.device = device
        self.phase = "setup"
        self.peaks: dict[str, int | None] = dict.fromkeys(PHASES)

    def enter(self, phase: str | None) -> None:
        """Closes the current phase and opens `phase` (None: the run is over)."""
        if phase is not None and phase not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
        if self.enabled and self.phase is not None:
            peak = torch.cuda.max_memory_allocated(self.device)
            self.peaks[self.phase] = max(self.peaks[self.phase] or 0, peak)
            torch.cuda.reset_peak_memory_stats(self.device)
        self.phase = phase

    def gib(self) -> dict[str, float | None]:
        """The peaks in GiB (2**30 bytes), rounded to 0.01; None for a phase not measured."""
        return {name: None if peak is None else round(peak / 2**30, 2) for name, peak in self.peaks.items()}


def steady_step_seconds(windows: list[tuple[int, float]]) -> float | None:
    """Seconds per optimizer step over the log windows `(steps, seconds)`, the first left out when others follow:
    it holds compilation, CUDA-graph recording and the warm-up. None when no step was timed."""
    counted = windows[1:] if len(windows) > 1 else windows
    steps = sum(steps for steps, _ in counted)
    return sum(seconds for _, seconds in counted) / steps if steps else None
