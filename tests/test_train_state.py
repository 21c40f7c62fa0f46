"""TrainState is a run's whole resumable state: state_dict() -> checkpoint on disk -> load_state_dict() into a
fresh run puts back every field, and training then continues bit-for-bit; the files on disk are the ones goat
has always written, so a checkpoint written before TrainState owned its state_dict still resumes."""

import copy
import hashlib
import json
import random
from dataclasses import fields

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import save_file
from torch import nn

from goat.checkpoint import TrainState, read_checkpoint, rng_state, save_checkpoint
from goat.schedule import make_scheduler

POSITION = [f.name for f in fields(TrainState) if f.compare]  # the loop position; the rest are the run's objects


def fresh_state(run_dir, seed: int) -> TrainState:
    """A small model as the trainer holds one: a frozen layer (the pretrained base: the same in every run, and no
    part of the state) and a trainable one drawn from `seed`, prepared by Accelerate, AdamW and the warmup +
    linear schedule."""
    accelerator = Accelerator(cpu=True)
    torch.manual_seed(0)
    base = nn.Linear(4, 8).requires_grad_(False)
    torch.manual_seed(seed)
    model = nn.Sequential(base, nn.Tanh(), nn.Linear(8, 2))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    model, optimizer = accelerator.prepare(model, optimizer)
    scheduler = make_scheduler(optimizer, "linear", 2, 20)
    return TrainState(accelerator=accelerator, model=model, optimizer=optimizer, scheduler=scheduler, run_dir=run_dir)


def train_steps(state: TrainState, steps: int) -> list[float]:
    """`steps` optimizer steps on batches drawn from the torch, Python and NumPy RNGs (so that their states matter),
    moving the loop position on as the trainer does; returns the losses."""
    losses = []
    for _ in range(steps):
        x = torch.randn(8, 4) * (1.0 + random.random()) + float(np.random.rand())
        loss = (state.model(x) - 1.0).pow(2).mean()
        loss.backward()
        state.optimizer.step()
        state.scheduler.step()
        state.optimizer.zero_grad(set_to_none=True)
        state.step += 1
        state.batches_in_epoch += 2
        if state.batches_in_epoch == 6:
            state.epoch, state.batches_in_epoch = state.epoch + 1, 0
        state.history.append({"step": state.step, "epoch": state.epoch, "loss": loss.item()})
        state.best = min(state.history, key=lambda record: record["loss"])
        losses.append(loss.item())
    return losses


def trainable_weights(state: TrainState) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in state.model.named_parameters() if p.requires_grad}


def assert_same(got, want, where: str = "state") -> None:
    """Nested dicts, lists and tuples of tensors and plain values are equal, tensors bit for bit."""
    if isinstance(want, torch.Tensor):
        assert isinstance(got, torch.Tensor) and torch.equal(got, want), where
    elif isinstance(want, dict):
        assert set(got) == set(want), where
        for key in want:
            assert_same(got[key], want[key], f"{where}[{key!r}]")
    elif isinstance(want, list | tuple):
        assert len(got) == len(want), where
        for index, (a, b) in enumerate(zip(got, want, strict=True)):
            assert_same(a, b, f"{where}[{index}]")
    else:
        assert got == want, where


def test_train_state_round_trip_restores_every_field_and_training_continues_bit_for_bit(tmp_path):
    state = fresh_state(tmp_path, seed=0)
    train_steps(state, 7)  # past warmup, into the second epoch, AdamW moments non-zero
    saved = state.state_dict()
    expected = {
        "position": {name: copy.deepcopy(getattr(state, name)) for name in POSITION},
        "weights": trainable_weights(state),
        "optimizer": copy.deepcopy(state.optimizer.state_dict()),
        "scheduler": copy.deepcopy(state.scheduler.state_dict()),
        "rng": copy.deepcopy(saved["rng"]),
    }
    path = save_checkpoint(tmp_path, saved, keep_last=1)
    straight_losses = train_steps(state, 5)
    straight_weights = trainable_weights(state)

    resumed = fresh_state(tmp_path, seed=1)  # other trainable weights: they must come from the checkpoint
    assert not torch.equal(resumed.model[2].weight, expected["weights"]["2.weight"])
    frozen = resumed.model[0].weight.detach().clone()
    for name in POSITION:
        assert getattr(resumed, name) != expected["position"][name], f"{name} would pass without being restored"
    resumed.load_state_dict(read_checkpoint(path))

    for name in POSITION:
        assert getattr(resumed, name) == expected["position"][name], name
    assert_same(trainable_weights(resumed), expected["weights"], "weights")
    assert torch.equal(resumed.model[0].weight, frozen)  # frozen weights are the model's, not the checkpoint's
    assert_same(resumed.optimizer.state_dict(), expected["optimizer"], "optimizer")
    assert_same(resumed.scheduler.state_dict(), expected["scheduler"], "scheduler")
    assert resumed.scheduler.get_last_lr() == [expected["scheduler"]["_last_lr"][0]]
    assert_same(rng_state(), expected["rng"], "rng")

    assert train_steps(resumed, 5) == straight_losses
    assert_same(trainable_weights(resumed), straight_weights, "weights")


