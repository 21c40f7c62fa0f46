"""What the trainer does differently under DeepSpeed ZeRO (`accelerate launch --config_file
goat/configs/accelerate/zero2.yaml` or `zero3.yaml`) and FSDP2 (`fsdp.yaml`); DDP needs nothing beyond Accelerate.

- The batch settings of the DeepSpeed config come from goat's trainer (micro-batch, accumulation, global
  batch) and so does gradient clipping: the YAML files leave them alone.
- goat drives accumulation itself: every micro-batch's backward tells the engine whether it ends the
  optimizer step, and the loss is already divided by the number of micro-batches.
- ZeRO-3 and FSDP shard the parameters: reading them (checkpoints, the final adapter) gathers them first.
- Under FSDP the optimizer state is saved whole (trainable parameters only: small for adapters) and sharded
  again when a checkpoint is loaded; under DeepSpeed each process saves its part with the engine's own
  checkpoint (saved_weights_and_optimizer / restore_weights_and_optimizer: the whole engine-specific side of
  a goat checkpoint).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import torch
import transformers.integrations.deepspeed as hf_deepspeed
from accelerate import Accelerator, FullyShardedDataParallelPlugin, PartialState
from accelerate.utils import DistributedType
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor, distribute_tensor

from goat.config import ConfigError

ENGINE_TAG = "zero"  # the tag of DeepSpeed's own checkpoint inside a goat checkpoint


def is_deepspeed(accelerator) -> bool:
    return accelerator.distributed_type == DistributedType.DEEPSPEED


def is_fsdp(accelerator) -> bool:
    return accelerator.distributed_type == DistributedType.FSDP


def shards_parameters(accelerator) -> bool:
    """ZeRO-3 or FSDP: no process holds a whole weight outside forward passes, so every process must run the
    same number of forward passes (generation included) and reading a weight needs a gather."""
    return zero_stage(accelerator) == 3 or is_fsdp(accelerator)


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


def configure_fsdp(accelerator, model) -> None:
    """Chooses FSDP's shard groups before prepare(): the model's layer classes (_no_split_modules), without
    those that contain the input embedding (BERT's BertEmbeddings): Accelerate gives the embedding a group
    of its own, and FSDP refuses to shard a parameter twice. A list set in the accelerate config is kept."""
    plugin = accelerator.state.fsdp_plugin
    if plugin.transformer_cls_names_to_wrap is not None:
        return
    embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    holders = {type(m).__name__ for m in model.modules() if embedding is not None and embedding in m.modules()}
    layers = list(getattr(model, "_no_split_modules", None) or [])
    plugin.transformer_cls_names_to_wrap = [name for name in layers if name not in holders]


def backward(accelerator, loss, ends_step: bool) -> None:
    """One micro-batch's backward; at the last micro-batch of an optimizer step the engine reduces the
    gradients and steps (clipping included), otherwise it only accumulates."""
    accelerator.gradient_state._set_sync_gradients(ends_step)  # Accelerate has no public setter for this
    accelerator.backward(loss, scale_wrt_gas=False)


def gathered(model, accelerator):
    """A context in which the trainable weights of `model` (unwrapped), sharded by ZeRO-3 or FSDP, are whole on
    every process: every process must enter it. A no-op otherwise."""
    if is_fsdp(accelerator):
        return _fsdp_whole_trainable(model)
    if zero_stage(accelerator) != 3:
        return contextlib.nullcontext()
    import deepspeed  # lazy: optional (goat[deepspeed]); only ZeRO-3 runs reach this line

    return deepspeed.zero.GatheredParameters([p for p in model.parameters() if p.requires_grad], modifier_rank=None)


@contextlib.contextmanager
def _fsdp_whole_trainable(model):
    """Puts a whole copy of each sharded trainable parameter in its place (in fp32, not the bf16 copy that
    FSDP's own unshard() would give under mixed precision), and the shards back afterwards."""
    resharded(model)
    whole: dict[int, torch.nn.Parameter] = {}
    swapped = []
    for module in model.modules():
        for name, param in list(module._parameters.items()):
            if param is None or not param.requires_grad or not isinstance(param, DTensor):
                continue
            if id(param) not in whole:  # a tied parameter is gathered once
                whole[id(param)] = torch.nn.Parameter(param.full_tensor().detach())
            module._parameters[name] = whole[id(param)]
            swapped.append((module, name, param))
    try:
        yield
    finally:
        for module, name, param in reversed(swapped):
            module._parameters[name] = param


def resharded(model):
    """Puts every FSDP group of `model` back in its sharded state: after a forward pass without backward
    (evaluation), FSDP keeps the root group's parameters whole, and they are not the optimizer's parameters."""
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()
    return model


def assign(param, value: torch.Tensor) -> None:
    """param <- value (a whole tensor), for a plain parameter or an FSDP shard of one (each process keeps
    its own slice of `value`, which every process has: no communication)."""
    with torch.no_grad():
        if isinstance(param, DTensor):
            value = distribute_tensor(
                value.to(param.device, param.dtype), param.device_mesh, param.placements, src_data_rank=None
            )
        param.copy_(value)


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The trainable tensors of `model` (unwrapped, whole: inside gathered() where the engine shards them), on CPU."""
    return {name: p.detach().cpu().contiguous() for name, p in model.named_parameters() if p.requires_grad}


def saved_weights_and_optimizer(accelerator, model, optimizer, engine_dir: Path) -> dict | None:
    """The trainable tensors and the optimizer state that a checkpoint holds, from any engine; `model` and
    `optimizer` as accelerator.prepare() returned them. Every process must call it (ZeRO and FSDP gather
    collectively). The main process gets {"trainable": {name: whole tensor}, "optimizer": state dict}; under
    DeepSpeed every process writes its part of the optimizer state (and ZeRO-3 its weights) into `engine_dir`,
    and "engine_dir" stands in for "optimizer". The other processes get None."""
    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(model)
    saved = {}
    if is_deepspeed(accelerator):
        if accelerator.is_main_process:
            shutil.rmtree(engine_dir, ignore_errors=True)
        accelerator.wait_for_everyone()
        model.save_checkpoint(str(engine_dir), tag=ENGINE_TAG, exclude_frozen_parameters=True)
        saved["engine_dir"] = Path(engine_dir)
    with gathered(unwrapped, accelerator):
        trainable = trainable_state(unwrapped) if accelerator.is_main_process else None
    if not is_deepspeed(accelerator):  # FSDP gathers it whole: every process takes part
        saved["optimizer"] = optimizer_state(unwrapped, optimizer.optimizer, accelerator)
    accelerator.wait_for_everyone()
    return {"trainable": trainable, **saved} if accelerator.is_main_process else None


def restore_weights_and_optimizer(accelerator, model, optimizer, saved: dict) -> None:
    """Puts back what saved_weights_and_optimizer() returned, on every process: each keeps its shard (FSDP), or
    the engine reads its own part from saved["engine_dir"] (DeepSpeed; the weights come from there too)."""
    unwrapped = accelerator.unwrap_model(model)
    if is_deepspeed(accelerator):
        if "engine_dir" not in saved:
            raise ValueError("the checkpoint was written without DeepSpeed (no engine/ folder): resume it without it")
        model.load_checkpoint(
            str(saved["engine_dir"]), tag=ENGINE_TAG, load_module_strict=False, load_lr_scheduler_states=False
        )
        return
    if "optimizer" not in saved:
        raise ValueError("the checkpoint was written under DeepSpeed (engine/ holds the optimizer): resume it under it")
    params = dict(unwrapped.named_parameters())
    mismatch = sorted({name for name, p in params.items() if p.requires_grad} ^ set(saved["trainable"]))
    if mismatch:
        raise ValueError(
            "the checkpoint does not match this model's trainable parameters (method or model changed?): "
            f"first mismatch {mismatch[0]!r}"
        )
    for name, value in saved["trainable"].items():
        assign(params[name], value)
    load_optimizer_state(unwrapped, optimizer.optimizer, accelerator, saved["optimizer"])


def optimizer_state(model, optimizer, accelerator) -> dict:
    """The optimizer's state to save: FSDP's shards gathered into whole tensors keyed by parameter name (every
    process must call this; the main process gets it), else optimizer.state_dict()."""
    if not is_fsdp(accelerator):
        return optimizer.state_dict()
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_optimizer_state_dict(resharded(model), optimizer, options=options)


def load_optimizer_state(model, optimizer, accelerator, state: dict) -> None:
    """Restores what optimizer_state() saved; under FSDP every process reads the whole state and keeps its shard."""
    if not is_fsdp(accelerator):
        optimizer.load_state_dict(state)
        return
    set_optimizer_state_dict(resharded(model), optimizer, state, options=StateDictOptions(full_state_dict=True))


def scalar(value) -> float | None:
    """A gradient norm as a float (FSDP returns a DTensor)."""
    if value is None:
        return None
    return float(value.full_tensor() if hasattr(value, "full_tensor") else value)


def _launched_on_cpu(engine: str) -> bool:
    """torchrun started processes for DeepSpeed or FSDP on a machine without GPUs (the tests' CPU path)."""
    return (
        not torch.cuda.is_available()
        and "LOCAL_RANK" in os.environ
        and os.environ.get(f"ACCELERATE_USE_{engine}", "").lower() == "true"
    )


def process_state(cpu: bool):
    """Accelerate's process state, checked: several processes must share one data-parallel engine, and FSDP
    must be version 2 (fully_shard), whose parameters goat can gather and restore.

    DeepSpeed and FSDP processes started by torchrun on a machine without GPUs talk over gloo (their CPU
    paths, which the tests use to run ZeRO and FSDP on real processes)."""
    fsdp_version = os.environ.get("FSDP_VERSION", "1")  # accelerate's default
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true" and fsdp_version != "2":
        raise ConfigError(
            f"FSDP version {fsdp_version} is not supported: set fsdp_version: 2 in the accelerate config "
            "(goat/configs/accelerate/fsdp.yaml does)"
        )
    deepspeed_on_cpu = not cpu and _launched_on_cpu("DEEPSPEED")
    state = PartialState(cpu=cpu or _launched_on_cpu("FSDP"), **({"backend": "gloo"} if deepspeed_on_cpu else {}))
    launched = int(os.environ.get("WORLD_SIZE", "1"))  # what torchrun / accelerate launch started
    if launched > 1 and (state.num_processes != launched or state.distributed_type not in SUPPORTED):
        raise ConfigError(
            f"{launched} processes were launched, and Accelerate sees {state.num_processes} with distributed "
            f"type {state.distributed_type.value}: the processes would train unsynchronised. Launch with "
            "accelerate launch --config_file goat/configs/accelerate/ddp.yaml on GPUs, or torchrun with trainer=cpu "
            "on a machine without GPUs"
        )
    return state


SUPPORTED = (DistributedType.MULTI_GPU, DistributedType.MULTI_CPU, DistributedType.DEEPSPEED, DistributedType.FSDP)


def make_accelerator(trainer_cfg, log_with=None):
    """The run's Accelerator. On a machine without GPUs Accelerate turns FSDP off, so FSDP's CPU path (the
    tests') is switched on here."""
    fsdp_on_cpu = _launched_on_cpu("FSDP")
    accelerator = Accelerator(
        mixed_precision=trainer_cfg.mixed_precision, cpu=trainer_cfg.cpu or fsdp_on_cpu, log_with=log_with
    )
    if fsdp_on_cpu and accelerator.num_processes > 1:
        plugin = FullyShardedDataParallelPlugin()  # from the FSDP_* variables accelerate launch sets
        if accelerator.mixed_precision != "no":
            plugin.set_mixed_precision(accelerator.mixed_precision)
        accelerator.state.fsdp_plugin = plugin
        for state in (accelerator.state, PartialState()):  # a later AcceleratorState() copies PartialState's
            state.distributed_type = DistributedType.FSDP
    return accelerator


@contextlib.contextmanager
def whole_weights(accelerator):
    """Under ZeRO-3, builds the model unpartitioned: transformers would otherwise load it straight into
    partitions (zero.Init), where the SVD initialisation cannot read a weight. Each process holds the whole
    model in host memory until prepare() partitions it, with the adapter already initialised."""
    if zero_stage(accelerator) != 3:
        yield
        return
    reference = hf_deepspeed._hf_deepspeed_config_weak_ref
    current = reference() if reference is not None else None
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        if current is not None:  # generate() reads it to keep the processes in step (synced_gpus)
            hf_deepspeed.set_hf_deepspeed_config(current)
