"""Selected singular triplets of many weight matrices: batched by shape, on the GPU when present, cached.

GOAT, PiSSA and MiLoRA need, per targeted layer, a few singular triplets (U[:, I], sigma[I], V[:, I]) of
its weight W = U diag(sigma) V^T. The decomposition runs in float64 through the Gram matrix (see
_decompose), on CUDA when available, over stacks of equal-shape matrices, and only the selected columns are kept and
written to an on-disk cache keyed by model identity, layer name, shape, a fingerprint of the weight and
the selected indices, so that a second run of the same model skips the decomposition.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

logger = logging.getLogger(__name__)

# Matrices decomposed together; bounds the float64 working set (8 x 4096 x 4096 x 8 B = 1 GiB per copy).
CHUNK_ELEMENTS = 8 * 4096 * 4096
FINGERPRINT_SAMPLES = 4096


@dataclass
class Triplets:
    U: torch.Tensor  # (m, len(I))
    S: torch.Tensor  # (len(I),)
    V: torch.Tensor  # (n, len(I))


@dataclass
class SVDReport:
    triplets: dict[str, Triplets] = field(default_factory=dict)
    seconds: float = 0.0
    decomposed: int = 0
    from_cache: int = 0


def model_identity(model: nn.Module) -> str:
    """What identifies the pretrained weights in the SVD cache key when model_id is auto (the weight fingerprint
    guards the rest): the model's config._name_or_path, or its class name."""
    name = getattr(getattr(model, "config", None), "_name_or_path", "") or ""
    return name or type(model).__name__


