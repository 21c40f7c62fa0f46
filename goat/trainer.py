"""The one training loop, shared by every task family, on Accelerate.

Gradient accumulation is counted here (not by Accelerate) so that a run stopped at any optimizer step and
resumed continues bit-for-bit: the batch order is a function of (seed, epoch), a checkpoint records the
micro-batches already consumed in the epoch, and the RNG states.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from goat import distributed
from goat.adapters import auxiliary_loss, expert_load, moe_layers, token_mask
from goat.checkpoint import TrainState, list_checkpoints, read_checkpoint, save_checkpoint
from goat.compile import compile_blocks, compile_counters, without_kv_cache
from goat.config import ConfigError, NonFiniteLossError
from goat.run_costs import PhasePeaks
from goat.schedule import make_scheduler


class Trainer:
    """Trains `model` on `train_loader`; `evaluator(model, step) -> {"<split>/<metric>": value}` scores it after
    each epoch (and every trainer.eval_every_steps), and `main_metric` names the key the best step is chosen by."""

    def __init__(
        self, cfg, accelerator, model, train_loader, evaluator, main_metric: str, run_dir: Path, log, callbacks=()
    ):
        self.cfg, self.t = cfg, cfg.trainer
        self.accelerator, self.run_dir, self.log = accelerator, Path(run_dir), log
        self.evaluator, self.main_metric = evaluator, main_metric
        self.callbacks = list(callbacks)
        self.sampler = train_loader.sampler
        params = [p for p in model.parameters() if p.requires_grad]
        self.accumulation = self.t.batch_size // (self.t.micro_batch_size * accelerator.num_processes)
        self.deepspeed = distributed.is_deepspeed(accelerator)
        # AdamW in one fused kernel where every parameter is a plain CUDA tensor (as the model benchmark steps);
        # the engines that shard or replace the parameters, and the CPU, take torch's default implementation
        sharded = self.deepspeed or distributed.is_fsdp(accelerator)
        fused = bool(params) and not sharded and all(p.is_cuda for p in params)
        optimizer = torch.optim.AdamW(params, lr=self.t.lr, weight_decay=self.t.weight_decay, fused=fused or None)
        if self.deepspeed:
            distributed.configure_deepspeed(accelerator, self.t, self.accumulation)
        if distributed.is_fsdp(accelerator):
            distributed.configure_fsdp(accelerator, model)
        self.compile_start = compile_counters()  # the counters are process-wide; the run reports its own
        self.compiled_blocks = compile_blocks(model, self.t.compile, backend=self.t.compile_backend)
        self.forward_options = without_kv_cache(model)
        # a causal LM's training batches, padded on the right only (the instruction tasks' collate says so)
        self.right_padding_only = getattr(train_loader.collate_fn, "right_padding_only", False)
        self.model, self.optimizer, self.train_loader = accelerator.prepare(model, optimizer, train_loader)
        if len(self.train_loader) == 0:  # a loop over no batch would wait for one forever
            raise ConfigError(
                f"the training loader of this process yields no batch ({len(train_loader.dataset)} examples over "
                f"{accelerator.num_processes} processes); give the task more training rows"
            )
        # the MoE layers, listed once (the wrappers keep the same layer objects): read at every step
        self.routed = list(moe_layers(accelerator.unwrap_model(self.model)))
        # FSDP2 replaces the parameters by sharded ones: clip and check those
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.steps_per_epoch = math.ceil(len(self.train_loader) / self.accumulation)
        epochs_steps = math.ceil(self.t.epochs * self.steps_per_epoch)
        self.total_steps = epochs_steps if self.t.max_steps is None else self.t.max_steps
        warmup = (
            self.t.warmup_steps if self.t.warmup_steps is not None else round(self.t.warmup_ratio * self.total_steps)
        )
        self.scheduler = make_scheduler(self.optimizer, self.t.scheduler, warmup, self.total_steps)
        self.state = TrainState(
            accelerator=accelerator,
            model=self.model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            run_dir=self.run_dir,
        )
        self.stop_requested = False
        self.skipped_steps = 0
        self.compile_logged = False
        # what the run costs (results.json): GPU memory per phase, and the log windows' (steps, seconds)
        self.memory = PhasePeaks(accelerator.device)
        self.windows: list[tuple[int, float]] = []

    # ----- public -----
    def resume_from(self, checkpoint: Path) -> None:
        self.state.load_state_dict(read_checkpoint(checkpoint))

    def fit(self) -> TrainState:
        previous = signal.signal(signal.SIGTERM, self._request_stop) if _main_thread() else None
        bar = tqdm(
            total=self.total_steps,
            initial=self.state.step,
            desc="train",
            dynamic_ncols=True,
            disable=not (self.accelerator.is_main_process and self.t.progress),
        )
        self.memory.enter("train")
        try:
            self._loop(bar)
        finally:
            self.memory.enter(None)
            bar.close()
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
        return self.state

    def save(self) -> Path:
        """Writes a checkpoint of the state (every process takes part); returns its folder (the run's elsewhere)."""
        state = self.state.state_dict()
        if state is None:  # not the main process
            return self.run_dir
        return save_checkpoint(self.run_dir, state, self.t.keep_last)

    # ----- the loop -----
    def _loop(self, bar) -> None:
        window = _Window(self.windows)
        self.model.train()
        if self.total_steps == 0:  # trainer.max_steps=0: the model as loaded, scored once
            self._evaluate(0)
        while self.state.step < self.total_steps and not self.stop_requested:
            self.sampler.use_epoch(self.state.epoch)
            batches = len(self.train_loader)
            loader = self.train_loader
            if self.state.batches_in_epoch:
                loader = self.accelerator.skip_first_batches(self.train_loader, self.state.batches_in_epoch)
            group: list = []
            for batch in loader:
                group.append(batch)
                self.state.batches_in_epoch += 1
                last_of_epoch = self.state.batches_in_epoch == batches
                if len(group) < self.accumulation and not last_of_epoch:
                    continue
                started = time.perf_counter()
                stepped = self._optimizer_step(group, window)
                if self.compiled_blocks and not self.compile_logged:  # the first step compiles the blocks
                    self.compile_logged = True
                    first = {"compile/first_step_s": round(time.perf_counter() - started, 2)}
                    self.log.log({**first, **_compile_summary(self.compile_start)}, self.state.step)
                group = []
                if last_of_epoch:
                    self.state.epoch, self.state.batches_in_epoch = self.state.epoch + 1, 0
                if stepped:
                    self._after_step(bar, window, epoch_end=last_of_epoch)
                if self.state.step >= self.total_steps or self.stop_requested:
                    break
        self.save()
        if self.stop_requested:
            self.log.log({"status": "interrupted"}, self.state.step)

    def _optimizer_step(self, group: list, window) -> bool:
        """One optimizer step over the micro-batches of `group`; False when a non-finite step was skipped."""
        records = []
        for index, batch in enumerate(group):
            sync = index == len(group) - 1
            quiet = not sync and not self.deepspeed
            context = self.accelerator.no_sync(self.model) if quiet else contextlib.nullcontext()
            with context:
                if self.t.compile == "reduce-overhead":  # a new step of the CUDA graphs: last step's outputs are free
                    torch.compiler.cudagraph_mark_step_begin()
                output = self._forward(batch)
                balance = auxiliary_loss(self.routed)
                loss = output.loss if balance is None else output.loss + balance
                if self.deepspeed:  # the engine steps at the last micro-batch, inside backward
                    distributed.backward(self.accelerator, loss / len(group), ends_step=sync)
                else:
                    self.accelerator.backward(loss / len(group))
            records.append((output.loss.detach(), balance, batch, loss.detach()))
        norm = self.accelerator.clip_grad_norm_(self.params, self.t.max_grad_norm) if self.t.max_grad_norm else None
        norm = distributed.scalar(norm)
        if not self._finite([r[3] for r in records], norm):
            self._nonfinite([r[3] for r in records], norm)  # raises unless trainer.on_nonfinite=skip
            self.optimizer.zero_grad(set_to_none=True)
            return False
        for task_loss, balance, batch, _ in records:
            window.add(task_loss, balance, batch)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.step += 1
        return True

    def _forward(self, batch: dict):
        """The model's output for one micro-batch (see forward_right_padded for a causal LM's batches)."""
        if self.right_padding_only:
            return forward_right_padded(self.model, batch, self.forward_options, self.routed)
        return self.model(**batch, **self.forward_options)

    def _finite(self, losses: list, norm) -> bool:
        """Whether every loss and the gradient norm are finite, on every process (they must agree to skip)."""
        bad = sum(int(not torch.isfinite(loss).all()) for loss in losses)
        if norm is not None and not torch.isfinite(torch.as_tensor(norm)).all():
            bad += 1
        flag = torch.tensor([float(bad)], device=self.accelerator.device)
        return float(self.accelerator.reduce(flag, reduction="sum").item()) == 0.0

    def _nonfinite(self, losses: list, norm) -> None:
        step = self.state.step + 1
        losses = [float(loss) for loss in losses]
        grad_norm = None if norm is None else float(norm)
        # the router statistics of the failing forward pass (expert load per layer), for the post-mortem
        self.log.log(
            {
                "status": "nonfinite",
                "nonfinite/losses": losses,
                "nonfinite/grad_norm": grad_norm,
                **_load_summary(self.routed),
            },
            step,
        )
        if self.t.on_nonfinite == "skip":
            self.skipped_steps += 1
            self.log.log({"train/skipped_steps": self.skipped_steps}, step)
            return
        kept = list_checkpoints(self.run_dir)
        raise NonFiniteLossError(
            f"the loss or gradient is not finite at step {step} (losses {losses}, gradient norm {grad_norm}); "
            "its router statistics are in metrics.jsonl; "
            + (
                f"the last checkpoint, {kept[-1].name}, is kept (resume=auto continues from it)"
                if kept
                else "no checkpoint was saved yet"
            )
            + ". Lower trainer.lr, prefer bf16 to fp16, or set trainer.on_nonfinite=skip to drop such steps"
        )

    def _after_step(self, bar, window, epoch_end: bool) -> None:
        step = self.state.step
        bar.update(1)
        window.count_step()
        if step % self.t.log_every_steps == 0 or step == self.total_steps:
            values = window.flush(self.accelerator, self.scheduler.get_last_lr()[0])
            values.update(_load_summary(self.routed))
            if self.compiled_blocks:  # graphs compiled so far: recompilations show up as a rising count
                values.update(_compile_summary(self.compile_start))
            self.log.log(values, step)
            bar.set_postfix(
                loss=f"{values['train/loss']:.4f}",
                lr=f"{values['train/lr']:.2e}",
                tok_s=f"{values['train/tokens_per_s']:.0f}",
            )
        with window.paused():  # evaluation, checkpoints and callbacks are not training time
            every = self.t.eval_every_steps
            if epoch_end or (every and step % every == 0) or step == self.total_steps:
                self._evaluate(step)
            if self.t.save_every_steps and step % self.t.save_every_steps == 0:
                self.save()
            for callback in self.callbacks:
                callback(self, step)

    def _evaluate(self, step: int) -> None:
        if self.state.history and self.state.history[-1]["step"] == step:
            return  # epoch end and step interval on the same step: once is enough
        self.memory.enter("evaluation")
        try:
            metrics = self.evaluator(self.model, step)
        finally:
            self.memory.enter("train")
        record = {"step": step, "epoch": self.state.epoch, **metrics}
        self.state.history.append(record)
        main = self.main_metric
        if self.state.best is None or metrics[main] > self.state.best[main]:
            self.state.best = record
        self.log.log({f"eval/{k}": v for k, v in metrics.items()}, step)
        self.model.train()

    def _request_stop(self, signum, frame) -> None:
        """SIGTERM: finish the current optimizer step, save a checkpoint, and return."""
        self.stop_requested = True


class _Window:
    """Running sums between two log lines: loss, balance loss, tokens (text) or images, optimizer steps, time.
    The sums stay on the device until the log line, so a training step never waits for the GPU to read them.
    Each flush appends its window's (steps, seconds) to `timed`."""

    def __init__(self, timed: list[tuple[int, float]]):
        self.timed = timed
        self.reset()

    def reset(self):
        self.sums, self.steps, self.start = None, 0, time.perf_counter()

    def count_step(self) -> None:
        self.steps += 1

    @contextlib.contextmanager
    def paused(self):
        """The clock stops inside: what runs there does not count as training time."""
        began = time.perf_counter()
        try:
            yield
        finally:
            self.start += time.perf_counter() - began

    def add(self, loss, balance, batch) -> None:
        if "attention_mask" in batch:
            tokens = batch["attention_mask"].sum()
        elif "input_ids" in batch:
            tokens = batch["input_ids"].numel()
        else:  # images: count examples
            tokens = len(batch["labels"])
        balance = balance.detach() if balance is not None else 0.0
        row = torch.stack([_on_device(v, loss) for v in (loss, balance, 1, tokens)])
        self.sums = row if self.sums is None else self.sums + row

    def flush(self, accelerator, lr: float) -> dict:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        # summed over processes: the logged loss is that of the global batch, as on one device
        local = self.sums if self.sums is not None else torch.zeros(4, dtype=torch.float64)
        loss, balance, batches, tokens = accelerator.reduce(local.to(accelerator.device), reduction="sum").tolist()
        values = {
            "train/loss": loss / max(batches, 1),
            "train/balance_loss": balance / max(batches, 1),
            "train/lr": lr,
            "train/tokens_per_s": tokens / elapsed,
            "train/step_s": elapsed / max(self.steps, 1),
        }
        self.timed.append((self.steps, elapsed))
        self.reset()
        return values


def forward_right_padded(model, batch: dict, options: dict, routed=None):
    """A causal LM's forward on a batch padded on the right only, without giving the attention its mask: the mask
    changes no real token's output (causal attention never looks right, and positions count from 0 either way),
    so it goes only to the MoE layers of `routed` (the unwrapped model or the list of its MoE layers; default
    `model`), whose balance loss and load count real tokens. The attention then runs its causal kernel on every
    batch: no host sync to check the mask for padding, and one compiled graph whether a batch has padding or not
    (else two: transformers passes no mask to the blocks when there is no padding)."""
    inputs = {key: value for key, value in batch.items() if key != "attention_mask"}
    with token_mask(model if routed is None else routed, batch["attention_mask"]):
        return model(**inputs, **options)


def _load_summary(routed) -> dict:
    """Per-layer expert load (fraction of routed tokens per expert) and its worst imbalance, for MoE methods;
    `routed`: the model or the list of its MoE layers. One copy to the host for all layers."""
    loads = expert_load(routed)
    if not loads:
        return {}
    host = torch.cat([load.float().reshape(-1) for load in loads.values()]).cpu()
    parts = host.split([load.numel() for load in loads.values()])
    values = {f"load/{name}": part for name, part in zip(loads, parts, strict=True)}
    values["moe/max_expert_load"] = float(host.max())
    return values


def _on_device(value, like: torch.Tensor) -> torch.Tensor:
    """A float64 scalar on `like`'s device: a tensor is converted there, a number filled in (no host copy)."""
    if isinstance(value, torch.Tensor):
        return value.detach().to(device=like.device, dtype=torch.float64)
    return like.new_full((), float(value), dtype=torch.float64)


def _compile_summary(since: dict) -> dict:
    """What the compiler did since the trainer started, as compile/* metrics."""
    return {f"compile/{key}": value for key, value in compile_counters(since).items()}


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()
