"""A real training process killed with SIGKILL at a random step, or stopped with SIGTERM, then relaunched
with resume=auto: at most one checkpoint interval is lost and the final adapter equals an uninterrupted run."""

import json
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import tiny_run_overrides
from safetensors.torch import load_file

from goat import checkpoint
from goat.cli import compose
from goat.train import train

SAVE_EVERY = 5
STEPS = 120
COMMON = [f"trainer.max_steps={STEPS}", f"trainer.save_every_steps={SAVE_EVERY}", "trainer.log_every_steps=1"]
COMMON += ["trainer.keep_last=2", "trainer.micro_batch_size=16", "method.lora_dropout=0.1"]


def logged_steps(out):
    path = out / "metrics.jsonl"
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    return [json.loads(line)["step"] for line in lines if line.endswith("}") and '"train/loss"' in line]


def test_a_line_cut_by_a_kill_is_dropped_before_appending(tmp_path):
    from goat.tracking import drop_partial_last_line

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "train/loss": 0.5}\n{"step": 2, "train/lo')
    drop_partial_last_line(path)
    assert path.read_text() == '{"step": 1, "train/loss": 0.5}\n'
    drop_partial_last_line(path)  # a complete file is left alone
    assert path.read_text() == '{"step": 1, "train/loss": 0.5}\n'


def start(args, log):
    """goat-train in its own process; its output goes to a file (a pipe that nobody reads could block it)."""
    with open(log, "ab") as handle:  # the child keeps its own copy of the descriptor
        return subprocess.Popen([sys.executable, "-m", "goat.cli", *args], stdout=handle, stderr=subprocess.STDOUT)


def tail(log):
    return log.read_text(errors="replace")[-2000:]


def wait_for_step(process, out, step, log, stall=600):
    """Waits while the run makes progress: it fails only if the run ends first or logs no new step for `stall`
    seconds (a hang), never because a loaded machine trains slowly."""
    last, progress_at = None, time.monotonic()
    while time.monotonic() - progress_at < stall:
        steps = logged_steps(out)
        if steps and steps[-1] >= step:
            return
        if steps and steps[-1] != last:
            last, progress_at = steps[-1], time.monotonic()
        if process.poll() is not None:
            pytest.fail(f"training ended before step {step}: {tail(log)}")
        time.sleep(0.005)
    pytest.fail(f"no new step in {stall} s (last step {last}), step {step} not reached: {tail(log)}")


@pytest.fixture(scope="module")
def straight_adapter(tiny_model_dir, keyword_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight") / "run"
    assert train(compose(tiny_run_overrides(tiny_model_dir, keyword_data, out, *COMMON)))["status"] == "finished"
    return load_file(str(out / "final" / "adapter_model.safetensors"))


def assert_same_adapter(out, want):
    got = load_file(str(out / "final" / "adapter_model.safetensors"))
    assert want.keys() == got.keys()
    for name in want:
        assert torch.equal(want[name], got[name]), name


def test_sigkill_at_a_random_step_loses_at_most_one_interval(tiny_model_dir, keyword_data, tmp_path, straight_adapter):
    out = tmp_path / "run"
    args = tiny_run_overrides(tiny_model_dir, keyword_data, out, *COMMON)
    kill_at = random.Random(1234).randrange(12, STEPS - 20)
    log = tmp_path / "train.log"
    process = start(args, log)
    wait_for_step(process, out, kill_at, log)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    reached = logged_steps(out)[-1]
    saved = int(checkpoint.list_checkpoints(out)[-1].name.split("-")[1])
    assert reached - saved <= SAVE_EVERY, (reached, saved)
    assert not (out / "results.json").exists()

    before = len(logged_steps(out))
    relaunched = start([*args, "resume=auto"], log)
    assert relaunched.wait(timeout=1200) == 0, tail(log)  # a hang bound, not a speed requirement
    assert logged_steps(out)[before] == saved + 1  # continued from the checkpoint, not from step 1
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "finished" and results["steps"] == STEPS
    assert_same_adapter(out, straight_adapter)


def test_sigterm_saves_exits_zero_and_resumes(tiny_model_dir, keyword_data, tmp_path, straight_adapter):
    out = tmp_path / "run"
    args = tiny_run_overrides(tiny_model_dir, keyword_data, out, *COMMON)
    log = tmp_path / "train.log"
    process = start(args, log)
    wait_for_step(process, out, 17, log)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=600) == 0  # a clean stop, not a crash (one step and a checkpoint: a hang bound)
    stopped = logged_steps(out)[-1]
    assert int(checkpoint.list_checkpoints(out)[-1].name.split("-")[1]) == stopped  # nothing lost
    before = len(logged_steps(out))
    relaunched = start([*args, "resume=auto"], log)
    assert relaunched.wait(timeout=1200) == 0, tail(log)  # a hang bound, not a speed requirement
    assert logged_steps(out)[before] == stopped + 1
    assert_same_adapter(out, straight_adapter)
