"""torch.compile for training and decoding, one repeated block at a time ("regional" compilation).

A transformer is a stack of identical blocks (LLaMA's decoder layers, RoBERTa's encoder layers, CLIP's vision
layers). Compiling each block rather than the whole model gives the compiler every adapter layer whole (the
router, the gate, the dropout masks, the experts and the balance loss fuse into a few kernels), while the
blocks share one compiled graph: the first block pays the compile time, the other 31 reuse it. Embeddings,
the loss and the padding-mask hooks stay eager (a few kernels per step).

Modes are torch.compile's: default, max-autotune (autotuned matrix products), reduce-overhead (CUDA graphs:
the whole block replays as one launch; needs static shapes, so the trainer pads sequence lengths to buckets).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections import Counter

import torch
from torch import nn

logger = logging.getLogger(__name__)

COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
COMPILE_BACKENDS = ("inductor", "aot_eager")


def repeated_blocks(model: nn.Module) -> list[nn.Module]:
    """The items of every outermost nn.ModuleList whose items are all of one class (the transformer blocks)."""
    blocks: list[nn.Module] = []
    taken: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(prefix + ".") for prefix in taken):
            continue
        if isinstance(module, nn.ModuleList) and len(module) > 1 and len({type(m) for m in module}) == 1:
            blocks.extend(module)
            taken.append(name)
    return blocks


def compile_blocks(
    model: nn.Module, mode: str, dynamic: bool | None = None, fullgraph: bool = False, backend: str = "inductor"
) -> int:
    """Compiles each repeated block of `model` in place (nn.Module.compile: state_dict keys are unchanged);
    returns the number of blocks compiled. mode "none" compiles nothing. `backend` other than inductor (the
    tests' aot_eager: traced forward and backward graphs run with eager kernels) takes no mode."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile mode must be one of {list(COMPILE_MODES)}, got {mode!r}")
    if mode == "none":
        return 0
    blocks = repeated_blocks(model)
    if not blocks:
        raise ValueError(
            f"{type(model).__name__} has no repeated blocks (an nn.ModuleList of one module class) to compile; "
            "use compile=none for this model"
        )
    options = {} if mode == "default" or backend != "inductor" else {"mode": mode}
    # Blocks of one class share a compiled graph; each distinct input shape (bucketed lengths) adds one.
    limit = max(torch._dynamo.config.recompile_limit, 64)
    torch._dynamo.config.recompile_limit = limit
    torch._dynamo.config.accumulated_recompile_limit = max(torch._dynamo.config.accumulated_recompile_limit, limit * 4)
    for block in blocks:
        block.compile(dynamic=dynamic, fullgraph=fullgraph, backend=backend, **options)
    logger.info("compiled %d blocks (%s, mode %s)", len(blocks), type(blocks[0]).__name__, mode)
    return len(blocks)


@contextlib.contextmanager
def eager_blocks(model: nn.Module):
    """Runs `model`'s compiled blocks eagerly inside the context (generation): transformers compiles the decoding
    step of a static cache itself, and a block compiled for training would otherwise meet a KV cache whose
    per-layer state is a guard, that is one graph per block and per decoding length. Restored on exit."""
    blocks = [block for block in repeated_blocks(model) if getattr(block, "_compiled_call_impl", None) is not None]
    saved = [block._compiled_call_impl for block in blocks]
    for block in blocks:
        block._compiled_call_impl = None
    try:
        yield
    finally:
        for block, compiled in zip(blocks, saved, strict=True):
            block._compiled_call_impl = compiled


def without_kv_cache(model: nn.Module) -> dict:
    """{"use_cache": False} for a model whose forward takes use_cache (causal LMs), else {}. Training and scoring
    need no KV cache: building one costs memory in every step and, under torch.compile, one graph per block (each
    block's cache layer is its own guard) instead of one shared by all."""
    return {"use_cache": False} if "use_cache" in inspect.signature(model.forward).parameters else {}


def compile_counters(since: dict | None = None) -> dict:
    """What the compiler did in this process (graphs compiled, graph breaks, frames compiled); with `since` (an
    earlier result of this function), only what it did after that snapshot. The counters are process-wide and
    torch._dynamo.reset() does not clear them, so a run reports its own work against a snapshot of its start."""
    counters = torch._dynamo.utils.counters
    breaks = Counter(counters["graph_break"])
    now = {
        "graphs": int(counters["stats"]["unique_graphs"]),
        "graph_breaks": int(sum(breaks.values())),
        "frames_compiled": int(counters["frames"]["ok"]),
    }
    return {key: value - (since or {}).get(key, 0) for key, value in now.items()}
