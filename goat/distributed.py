"""What the trainer does differently under DeepSpeed ZeRO (`accelerate launch --config_file
configs/accelerate/zero2.yaml` or `zero3.yaml`); DDP needs nothing beyond Accelerate.

- The batch settings of the DeepSpeed config come from goat's trainer (micro-batch, accumulation, global
  batch) and so does gradient clipping: the YAML files leave them alone.
- goat drives accumulation itself: every micro-batch's backward tells the engine whether it ends the
  optimizer step, and the loss is already divided by the number of micro-batches.
- ZeRO-3 partitions the parameters: reading them (checkpoints, the final adapter) gathers them first.
"""

from __future__ import annotations

import contextlib
import os

import torch
from accelerate import PartialState
from accelerate.utils import DistributedType

from goat.checks import ConfigError


def is_deepspeed(accelerator) -> bool:
    return accelerator.distributed_type == DistributedType.DEEPSPEED


def zero_stage(accelerator) -> int:
    if not is_deepspeed(accelerator):
        return 0
    return int(accelerator.state.deepspeed_plugin.deepspeed_config.get("zero_optimization", {}).get("stage", 0))


def configure_deepspeed(accelerator, trainer_cfg, accumulation: int) -> None:
    """Writes goat's batch, accumulation and clipping settings into the DeepSpeed config before prepare()."""
    config = accelerator.state.deepspeed_plugin.deepspeed_config
    config["train_micro_batch_size_per_gpu"] = trainer_cfg.micro_batch_size
    config["gradient_accumulation_steps"] = accumulation
    config["train_batch_size"] = trainer_cfg.micro_batch_size * accumulation * accelerator.num_processes
    config["gradient_clipping"] = float(trainer_cfg.max_grad_norm or 0.0)
    accelerator.gradient_accumulation_steps = accumulation
    accelerator.state.deepspeed_plugin.gradient_accumulation_steps = accumulation


def backward(accelerator, loss, ends_step: bool) -> None:
    """One micro-batch's backward; at the last micro-batch of an optimizer step the engine reduces the
    gradients and steps (clipping included), otherwise it only accumulates."""
    accelerator.gradient_state._set_sync_gradients(ends_step)  # Accelerate has no public setter for this
    accelerator.backward(loss, scale_wrt_gas=False)


def gathered(params, accelerator):
    """A context in which ZeRO-3-partitioned `params` are whole on every process (a no-op otherwise)."""
    if zero_stage(accelerator) != 3:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(list(params), modifier_rank=None)


def process_state(cpu: bool):
    """Accelerate's process state, checked: several processes must share one data-parallel engine.

    DeepSpeed processes started by torchrun on a machine without GPUs talk over gloo (DeepSpeed's CPU path,
    which the tests use to run ZeRO on real processes)."""
    deepspeed_on_cpu = (
        not cpu
        and not torch.cuda.is_available()
        and "LOCAL_RANK" in os.environ
        and os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true"
    )
    state = PartialState(cpu=cpu, **({"backend": "gloo"} if deepspeed_on_cpu else {}))
    launched = int(os.environ.get("WORLD_SIZE", "1"))  # what torchrun / accelerate launch started
    if launched > 1 and (state.num_processes != launched or state.distributed_type not in SUPPORTED):
        raise ConfigError(
            f"{launched} processes were launched, and Accelerate sees {state.num_processes} with distributed "
            f"type {state.distributed_type.value}: "
            + (
                "FSDP is not supported by goat yet; use configs/accelerate/ddp.yaml, zero2.yaml or zero3.yaml"
                if state.distributed_type == DistributedType.FSDP
                else "the processes would train unsynchronised. Launch with accelerate launch --config_file "
                "configs/accelerate/ddp.yaml on GPUs, or torchrun with trainer=cpu on a machine without GPUs"
            )
        )
    return state


SUPPORTED = (DistributedType.MULTI_GPU, DistributedType.MULTI_CPU, DistributedType.DEEPSPEED)


@contextlib.contextmanager
def whole_weights(accelerator):
    """Under ZeRO-3, builds the model unpartitioned: transformers would otherwise load it straight into
    partitions (zero.Init), where the SVD initialisation cannot read a weight. Each process holds the whole
    model in host memory until prepare() partitions it, with the adapter already initialised."""
    if zero_stage(accelerator) != 3:
        yield
        return
    import transformers.integrations.deepspeed as hf_deepspeed

    reference = hf_deepspeed._hf_deepspeed_config_weak_ref
    current = reference() if reference is not None else None
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        if current is not None:  # generate() reads it to keep the processes in step (synced_gpus)
            hf_deepspeed.set_hf_deepspeed_config(current)