def test_checkpoint_files_and_keys_are_the_ones_goat_has_always_written(tmp_path):
    """The on-disk layout of goat 0.1 (before TrainState.state_dict): checkpoints written by it still resume."""
    state = fresh_state(tmp_path, seed=0)
    train_steps(state, 3)
    path = save_checkpoint(tmp_path, state.state_dict(), keep_last=1)
    assert path == tmp_path / "checkpoints" / "step-00000003"
    files = sorted(p.name for p in path.iterdir())
    assert files == ["manifest.json", "position.json", "rng.json", "state.pt", "trainable.safetensors"]
    tensors = torch.load(path / "state.pt", weights_only=True)
    assert list(tensors) == ["scheduler", "rng", "optimizer"]
    assert set(tensors["rng"]) == ({"torch", "cuda"} if torch.cuda.is_available() else {"torch"})
    assert list(json.loads((path / "rng.json").read_text())) == ["python", "numpy"]
    assert list(json.loads((path / "position.json").read_text())) == POSITION
    assert set(json.loads((path / "manifest.json").read_text())) == set(files) - {"manifest.json"}


def write_old_checkpoint(path, state: TrainState) -> None:
    """A checkpoint as goat 0.1's save_checkpoint wrote it, written here without goat.checkpoint's writer."""
    path.mkdir(parents=True)
    trainable = {n: p.detach().contiguous() for n, p in state.model.named_parameters() if p.requires_grad}
    save_file(trainable, str(path / "trainable.safetensors"))
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    rng_tensors = {"torch": torch.get_rng_state()}
    state_pt = {
        "scheduler": state.scheduler.state_dict(),
        "rng": rng_tensors,
        "optimizer": state.optimizer.state_dict(),
    }
    torch.save(state_pt, path / "state.pt")
    plain = {"python": [version, list(internal), gauss], "numpy": [name, keys.tolist(), pos, has_gauss, cached]}
    (path / "rng.json").write_text(json.dumps(plain))
    position = {"step": state.step, "epoch": state.epoch, "batches_in_epoch": state.batches_in_epoch}
    (path / "position.json").write_text(json.dumps({**position, "history": state.history, "best": state.best}))
    manifest = {
        file.name: {"bytes": file.stat().st_size, "sha256": hashlib.sha256(file.read_bytes()).hexdigest()}
        for file in sorted(path.iterdir())
    }
    (path / "manifest.json").write_text(json.dumps(manifest))


def test_a_checkpoint_in_the_old_layout_resumes_bit_for_bit(tmp_path):
    state = fresh_state(tmp_path, seed=0)
    train_steps(state, 4)
    old = tmp_path / "old" / "step-00000004"
    write_old_checkpoint(old, state)
    straight = train_steps(state, 4)

    resumed = fresh_state(tmp_path, seed=1)
    resumed.load_state_dict(read_checkpoint(old))
    assert (resumed.step, resumed.epoch, resumed.batches_in_epoch) == (4, 1, 2)
    assert train_steps(resumed, 4) == straight
    assert_same(trainable_weights(resumed), trainable_weights(state), "weights")


def test_loading_into_another_model_or_engine_fails_with_the_first_mismatch(tmp_path):
    state = fresh_state(tmp_path, seed=0)
    train_steps(state, 1)
    saved = state.state_dict()
    other_method = fresh_state(tmp_path, seed=0)
    other_method.model[0].requires_grad_(True)  # trains a layer the checkpoint has no tensors for
    with pytest.raises(ValueError, match=r"does not match this model's trainable parameters .*first mismatch '0.bias'"):
        other_method.load_state_dict(saved)
    without_optimizer = {key: value for key, value in saved.items() if key != "optimizer"}
    with pytest.raises(ValueError, match="written under DeepSpeed"):
        fresh_state(tmp_path, seed=0).load_state_dict(without_optimizer)
