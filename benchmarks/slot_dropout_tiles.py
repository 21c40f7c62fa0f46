"""The fused Triton kernels' launch settings (goat/adapters/slot_dropout_triton.py, `Tiles`) timed on a GPU at the
LLaMA-2-7B shapes, beside PEFT LoRA's down-projection with dropout compiled by torch.compile in the same run.

Per shape (tokens 4x512 and 16x512, input features 4096 and 11008; r=32, E=8, top-2, dropout 0.05, bf16) and per
kernel (down: forward with the router's logits; grad_x; grad_a: grad_A and the router's grad_W), every candidate
in CANDIDATES is timed through the launcher the custom ops call (split sums included), and the table gives the
current setting (TILES), the fastest candidate and its gain. The LoRA row: forward and backward of
F.linear(F.dropout(x), A) compiled, what PEFT LoRA's lora_A costs inside a compiled step; goat's three kernels do
that work for two dropout masks plus the router.

GPU: PYTHONPATH=. python3 benchmarks/slot_dropout_tiles.py --out $OUT/tiles
CPU check (Triton's interpreter, two candidates, a tiny shape):
    TRITON_INTERPRET=1 python benchmarks/slot_dropout_tiles.py --tiny --out /tmp/tiles
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import triton

from goat.adapters import slot_dropout_triton as kernels
from goat.adapters.slot_dropout_triton import Tiles

R, E, SLOTS, P = 32, 8, 2, 0.05
SHAPES = [(tokens, n) for tokens in (4 * 512, 16 * 512) for n in (4096, 11008)]
CANDIDATES = {
    "down": [Tiles(rows, cols, warps, stages) for rows, cols, warps, stages in
             itertools.product((32, 64, 128), (64, 128), (4, 8), (2, 3))],
    "grad_x": [Tiles(rows, cols, warps, stages) for rows, cols, warps, stages in
               itertools.product((32, 64, 128), (64, 128), (4, 8), (2, 3))],
    "grad_a": [Tiles(rows, cols, warps, stages, splits) for rows, cols, warps, stages, splits in
               itertools.product((32, 64, 128), (64, 128), (4, 8), (2, 3), (8, 16))],
}  # fmt: skip
TINY_SHAPES = [(70, 200)]
TINY_CANDIDATES = {name: [Tiles(), Tiles(rows=32, cols=128, token_splits=3)] for name in CANDIDATES}


def milliseconds(call, device: torch.device, repeats: int) -> float:
    """Median ms of call() over `repeats` after two warm-up calls (CUDA events on a GPU, wall clock elsewhere)."""
    for _ in range(2):
        call()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            call()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            began = time.perf_counter()
            call()
            times.append(1e3 * (time.perf_counter() - began))
    return statistics.median(times)


def inputs(tokens: int, n: int, device: torch.device, dtype: torch.dtype) -> dict:
    gen = torch.Generator(device=device).manual_seed(0)
    return {
        "x": torch.randn(tokens, n, device=device, dtype=dtype, generator=gen),
        "A": torch.randn(R, n, device=device, dtype=dtype, generator=gen) / n**0.5,
        "W": torch.randn(E, n, device=device, dtype=dtype, generator=gen) / n**0.5,
        "seed": torch.tensor([12345], device=device),
        "grad_act": torch.randn(SLOTS, tokens, R, device=device, dtype=dtype, generator=gen),
        "grad_logits": torch.randn(tokens, E, device=device, dtype=torch.float32, generator=gen),
    }


def launcher(name: str, t: dict, tiles: Tiles):
    """The kernel `name` as the custom ops launch it, with `tiles`."""
    if name == "down":
        return lambda: kernels.down(t["x"], t["A"], t["W"], t["seed"], SLOTS, P, tiles)
    if name == "grad_x":
        return lambda: kernels.down_grad_x(t["grad_act"], t["grad_logits"], t["A"], t["W"], t["seed"], P, tiles)
    return lambda: kernels.down_grad_weights(t["grad_act"], t["grad_logits"], t["x"], t["seed"], P, R, E, tiles)


def lora_down_ms(t: dict, device: torch.device, repeats: int) -> float | None:
    """Forward + backward of a compiled dropout(x) @ A^T with grad_x and grad_A: PEFT LoRA's lora_A in a compiled
    step. None where torch.compile cannot run (the CPU check without a compiler)."""
    x = t["x"].detach().clone().requires_grad_()
    A = t["A"].detach().clone().requires_grad_()
    grad = t["grad_act"][0]
    down = torch.compile(lambda x, A: F.linear(F.dropout(x, P, training=True), A))

    def step():
        x.grad = A.grad = None
        down(x, A).backward(grad)

    try:
        return milliseconds(step, device, repeats)
    except Exception as error:  # noqa: BLE001 - a missing compiler only costs the reference row
        print(f"LoRA reference skipped: {type(error).__name__}: {str(error).splitlines()[0][:200]}", flush=True)
        return None


def measure(shapes, candidates, device: torch.device, dtype: torch.dtype, repeats: int) -> list[dict]:
    rows = []
    for tokens, n in shapes:
        t = inputs(tokens, n, device, dtype)
        row = {"tokens": tokens, "n": n, "lora_ms": lora_down_ms(t, device, repeats), "kernels": {}}
        for name, options in candidates.items():
            timed = []
            for tiles in options:
                try:
                    ms = milliseconds(launcher(name, t, tiles), device, repeats)
                    timed.append({"tiles": tiles.__dict__, "ms": ms})
                except Exception as error:  # noqa: BLE001 - a tile too large for the GPU's registers or shared memory
                    timed.append({"tiles": tiles.__dict__, "ms": None, "error": str(error).splitlines()[0][:200]})
            current = milliseconds(launcher(name, t, kernels.TILES[name]), device, repeats)
            row["kernels"][name] = {"current": kernels.TILES[name].__dict__, "current_ms": current, "timed": timed}
            best = min((c for c in timed if c["ms"] is not None), key=lambda c: c["ms"])
            print(f"{tokens}x{n} {name}: current {current:.3f} ms, best {best['ms']:.3f} {best['tiles']}", flush=True)
        rows.append(row)
    return rows


def tiles_text(tiles: dict, name: str) -> str:
    text = f"{tiles['rows']}x{tiles['cols']} w{tiles['warps']} s{tiles['stages']}"
    return text + (f" splits {tiles['token_splits']}" if name == "grad_a" else "")


def render(results: dict) -> str:
    lines = [
        "# Fused dropout kernels: launch settings at the LLaMA-2-7B shapes",
        "",
        f"{results['device']} · torch {results['torch']} · triton {results['triton']} · {results['date']}",
        "",
        f"r={R}, E={E}, top-{SLOTS}, dropout {P}, {results['dtype']}; median ms of {results['repeats']} calls. LoRA: "
        "forward + backward of a compiled dropout(x) @ A^T (PEFT LoRA's lora_A in a compiled step).",
        "",
        "| tokens x n | kernel | current | ms | fastest | ms | gain |",
        "|---|---|---|---|---|---|---|",
    ]
    totals = []
    for row in results["rows"]:
        shape, now, fastest = f"{row['tokens']}x{row['n']}", 0.0, 0.0
        for name, k in row["kernels"].items():
            best = min((c for c in k["timed"] if c["ms"] is not None), key=lambda c: c["ms"])
            now, fastest = now + k["current_ms"], fastest + best["ms"]
            gain = k["current_ms"] / best["ms"]
            lines.append(f"| {shape} | {name} | {tiles_text(k['current'], name)} | {k['current_ms']:.3f} | "
                         f"{tiles_text(best['tiles'], name)} | {best['ms']:.3f} | {gain:.2f}x |")
        totals.append((shape, now, fastest, row["lora_ms"]))
    lines += ["", "| tokens x n | goat's 3 kernels, current ms | fastest ms | LoRA down-projection ms | x LoRA |"]
    lines += ["|---|---|---|---|---|"]
    for shape, now, fastest, lora in totals:
        lora_text, ratio = (f"{lora:.3f}", f"{now / lora:.2f}x") if lora else ("n/a", "n/a")
        lines.append(f"| {shape} | {now:.3f} | {fastest:.3f} | {lora_text} | {ratio} |")
    failed = sum(c["ms"] is None for row in results["rows"] for k in row["kernels"].values() for c in k["timed"])
    lines += ["", f"Candidates that failed to launch (resources): {failed}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--tiny", action="store_true", help="one small shape, two candidates (CPU interpreter check)")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    shapes, candidates = (TINY_SHAPES, TINY_CANDIDATES) if args.tiny else (SHAPES, CANDIDATES)
    repeats = 2 if args.tiny else args.repeats
    results = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "CPU (Triton interpreter)",
        "torch": torch.__version__, "triton": triton.__version__, "dtype": str(dtype).removeprefix("torch."),
        "date": datetime.datetime.now().isoformat(timespec="seconds"), "repeats": repeats,
        "rows": measure(shapes, candidates, device, dtype, repeats),
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "slot_dropout_tiles.json").write_text(json.dumps(results, indent=1) + "\n")
    text = render(results)
    (args.out / "slot_dropout_tiles.md").write_text(text)
    print(text)
    return results


if __name__ == "__main__":
    main()
