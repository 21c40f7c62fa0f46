"""What a run costs: GPU memory peaks per phase (the allocator faked, no GPU here) and the steady step time."""

import pytest
import torch

from goat.run_costs import PhasePeaks, steady_step_seconds


class FakeAllocator:
    """torch.cuda's peak counter: allocate() raises the peak, reset() brings it down to what is held now."""

    def __init__(self):
        self.held, self.peak, self.resets = 0, 0, 0

    def allocate(self, nbytes, keep=False):
        self.peak = max(self.peak, self.held + nbytes)
        if keep:
            self.held += nbytes

    def max_memory_allocated(self, device=None):
        return self.peak

    def reset_peak_memory_stats(self, device=None):
        self.peak, self.resets = self.held, self.resets + 1


def test_each_phase_keeps_its_own_peak_across_alternations(monkeypatch):
    fake = FakeAllocator()
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", fake.max_memory_allocated)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", fake.reset_peak_memory_stats)
    peaks = PhasePeaks(torch.device("cuda", 0))
    gib = 2**30
    fake.allocate(40 * gib)  # an SVD initialisation's workspace, freed
    fake.allocate(13 * gib, keep=True)  # the model
    peaks.enter("train")
    fake.allocate(10 * gib)  # a step's activations
    peaks.enter("evaluation")
    fake.allocate(30 * gib)  # generation at batch 64
    peaks.enter("train")
    fake.allocate(12 * gib)  # a longer batch
    peaks.enter("evaluation")
    fake.allocate(5 * gib)
    peaks.enter(None)
    assert peaks.gib() == {"setup": 40.0, "train": 25.0, "evaluation": 43.0}
    assert fake.resets == 5


def test_without_cuda_every_peak_is_none_and_phases_are_checked():
    peaks = PhasePeaks(torch.device("cpu"))
    peaks.enter("train")
    peaks.enter(None)
    assert peaks.gib() == {"setup": None, "train": None, "evaluation": None}
    with pytest.raises(ValueError, match="phase must be one of"):
        PhasePeaks(torch.device("cpu")).enter("warmup")


def test_steady_step_time_leaves_out_the_first_window_when_others_follow():
    # the first window holds a 17 s compilation; then 5 steps of 0.137 s and a last window of 3 steps of 0.14 s
    assert steady_step_seconds([(5, 17.0 + 4 * 0.14), (5, 5 * 0.137), (3, 3 * 0.14)]) == pytest.approx(
        (5 * 0.137 + 3 * 0.14) / 8
    )
    assert steady_step_seconds([(4, 2.0)]) == pytest.approx(0.5)  # one window: all there is
    assert steady_step_seconds([]) is None
