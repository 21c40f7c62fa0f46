"""Where a goat-train step spends its time: the run as goat-train makes it, a few steps under torch.profiler.

    python scripts/profile_train.py --out DIR --skip 3 --steps 2 -- task=math/gsm8k method=goat ...

The overrides after `--` are goat-train's (composed and checked the same way). The first --skip optimizer steps run
untimed (compilation, CUDA-graph recording); then every step's wall time is taken with the device synchronised,
and --steps steps run under the profiler; then the trainer's model and optimizer take a few steps the model
benchmark's way and the trainer's (compare_stages). Writes DIR/profile.txt (the operators and kernels by self
time, on the host and on the device, and the CUDA runtime calls that show re-recording or allocator churn: graph
captures and instantiations, cudaMalloc/cudaFree) and DIR/steps.json (per-step seconds, stages, memory).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

RUNTIME_CALLS = (
    "cudaGraphLaunch",
    "cudaGraphInstantiate",
    "cudaStreamBeginCapture",
    "cudaMalloc",
    "cudaFree",
    "cudaMemcpyAsync",
    "cudaStreamSynchronize",
    "cudaDeviceSynchronize",
    "cudaLaunchKernel",
)


class StepProfiler:
    """A trainer callback: synchronised wall time of every step; the profiler over steps skip+1 .. skip+steps."""

    def __init__(self, out: Path, skip: int, steps: int):
        import torch

        self.torch, self.out, self.skip, self.steps = torch, out, skip, steps
        self.cuda = torch.cuda.is_available()
        self.times: list[float] = []
        self.last = None
        self.profiler = None
        self.stages: dict = {}

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def __call__(self, trainer, step: int) -> None:
        self.sync()
        now = time.perf_counter()
        if self.last is not None:
            self.times.append(now - self.last)
        if step == self.skip:
            activities = [self.torch.profiler.ProfilerActivity.CPU]
            if self.cuda:
                activities.append(self.torch.profiler.ProfilerActivity.CUDA)
            self.profiler = self.torch.profiler.profile(activities=activities)
            self.profiler.start()
        if step == self.skip + self.steps and self.profiler is not None:
            self.profiler.stop()
            self.write()
            self.profiler = None
            self.stages = compare_stages(trainer, self.sync)
        self.last = time.perf_counter()

    def write(self) -> None:
        averages = self.profiler.key_averages()
        parts = []
        for sort_by in ("self_cpu_time_total", "self_cuda_time_total" if self.cuda else None):
            if sort_by:
                table = averages.table(sort_by=sort_by, row_limit=40, max_name_column_width=80)
                parts.append(f"## by {sort_by}, {self.steps} steps\n\n{table}\n")
        calls = {name: 0 for name in RUNTIME_CALLS}
        for event in averages:
            for name in RUNTIME_CALLS:
                if event.key.startswith(name):
                    calls[name] += event.count
        parts.append("## CUDA runtime calls\n\n" + json.dumps(calls, indent=1) + "\n")
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "profile.txt").write_text("\n".join(parts))
        print("\n".join(parts[-1:]), flush=True)

    def summary(self) -> dict:
        row = {"step_s": [round(t, 4) for t in self.times], "stages_ms": self.stages}
        if self.cuda:
            stats = self.torch.cuda.memory_stats()
            row.update(
                reserved_gib=round(self.torch.cuda.memory_reserved() / 2**30, 2),
                alloc_retries=stats.get("num_alloc_retries", 0),
                ooms=stats.get("num_ooms", 0),
                device_frees=stats.get("num_device_free", 0),
                device_allocs=stats.get("num_device_alloc", 0),
            )
        return row


def compare_stages(trainer, sync, steps: int = 3, warmup: int = 1) -> dict:
    """Median ms of an optimizer step on the trainer's own model and optimizer, from the model benchmark's step to
    the trainer's: (a) benchmarks/model_speed.py's step (random ids, no padding, torch.autocast, forward + balance
    loss, backward, AdamW step); (b) the same on a batch of the training loader; (c) Trainer._optimizer_step on
    that batch (accelerate's wrapper, clipping, the finiteness check, the scheduler). Where the time jumps is
    what the trainer adds."""
    import statistics

    import torch

    from goat.adapters import auxiliary_loss

    model, optimizer = trainer.accelerator.unwrap_model(trainer.model), trainer.optimizer
    device = trainer.accelerator.device
    batch = next(iter(trainer.train_loader))
    ids = torch.randint(model.config.vocab_size, batch["input_ids"].shape, device=device)
    benchmark_batch = {"input_ids": ids, "labels": ids, "attention_mask": torch.ones_like(ids)}

    def bench_step(inputs):
        if device.type == "cuda":
            torch.compiler.cudagraph_mark_step_begin()
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = model(**inputs, use_cache=False).loss
            aux = auxiliary_loss(trainer.routed)
            loss = loss if aux is None else loss + aux
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    class Window:  # what _optimizer_step feeds: nothing is logged from here
        def add(self, *args):
            pass

    stages = {
        "a benchmark step": lambda: bench_step(benchmark_batch),
        "b benchmark step, loader batch": lambda: bench_step(batch),
        "c Trainer._optimizer_step": lambda: trainer._optimizer_step([batch], Window()),
    }
    found = {}
    step_before = trainer.state.step
    for name, step in stages.items():
        times = []
        for i in range(warmup + steps):
            sync()
            began = time.perf_counter()
            step()
            sync()
            if i >= warmup:
                times.append(1e3 * (time.perf_counter() - began))
        found[name] = round(statistics.median(times), 1)
        print(f"stage {name}: {found[name]} ms (median of {steps})", flush=True)
    trainer.state.step = step_before  # the stages' optimizer steps are not the run's
    return found


def main(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--skip", type=int, default=3, help="optimizer steps before the profiler starts")
    parser.add_argument("--steps", type=int, default=2, help="optimizer steps under the profiler")
    args, overrides = parser.parse_known_args(argv)
    overrides = [o for o in overrides if o != "--"]
    from goat.compose import compose
    from goat.train import train

    cfg = compose(overrides)
    profiler = StepProfiler(args.out, args.skip, args.steps)
    results = train(cfg, callbacks=[profiler])
    # the trainer resets the allocator's peak between phases: its own record has the peaks (the stages in train's)
    summary = {**profiler.summary(), "memory_peaks_gib": results.get("memory_peaks_gb")}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "steps.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
