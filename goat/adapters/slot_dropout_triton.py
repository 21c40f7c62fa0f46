"""A routed layer's down-projection as Triton kernels: each slot's dropout mask is drawn inside the matrix product,
so neither forward nor backward writes a dropped copy of x or keeps a mask (backward draws the same masks again),
and the router's logits (x without dropout) come from the same loads of x, forward and backward.

    act[s]  = (x * keep_s) @ A^T * c                         x (T, n), A (r, n), act (S, T, r), c = 1 / (1 - p')
    logits  = x @ W^T                                        the router W (E, n), logits (T, E) in fp32
    grad_x  = c * sum_s keep_s * (grad_act[s] @ A) + grad_logits @ W          (T, n)
    grad_A  = c * sum_s grad_act[s]^T @ (keep_s * x)         (r, n)
    grad_W  = grad_logits^T @ x                              (E, n)

Against the torch path, which runs the router as its own matrix product (under bf16 autocast: bf16 logits), this
saves a read of x in forward and, in backward, a read of x, a write of a (T, n) gradient and the sum of it.

The masks are Bernoulli like the torch path's (goat.adapters.slot_dropout), with p rounded to 2**-16: slots go in
pairs (2j, 2j + 1), and element i of row t is kept in slot 2j where the low 16 bits of Philox4x32-10 output i % 4,
counter (j * T + t) * ceil(n / 4) + i // 4, key `seed` (a one-element int64 tensor drawn from the default
generator at each forward), are >= round(p * 2**16), and in slot 2j + 1 where the high 16 bits of the same output
are. One Philox call serves four elements of two slots (eight mask values), and each kernel that reads x once
draws both slots of a pair from one call. The same (seed, counter) gives the same mask in every kernel, which is
what lets backward redraw it.

Registered as torch.library custom ops with fake (shape) implementations, so torch.compile keeps them as graph
nodes (no graph break, CUDA graphs capture them) and autograd calls the backward op. The torch path
(slot_dropout.py) stays for CPUs, fp64 and reference tests.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch.library import custom_op

CHUNK_BITS = 16  # random bits per mask element (two per 32-bit Philox output): p is resolved to 2**-16
_CHUNK_BITS = tl.constexpr(CHUNK_BITS)  # a kernel can read a global only as a constexpr
_CHUNK_MASK = tl.constexpr((1 << CHUNK_BITS) - 1)


def drop_threshold(p: float) -> int:
    """Element dropped where its 16-bit chunk < this; at least one value of 2**16 is kept."""
    return min(round(p * 2**CHUNK_BITS), 2**CHUNK_BITS - 1)


def effective_p(p: float) -> float:
    """The dropout probability the kernels' masks have: p rounded to a multiple of 2**-16 (0.05 -> 0.050003); kept
    values are scaled by 1 / (1 - that p), so the expectation stays exact."""
    return drop_threshold(p) / 2**CHUNK_BITS


def mask_arguments(p: float) -> tuple[int, float]:
    """What every kernel takes for dropout p: the drop threshold of a 16-bit chunk and the scale of kept values."""
    return drop_threshold(p), 1.0 / (1.0 - effective_p(p))


@dataclass(frozen=True)
class Tiles:
    """How one kernel is launched: rows of x (tokens) and columns (input features) per program, warps per program,
    software-pipeline stages, and (grad_A only) how many programs share the sum over tokens of one column block.
    They change the speed only: the masks depend on (seed, slot, row, column), whatever the tiles."""

    rows: int = 64
    cols: int = 64  # a multiple of 4: the masks are drawn by groups of 4 columns
    warps: int = 4
    stages: int = 3
    token_splits: int = 8


# per kernel; benchmarks/slot_dropout_tiles.py times the alternatives on a GPU
TILES = {"down": Tiles(), "grad_x": Tiles(), "grad_a": Tiles()}
DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def fused_supported(x: torch.Tensor) -> bool:
    """The kernels run on CUDA tensors of DTYPES (on the CPU only in Triton's interpreter, TRITON_INTERPRET=1, for
    tests)."""
    on_device = x.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"
    return on_device and x.dtype in DTYPES


def counters_fit(x: torch.Tensor, slots: int) -> bool:
    """Whether every mask element of `slots` masks over x (T, n) has its own 31-bit Philox counter (one per pair of
    slots, row and group of 4 features)."""
    tokens, n = x.shape
    return pairs(slots) * tokens * ((n + 3) // 4) < 2**31


def pairs(slots: int) -> int:
    """Slot pairs: the masks of slots 2j and 2j + 1 come from one Philox call (with an odd count of slots the last
    pair's second mask is drawn and not used)."""
    return (slots + 1) // 2


def rank_tile(r: int) -> int:
    return max(16, triton.next_power_of_2(r))  # tl.dot needs every dimension >= 16


@triton.jit
def _keep_pair(seed, pair, rows, start, tokens, n, threshold, BN: tl.constexpr):
    """(BT, BN) bool keep masks of slots 2 * pair and 2 * pair + 1 at rows (BT, 1) and columns start.. start + BN
    (start a multiple of 4): one Philox call per group of 4 elements, its low 16 bits for the first slot and its
    high 16 bits for the second."""
    group_cols = start // 4 + tl.arange(0, BN // 4)[None, :]  # (1, BN / 4)
    counter = ((pair * tokens + rows) * ((n + 3) // 4) + group_cols).to(tl.int32)
    r0, r1, r2, r3 = tl.randint4x(seed, counter)
    bits = tl.interleave(tl.interleave(r0, r2), tl.interleave(r1, r3))  # element 4 g + c is output c of group g
    return (bits & _CHUNK_MASK) >= threshold, ((bits >> _CHUNK_BITS) & _CHUNK_MASK) >= threshold


@triton.jit
def _row_block(ptr, rows, width, tokens, BW: tl.constexpr):
    """(BT, BW) block of a row-major (tokens, width) matrix at rows (BT, 1), zero outside it."""
    cols = tl.arange(0, BW)[None, :]
    return tl.load(ptr + rows * width + cols, mask=(rows < tokens) & (cols < width), other=0.0)


@triton.jit
def _dropped_products(x_ptr, a_ptr, seed, pair, rows, start, tokens, n, r, threshold,
                      BN: tl.constexpr, BR: tl.constexpr, PRECISION: tl.constexpr):  # fmt: skip
    """The tile of x at rows (BT, 1) and columns start.. start + BN, and the pair's two dropped tiles times A^T's:
    ((BT, BN), (BT, BR) fp32, (BT, BR) fp32)."""
    cols = start + tl.arange(0, BN)[None, :]  # (1, BN)
    ranks = tl.arange(0, BR)[None, :]  # (1, BR)
    x = tl.load(x_ptr + rows * n + cols, mask=(rows < tokens) & (cols < n), other=0.0)
    keep_first, keep_second = _keep_pair(seed, pair, rows, start, tokens, n, threshold, BN)
    a_t = tl.load(a_ptr + ranks * n + tl.trans(cols), mask=(ranks < r) & (tl.trans(cols) < n), other=0.0)
    first = tl.dot(tl.where(keep_first, x, 0.0), a_t, input_precision=PRECISION)  # (BT, BN) x (BN, BR)
    second = tl.dot(tl.where(keep_second, x, 0.0), a_t, input_precision=PRECISION)
    return x, first, second


@triton.jit
def _down_kernel(x_ptr, a_ptr, w_ptr, out_ptr, logit_ptr, seed_ptr, tokens, n, r, e, threshold, scale, cols_per_split,
                 S: tl.constexpr, BT: tl.constexpr, BN: tl.constexpr, BR: tl.constexpr, BE: tl.constexpr,
                 PRECISION: tl.constexpr):  # fmt: skip
    """One (BT, r) block of act[slot] for both slots of a pair over one range of the input features, from one load
    of x: program (token block, pair, split) -> out[split, 2 pair] and out[split, 2 pair + 1]; the pair-0 programs
    also compute the router's logits from the x they load -> logits[split] (the splits' partial products are
    summed afterwards when there are several). The branch on the pair is taken once, outside the loops, so that
    each loop body is straight-line code the compiler can pipeline."""
    pair = tl.program_id(1)
    split = tl.program_id(2)
    seed = tl.load(seed_ptr)
    rows = tl.program_id(0) * BT + tl.arange(0, BT)[:, None]  # (BT, 1)
    ranks = tl.arange(0, BR)[None, :]  # (1, BR)
    experts = tl.arange(0, BE)[None, :]  # (1, BE)
    first, last = split * cols_per_split, (split + 1) * cols_per_split
    acc_first = tl.zeros((BT, BR), dtype=tl.float32)
    acc_second = tl.zeros((BT, BR), dtype=tl.float32)
    if pair == 0:
        logits = tl.zeros((BT, BE), dtype=tl.float32)
        for start in range(first, last, BN):
            x, part_first, part_second = _dropped_products(
                x_ptr, a_ptr, seed, pair, rows, start, tokens, n, r, threshold, BN, BR, PRECISION
            )
            acc_first += part_first
            acc_second += part_second
            cols = start + tl.arange(0, BN)[:, None]  # (BN, 1)
            w_t = tl.load(w_ptr + experts * n + cols, mask=(experts < e) & (cols < n), other=0.0)  # (BN, BE)
            logits += tl.dot(x, w_t, input_precision=PRECISION)  # x as it came: the router sees no dropout
        tl.store(logit_ptr + split * tokens * e + rows * e + experts, logits, mask=(rows < tokens) & (experts < e))
    else:
        for start in range(first, last, BN):
            _, part_first, part_second = _dropped_products(
                x_ptr, a_ptr, seed, pair, rows, start, tokens, n, r, threshold, BN, BR, PRECISION
            )
            acc_first += part_first
            acc_second += part_second
    out = out_ptr + (split * S + 2 * pair) * tokens * r + rows * r + ranks
    tl.store(out, (acc_first * scale).to(out_ptr.dtype.element_ty), mask=(rows < tokens) & (ranks < r))
    second_rows = tl.where(2 * pair + 1 < S, tokens, 0)  # an odd count of slots: the last pair has one
    second = (acc_second * scale).to(out_ptr.dtype.element_ty)
    tl.store(out + tokens * r, second, mask=(rows < second_rows) & (ranks < r))


@triton.jit
def _grad_x_kernel(g_ptr, gl_ptr, a_ptr, w_ptr, gx_ptr, seed_ptr, tokens, n, r, e, threshold, scale,
                   S: tl.constexpr, BT: tl.constexpr, BN: tl.constexpr, BR: tl.constexpr, BE: tl.constexpr,
                   PRECISION: tl.constexpr):  # fmt: skip
    """One (BT, BN) block of grad_x: program (token block, column block), the slots (a pair's masks from one
    draw) and the router summed inside."""
    seed = tl.load(seed_ptr)
    rows = tl.program_id(0) * BT + tl.arange(0, BT)[:, None]  # (BT, 1)
    start = tl.program_id(1) * BN
    cols = start + tl.arange(0, BN)[None, :]  # (1, BN)
    ranks = tl.arange(0, BR)
    experts = tl.arange(0, BE)
    a = tl.load(a_ptr + ranks[:, None] * n + cols, mask=(ranks[:, None] < r) & (cols < n), other=0.0)  # (BR, BN)
    acc = tl.zeros((BT, BN), dtype=tl.float32)
    for pair in tl.static_range((S + 1) // 2):
        keep_first, keep_second = _keep_pair(seed, pair, rows, start, tokens, n, threshold, BN)
        g = _row_block(g_ptr + 2 * pair * tokens * r, rows, r, tokens, BR)  # (BT, BR)
        acc += tl.where(keep_first, tl.dot(g, a, input_precision=PRECISION), 0.0)  # (BT, BN)
        if 2 * pair + 1 < S:
            g = _row_block(g_ptr + (2 * pair + 1) * tokens * r, rows, r, tokens, BR)
            acc += tl.where(keep_second, tl.dot(g, a, input_precision=PRECISION), 0.0)
    w = tl.load(w_ptr + experts[:, None] * n + cols, mask=(experts[:, None] < e) & (cols < n), other=0.0)  # (BE, BN)
    gl = _row_block(gl_ptr, rows, e, tokens, BE)  # (BT, BE)
    routed = tl.dot(gl.to(w.dtype), w, input_precision=PRECISION)  # (BT, BE) x (BE, BN): the router's part
    gx = gx_ptr + rows * n + cols
    tl.store(gx, (acc * scale + routed).to(gx_ptr.dtype.element_ty), mask=(rows < tokens) & (cols < n))


@triton.jit
def _grad_a_kernel(g_ptr, gl_ptr, x_ptr, part_ptr, w_part_ptr, seed_ptr, tokens, n, r, e, threshold, scale,
                   rows_per_split, S: tl.constexpr, BT: tl.constexpr, BN: tl.constexpr, BR: tl.constexpr,
                   BE: tl.constexpr, PRECISION: tl.constexpr):  # fmt: skip
    """Partial sums of grad_A and of the router's grad_W over one token range, from one load of x: program (column
    block, split) -> part[split] (BR, BN) and w_part[split] (BE, BN), in fp32."""
    seed = tl.load(seed_ptr)
    start = tl.program_id(0) * BN
    split = tl.program_id(1)
    cols = start + tl.arange(0, BN)[None, :]  # (1, BN)
    ranks = tl.arange(0, BR)
    experts = tl.arange(0, BE)
    acc = tl.zeros((BR, BN), dtype=tl.float32)
    w_acc = tl.zeros((BE, BN), dtype=tl.float32)
    for first in range(split * rows_per_split, (split + 1) * rows_per_split, BT):
        rows = first + tl.arange(0, BT)[:, None]  # (BT, 1)
        x = tl.load(x_ptr + rows * n + cols, mask=(rows < tokens) & (cols < n), other=0.0)  # (BT, BN)
        for pair in tl.static_range((S + 1) // 2):
            keep_first, keep_second = _keep_pair(seed, pair, rows, start, tokens, n, threshold, BN)
            g = _row_block(g_ptr + 2 * pair * tokens * r, rows, r, tokens, BR)  # (BT, BR)
            acc += tl.dot(tl.trans(g), tl.where(keep_first, x, 0.0), input_precision=PRECISION)  # (BR, BN)
            if 2 * pair + 1 < S:
                g = _row_block(g_ptr + (2 * pair + 1) * tokens * r, rows, r, tokens, BR)
                acc += tl.dot(tl.trans(g), tl.where(keep_second, x, 0.0), input_precision=PRECISION)
        gl = _row_block(gl_ptr, rows, e, tokens, BE)  # (BT, BE)
        w_acc += tl.dot(tl.trans(gl.to(x.dtype)), x, input_precision=PRECISION)  # (BE, BN)
    part = part_ptr + split * r * n + ranks[:, None] * n + cols
    tl.store(part, acc * scale, mask=(ranks[:, None] < r) & (cols < n))
    w_part = w_part_ptr + split * e * n + experts[:, None] * n + cols
    tl.store(w_part, w_acc, mask=(experts[:, None] < e) & (cols < n))


def _precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"  # fp32 stays fp32; for 16-bit inputs the flag is unused


def _launch(tiles: Tiles, slots: int, r: int, e: int, dtype: torch.dtype) -> dict:
    """The compile-time arguments every kernel takes, and its warps and stages."""
    return {"S": slots, "BT": tiles.rows, "BN": tiles.cols, "BR": rank_tile(r), "BE": rank_tile(e),
            "PRECISION": _precision(dtype), "num_warps": tiles.warps, "num_stages": tiles.stages}  # fmt: skip


@custom_op("goat::routed_dropout_down", mutates_args=())
def routed_dropout_down(
    x: torch.Tensor, A: torch.Tensor, W: torch.Tensor, seed: torch.Tensor, slots: int, p: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """x (T, n), A (r, n), the router's W (E, n), seed (1,) int64 -> (act (S, T, r) in x's dtype: slot s =
    dropout_s(x) @ A^T; logits (T, E) fp32 = x @ W^T, from the same loads of x)."""
    return down(x, A, W, seed, slots, p, TILES["down"])


def down(x, A, W, seed, slots: int, p: float, tiles: Tiles) -> tuple[torch.Tensor, torch.Tensor]:
    """routed_dropout_down's kernel launch with the given tiles."""
    tokens, n = x.shape
    r, e = A.shape[0], W.shape[0]
    splits = feature_splits(tokens, n, slots, _multiprocessors(x.device), tiles)
    cols_per_split = triton.cdiv(triton.cdiv(n, splits), tiles.cols) * tiles.cols
    splits = triton.cdiv(n, cols_per_split)
    if splits == 1:
        out = torch.empty((1, slots, tokens, r), device=x.device, dtype=x.dtype)
    else:
        out = torch.empty((splits, slots, tokens, r), device=x.device, dtype=torch.float32)
    logits = torch.empty((splits, tokens, e), device=x.device, dtype=torch.float32)
    _down_kernel[(triton.cdiv(tokens, tiles.rows), pairs(slots), splits)](
        x, A, W, out, logits, seed, tokens, n, r, e, *mask_arguments(p), cols_per_split,
        **_launch(tiles, slots, r, e, x.dtype),
    )  # fmt: skip
    if splits == 1:
        return out[0], logits[0]
    return out.sum(0).to(x.dtype), logits.sum(0)


def feature_splits(tokens: int, n: int, slots: int, multiprocessors: int, tiles: Tiles = TILES["down"]) -> int:
    """How many ranges of the input features the forward splits into: enough programs for two per multiprocessor
    (a micro-batch of 4x512 tokens gives only 32 token blocks x 1 slot pair = 32 programs on an H200's 132), at
    most one per column tile."""
    programs = triton.cdiv(tokens, tiles.rows) * pairs(slots)
    return max(1, min(triton.cdiv(2 * multiprocessors, programs), triton.cdiv(n, tiles.cols)))


@functools.cache
def _multiprocessors(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 132  # Triton's CPU interpreter: as on an H100/H200, so that tests split the features as the GPU would


@custom_op("goat::routed_dropout_down_backward", mutates_args=())
def routed_dropout_down_backward(
    grad_act: torch.Tensor, grad_logits: torch.Tensor, x: torch.Tensor, A: torch.Tensor, W: torch.Tensor,
    seed: torch.Tensor, p: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """(grad_x (T, n) in x's dtype, grad_A (r, n) in A's, grad_W (E, n) in W's) of routed_dropout_down."""
    grad_act = grad_act.to(x.dtype).contiguous()
    grad_logits = grad_logits.float().contiguous()
    grad_x = down_grad_x(grad_act, grad_logits, A, W, seed, p, TILES["grad_x"])
    grad_A, grad_W = down_grad_weights(grad_act, grad_logits, x, seed, p, A.shape[0], W.shape[0], TILES["grad_a"])
    return grad_x, grad_A.to(A.dtype), grad_W.to(W.dtype)


def down_grad_x(grad_act, grad_logits, A, W, seed, p: float, tiles: Tiles) -> torch.Tensor:
    """grad_x (T, n) in grad_act's dtype: the slots' masked products and the router's part, one kernel."""
    slots, tokens, r = grad_act.shape
    n, e = A.shape[1], W.shape[0]
    grad_x = grad_act.new_empty((tokens, n))
    _grad_x_kernel[(triton.cdiv(tokens, tiles.rows), triton.cdiv(n, tiles.cols))](
        grad_act, grad_logits, A, W, grad_x, seed, tokens, n, r, e, *mask_arguments(p),
        **_launch(tiles, slots, r, e, grad_x.dtype),
    )  # fmt: skip
    return grad_x


def down_grad_weights(grad_act, grad_logits, x, seed, p: float, r: int, e: int, tiles: Tiles):
    """(grad_A (r, n), grad_W (E, n)) in fp32, from one pass over x: partial sums over token ranges, then summed."""
    slots, tokens, n = grad_act.shape[0], x.shape[0], x.shape[1]
    splits = min(tiles.token_splits, triton.cdiv(tokens, tiles.rows))
    rows_per_split = triton.cdiv(triton.cdiv(tokens, splits), tiles.rows) * tiles.rows
    parts = torch.empty((splits, r, n), device=x.device, dtype=torch.float32)
    w_parts = torch.empty((splits, e, n), device=x.device, dtype=torch.float32)
    _grad_a_kernel[(triton.cdiv(n, tiles.cols), splits)](
        grad_act, grad_logits, x, parts, w_parts, seed, tokens, n, r, e, *mask_arguments(p), rows_per_split,
        **_launch(tiles, slots, r, e, x.dtype),
    )  # fmt: skip
    return parts.sum(0), w_parts.sum(0)


@routed_dropout_down.register_fake
def _(x, A, W, seed, slots, p):
    return x.new_empty((slots, x.shape[0], A.shape[0])), x.new_empty((x.shape[0], W.shape[0]), dtype=torch.float32)


@routed_dropout_down_backward.register_fake
def _(grad_act, grad_logits, x, A, W, seed, p):
    return torch.empty_like(x), torch.empty_like(A), torch.empty_like(W)


def _setup_context(ctx, inputs, output):
    x, A, W, seed, _slots, p = inputs
    ctx.save_for_backward(x, A, W, seed)
    ctx.p = p


def _backward(ctx, grad_act, grad_logits):
    x, A, W, seed = ctx.saved_tensors
    if grad_logits is None:  # logits that reached no loss (a frozen router): their gradient is zero
        grad_logits = x.new_zeros((x.shape[0], W.shape[0]), dtype=torch.float32)
    grad_x, grad_A, grad_W = routed_dropout_down_backward(grad_act, grad_logits, x, A, W, seed, ctx.p)
    return grad_x, grad_A, grad_W, None, None, None


routed_dropout_down.register_autograd(_backward, setup_context=_setup_context)


def draw_seed(device: torch.device) -> torch.Tensor:
    """A fresh Philox key from the default generator: (1,) int64 on `device` (no host sync; compiles as a random op)."""
    return torch.randint(0, 2**62, (1,), device=device)


@triton.jit
def _mask_kernel(keep_ptr, seed_ptr, tokens, n, threshold, BT: tl.constexpr, BN: tl.constexpr):
    """Writes the masks the other kernels draw, (S, T, n) int8: for tests."""
    slot = tl.program_id(2)
    seed = tl.load(seed_ptr)
    rows = tl.program_id(0) * BT + tl.arange(0, BT)[:, None]
    start = tl.program_id(1) * BN
    cols = start + tl.arange(0, BN)[None, :]
    keep_first, keep_second = _keep_pair(seed, slot // 2, rows, start, tokens, n, threshold, BN)
    keep = tl.where(slot % 2 == 0, keep_first, keep_second)
    tl.store(keep_ptr + slot * tokens * n + rows * n + cols, keep.to(tl.int8), mask=(rows < tokens) & (cols < n))


def drawn_masks(seed: torch.Tensor, slots: int, tokens: int, n: int, p: float) -> torch.Tensor:
    """(S, T, n) bool: the masks the kernels use for this seed (what the tests compare against)."""
    keep = torch.empty((slots, tokens, n), device=seed.device, dtype=torch.int8)
    grid = (triton.cdiv(tokens, 64), triton.cdiv(n, 64), slots)
    _mask_kernel[grid](keep, seed, tokens, n, drop_threshold(p), BT=64, BN=64)
    return keep.bool()