def compute_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def cache_key(model_id: str, name: str, weight: torch.Tensor, index: torch.Tensor) -> str:
    """sha256 of model identity, layer name, shape, dtype, a strided sample of the weight and the indices."""
    flat = weight.detach().reshape(-1)
    step = max(1, flat.numel() // FINGERPRINT_SAMPLES)
    sample = flat[::step][:FINGERPRINT_SAMPLES].float().cpu()
    digest = hashlib.sha256()
    for part in (model_id, name, str(tuple(weight.shape)), str(weight.dtype)):
        digest.update(part.encode() + b"\0")
    digest.update(sample.numpy().tobytes())
    digest.update(index.cpu().numpy().tobytes())
    return digest.hexdigest()[:40]


def _decompose(stack: torch.Tensor, index: torch.Tensor):
    """Selected triplets of a (B, m, n) stack through the Gram matrix, in float64.

    For m >= n: W^T W = V diag(sigma^2) V^T (eigh), u_i = W v_i / sigma_i; for m < n the same on W W^T.
    On an H100 this is 8x faster than torch.linalg.svd in float32 (0.13 s vs 1.1 s for 4096 x 4096) and
    more accurate (sigma relative error 4e-9 in the bottom of the spectrum vs 1e-3; docs/benchmarks.md),
    because the eigensolver runs in float64 on a matrix of the smaller side.
    Returns U (B, m, k), S (B, k), V (B, n, k) for the k indices of the descending spectrum.
    """
    wide = stack.shape[-2] < stack.shape[-1]
    W = (stack.mT if wide else stack).double()  # (B, big, small)
    eigenvalues, eigenvectors = torch.linalg.eigh(W.mT @ W)  # ascending
    h = W.shape[-1]
    position = h - 1 - index  # descending index -> ascending position
    S = eigenvalues[:, position].clamp_min(0).sqrt()  # (B, k)
    small_side = eigenvectors[:, :, position]  # (B, small, k)
    big_side = (W @ small_side) / S.clamp_min(torch.finfo(torch.float64).tiny)[:, None, :]
    return (small_side, S, big_side) if wide else (big_side, S, small_side)


def selected_triplets(
    weights: dict[str, torch.Tensor],
    indices: dict[str, torch.Tensor],
    model_id: str,
    cache_dir: str | Path | None,
    device: torch.device | None = None,
) -> SVDReport:
    """Triplets at `indices[name]` (a LongTensor into the descending spectrum) for each weight (out, in).

    Results are on the CPU, float32 (float64 when the weight is float64).
    """
    start = time.perf_counter()
    device = device or compute_device()
    cache = Path(cache_dir).expanduser() if cache_dir else None
    report = SVDReport()
    world, rank = _world()
    groups: dict[tuple, list[str]] = defaultdict(list)  # (shape, float64?, indices) -> names
    for name, weight in weights.items():
        groups[(tuple(weight.shape), weight.dtype == torch.float64, tuple(indices[name].tolist()))].append(name)
    pending: dict[tuple, list[str]] = defaultdict(list)
    keys = {}
    for group, names in groups.items():
        # under torch.distributed each process takes its share of every shape, chosen from the names alone
        # (never from the cache, which another process may be writing): the shares cover every name once
        for name in names[rank::world]:
            keys[name] = cache_key(model_id, name, weights[name], indices[name])
            cached = _read_cache(cache, keys[name])
            if cached is not None:
                report.triplets[name] = cached
                report.from_cache += 1
            else:
                pending[group].append(name)
    for (shape, is_double, index), names in pending.items():
        result_dtype = torch.float64 if is_double else torch.float32
        index = torch.tensor(index, device=device)
        per_chunk = max(1, CHUNK_ELEMENTS // (shape[0] * shape[1]))
        for begin in range(0, len(names), per_chunk):
            chunk = names[begin : begin + per_chunk]
            U, S, V = _decompose(torch.stack([weights[n].detach().to(device) for n in chunk]), index)
            for i, name in enumerate(chunk):
                report.triplets[name] = Triplets(*(t[i].to("cpu", result_dtype) for t in (U, S, V)))
                _write_cache(cache, keys[name], report.triplets[name])
            report.decomposed += len(chunk)
    if world > 1:
        report.triplets = _exchange(report.triplets, world)
    report.seconds = time.perf_counter() - start
    if weights:
        logger.info(
            "SVD init: %d matrices decomposed on %s%s, %d from cache, %.2f s",
            report.decomposed,
            device,
            f" by process {rank} of {world} (the others' shares received)" if world > 1 else "",
            report.from_cache,
            report.seconds,
        )
    return report


def _world() -> tuple[int, int]:
    """(number of processes, this process's rank) of the default process group; (1, 0) without one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size(), torch.distributed.get_rank()
    return 1, 0


def _exchange(local: dict[str, Triplets], world: int) -> dict[str, Triplets]:
    """Every process's triplets on every process (all_gather of the CPU tensors): the selected columns only,
    r columns per matrix, so this is small next to the weights."""
    gathered: list = [None] * world
    torch.distributed.all_gather_object(gathered, {n: (t.U, t.S, t.V) for n, t in local.items()})
    merged = {}
    for part in gathered:
        merged.update({name: Triplets(*tensors) for name, tensors in part.items()})
    return merged


def _read_cache(cache: Path | None, key: str) -> Triplets | None:
    if cache is None:
        return None
    path = cache / f"{key}.safetensors"
    if not path.exists():
        return None
    try:
        tensors = load_file(str(path))
        return Triplets(tensors["U"], tensors["S"], tensors["V"])
    except (OSError, KeyError, RuntimeError, ValueError) as error:  # a corrupt entry is recomputed
        logger.warning("ignoring unreadable SVD cache entry %s (%s)", path, error)
        return None


def _write_cache(cache: Path | None, key: str, found: Triplets) -> None:
    if cache is None:
        return
    cache.mkdir(parents=True, exist_ok=True)
    final = cache / f"{key}.safetensors"
    # a name of this writer's own: runs training at once (goat-grid --workers) share the cache, and a shared
    # temporary name let one writer's rename pull the file from under another's
    temporary = cache / f"{key}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
    tensors = {"U": found.U.contiguous(), "S": found.S.contiguous(), "V": found.V.contiguous()}
    try:
        save_file(tensors, str(temporary))
        temporary.replace(final)  # atomic: a reader never sees a half-written entry
    finally:
        temporary.unlink(missing_ok=True)
