"""Checkpoint integrity: verified on write, checked on resume (a broken newest one falls back to the previous),
pruning never removes the last good one, and a failed write (disk full) leaves the previous one untouched."""

import errno
import os
import signal

import pytest
import torch
from conftest import tiny_run_overrides
from safetensors.torch import load_file

from goat import checkpoint
from goat.cli import compose
from goat.config import ConfigError
from goat.train import train

COMMON = ["trainer.max_steps=12", "trainer.save_every_steps=4", "trainer.keep_last=3"]


def run(model_dir, data, out, *extra, callbacks=()):
    return train(compose(tiny_run_overrides(model_dir, data, out, *COMMON, *extra)), callbacks=callbacks)


def stop_at(step_to_stop):
    def callback(trainer, step):
        if step == step_to_stop:
            os.kill(os.getpid(), signal.SIGTERM)

    return callback


def final_adapter(out):
    return load_file(str(out / "final" / "adapter_model.safetensors"))


def test_truncated_newest_checkpoint_is_skipped_and_the_previous_one_resumes_exactly(
    tiny_model_dir, keyword_data, tmp_path, caplog
):
    straight = tmp_path / "straight"
    assert run(tiny_model_dir, keyword_data, straight)["status"] == "finished"
    out = tmp_path / "broken"
    assert run(tiny_model_dir, keyword_data, out, callbacks=[stop_at(10)])["status"] == "interrupted"
    names = [p.name for p in checkpoint.list_checkpoints(out)]
    assert names == ["step-00000004", "step-00000008", "step-00000010"]
    assert all(checkpoint.verify(p) is None for p in checkpoint.list_checkpoints(out))
    newest = out / "checkpoints" / "step-00000010" / "trainable.safetensors"
    newest.write_bytes(newest.read_bytes()[:100])  # a crash of the disk, not of goat
    assert "truncated" in checkpoint.verify(newest.parent)

    results = run(tiny_model_dir, keyword_data, out, "resume=auto")
    assert results["status"] == "finished" and results["steps"] == 12
    assert "skipping checkpoint" in caplog.text and "step-00000010" in caplog.text
    want, got = final_adapter(straight), final_adapter(out)
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)


def test_corrupted_bytes_and_no_intact_checkpoint_fail_clearly(tiny_model_dir, keyword_data, tmp_path):
    out = tmp_path / "run"
    run(tiny_model_dir, keyword_data, out, callbacks=[stop_at(5)])
    for path in checkpoint.list_checkpoints(out):
        state = path / "state.pt"
        data = bytearray(state.read_bytes())
        data[len(data) // 2] ^= 0xFF  # same size, one flipped byte
        state.write_bytes(bytes(data))
        assert "checksum" in checkpoint.verify(path)
    with pytest.raises(ConfigError, match="none of the 2 checkpoints .* is intact.*overwrite=true"):
        run(tiny_model_dir, keyword_data, out, "resume=auto")
    config = (out / "config.yaml").read_bytes()
    with pytest.raises(ConfigError, match="is not an intact goat checkpoint .*checksum"):  # before anything is written
        run(tiny_model_dir, keyword_data, out, f"resume={checkpoint.list_checkpoints(out)[0]}")
    assert (out / "config.yaml").read_bytes() == config


def test_disk_full_while_saving_keeps_the_previous_checkpoint(tiny_model_dir, keyword_data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    real_save = checkpoint.save_file
    calls = {"n": 0}

    def fills_the_disk_on_the_second_save(tensors, filename):
        calls["n"] += 1
        if calls["n"] == 2:
            with open(filename, "wb") as handle:
                handle.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(tensors, filename)

    monkeypatch.setattr(checkpoint, "save_file", fills_the_disk_on_the_second_save)
    with pytest.raises(checkpoint.CheckpointError, match="step 8 .*No space left.*step-00000004, is untouched"):
        run(tiny_model_dir, keyword_data, out, "trainer.keep_last=1")
    kept = checkpoint.list_checkpoints(out)
    assert [p.name for p in kept] == ["step-00000004"] and checkpoint.verify(kept[0]) is None
    assert not list((out / "checkpoints").glob("*.tmp"))  # the half-written one is gone
    monkeypatch.setattr(checkpoint, "save_file", real_save)
    assert run(tiny_model_dir, keyword_data, out, "trainer.keep_last=1", "resume=auto")["steps"] == 12
    assert [p.name for p in checkpoint.list_checkpoints(out)] == ["step-00000012"]  # keep_last=1 after a good save


def test_optimizer_state_loads_without_pickle(tiny_model_dir, keyword_data, tmp_path):
    out = tmp_path / "run"
    run(tiny_model_dir, keyword_data, out, "trainer.max_steps=4")
    state = torch.load(checkpoint.list_checkpoints(out)[-1] / "state.pt", weights_only=True)
    assert set(state) == {"optimizer", "scheduler", "rng"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("method=lora", r"method.method: 'goat' -> 'lora'"),
        ("method.num_experts=4", r"method.num_experts: 8 -> 4"),
        ("task.name=other", r"task.name: 'text_files' -> 'other'"),
    ],
)
def test_resume_with_another_method_or_task_fails_before_loading(
    tiny_model_dir, keyword_data, tmp_path, change, message
):
    out = tmp_path / "run"
    run(tiny_model_dir, keyword_data, out, callbacks=[stop_at(5)])
    with pytest.raises(ConfigError, match=f"cannot resume .*{message}"):
        run(tiny_model_dir, keyword_data, out, "resume=auto", change)
    with pytest.raises(ConfigError, match="cannot resume"):
        run(
            tiny_model_dir,
            keyword_data,
            tmp_path / "elsewhere",
            f"resume={checkpoint.list_checkpoints(out)[-1]}",
            change,
        )
