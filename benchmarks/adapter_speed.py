"""Speed and memory of goat's adapters on one GPU; writes $OUT/benchmarks.md and $OUT/benchmarks.json.

0. check: goat's MoELoRALinear and the per-expert loop below compute the same function (eval, fp32);
1. fwd+bwd of one adapted bf16 nn.Linear under bf16 autocast: goat vs PEFT LoRA of equal rank vs the loop;
2. "SVD methods": torch.linalg.svd drivers and the Gram route on one square fp32 matrix, time and accuracy;
3. SVD init of a LLaMA-2-7B-shaped set (224 matrices) with goat.adapters.svd.selected_triplets, cold and cached;
   it starts no SVD chunk that would end past --budget s of the whole script, and then projects the cold time.
Outputs are rewritten after each section.  GPU: PYTHONUNBUFFERED=1 PYTHONPATH=. python3 benchmarks/adapter_speed.py
--out $OUT    CPU check: python benchmarks/adapter_speed.py --quick --out /tmp/bq  (tiny shapes, memory n/a)
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import peft
import torch
import torch.nn.functional as F
import transformers
from torch import nn

import goat.adapters.svd as svd_lib
from goat.adapters import apply_adapter, auxiliary_loss, method_config
from goat.adapters.goat import segment_indices
from goat.adapters.moe import MoELoRALinear

START = time.perf_counter()
E, TOP_K, DROPOUT, N_INPUTS, MODEL_ID = 8, 2, 0.05, 3, "bench-llama2-7b"
TIME_TARGET, MEMORY_TARGET, COLD_TARGET, CACHED_TARGET = 1.10, 1.05, 60.0, 5.0
LLAMA = {"q_proj": (4096, 4096), "k_proj": (4096, 4096), "v_proj": (4096, 4096), "o_proj": (4096, 4096),
         "gate_proj": (11008, 4096), "up_proj": (11008, 4096), "down_proj": (4096, 11008)}  # (out, in)
TINY = {"q_proj": (64, 64), "k_proj": (64, 64), "up_proj": (160, 64), "down_proj": (64, 160)}


def log(message: str) -> None:
    print(f"[{datetime.datetime.now():%H:%M:%S} +{time.perf_counter() - START:6.1f}s] {message}", flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def randn(shape, gen: torch.Generator, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(shape, generator=gen, device=gen.device, dtype=torch.bfloat16) * scale


class Holder(nn.Module):
    """A one-layer model; the adapters find its Linear under the name `proj`."""

    def __init__(self, lin: nn.Linear):
        super().__init__()
        self.proj = lin

    def forward(self, x):
        return self.proj(x)


class LoopMoE(nn.Module):
    """goat's layer computed as the official code does: softmax router, top-k, renormalise, then a Python loop over
    experts (gather routed tokens, dropout, B_e A_e, scale, index_add_). Copies goat's adapter parameters, shares its
    frozen base, records the reference balance loss. The output buffer starts at zero (the official code runs
    expert 0 on every token to allocate it)."""

    def __init__(self, layer: MoELoRALinear, balance_coef: float):
        super().__init__()
        self.base = layer.base_layer
        self.lora_A = nn.Parameter(layer.lora_A.detach().clone())  # (E*d, n)
        self.lora_B = nn.Parameter(layer.lora_B.detach().clone())  # (m, E*d)
        self.router = nn.Parameter(layer.routing.lora_router.weight.detach().clone())  # (E, n)
        self.register_buffer("scaling", layer.scaling.detach().clone())
        self.d, self.balance_coef, self.last_balance_loss = layer.expert_rank, balance_coef, None

    def forward(self, x):
        result = self.base(x)
        x2d = x.reshape(-1, x.shape[-1]).to(self.lora_A.dtype)
        probs = F.linear(x2d, self.router).float().softmax(dim=-1)
        top, index = probs.topk(TOP_K, dim=-1)
        top = top / top.sum(dim=-1, keepdim=True)
        counts = F.one_hot(index, E).sum((0, 1)).to(probs.dtype)
        self.last_balance_loss = E * (counts / x2d.shape[0] * probs.mean(0)).sum()
        moe = x2d.new_zeros(x2d.shape[0], self.lora_B.shape[0])
        for e in range(E):
            token, slot = torch.where(index == e)  # host sync, as in the official code
            rows = slice(e * self.d, (e + 1) * self.d)
            hidden = F.dropout(x2d[token], DROPOUT, self.training) @ self.lora_A[rows].t()
            out = (hidden @ self.lora_B[:, rows].t()) * (self.scaling[e] * top[token, slot])[:, None]
            moe.index_add_(0, token, out.to(moe.dtype))
        return result + moe.view(*x.shape[:-1], -1).to(result.dtype)


def adapted(weight: torch.Tensor, method: str, r: int) -> nn.Module:
    """Holder around a copy of `weight` (out, in), adapted by goat (apply_adapter) or PEFT LoRA, in train mode."""
    lin = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        lin.weight.copy_(weight)
    if method == "goat":
        return apply_adapter(Holder(lin), method_config("goat", r=r, lora_alpha=2 * r, svd_cache_dir=None)).train()
    config = peft.LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=DROPOUT, target_modules=["proj"])
    return peft.get_peft_model(Holder(lin), config).train()


def train_step(model: nn.Module, x: torch.Tensor, grad: torch.Tensor, params: list) -> None:
    """Zero grads; forward under bf16 autocast plus the balance-loss term a trainer adds; backward with `grad`."""
    for p in params + [x]:
        p.grad = None
    with torch.autocast(x.device.type, dtype=torch.bfloat16):
        out = model(x)
        aux = model.balance_coef * model.last_balance_loss if isinstance(model, LoopMoE) else auxiliary_loss(model)
    tensors, grads = ([out], [grad]) if aux is None else ([out, aux], [grad, torch.ones_like(aux)])
    torch.autograd.backward(tensors, grads)


def step_times_ms(step, count: int, device: torch.device) -> list[float]:
    """Milliseconds of each of `count` calls step(i): back-to-back CUDA events on the GPU, perf_counter on the CPU."""
    if device.type != "cuda":
        marks = [time.perf_counter()]
        for i in range(count):
            step(i)
            marks.append(time.perf_counter())
        return [1e3 * (b - a) for a, b in zip(marks, marks[1:], strict=False)]
    events = [torch.cuda.Event(enable_timing=True) for _ in range(count + 1)]
    events[0].record()
    for i in range(count):
        step(i)
        events[i + 1].record()
    torch.cuda.synchronize()
    return [a.elapsed_time(b) for a, b in zip(events, events[1:], strict=False)]


def cuda_memory_and_syncs(step, tensors: list) -> dict:
    """Peak memory of one step (absolute, and above what was allocated before it); host syncs in one step and the
    Python lines that issued them."""
    for t in tensors:
        t.grad = None
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step(0)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step(1)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    syncs = [f"{Path(w.filename).name}:{w.lineno}" for w in caught if "synchroniz" in str(w.message)]
    return {"peak_mb": peak / 2**20, "step_mb": (peak - before) / 2**20, "syncs": len(syncs),
            "sync_at": sorted(set(syncs))}


def measure(model: nn.Module, inputs: list, grad: torch.Tensor, warmup: int, repeats: int) -> dict:
    """Median step ms over `repeats` steps after `warmup`, rotating the inputs; on CUDA also memory and syncs."""
    params = [p for p in model.parameters() if p.requires_grad]

    def step(i):
        train_step(model, inputs[i % len(inputs)], grad, params)

    for i in range(warmup):
        step(i)
    row = {"ms": statistics.median(step_times_ms(step, repeats, grad.device)), "peak_mb": None, "step_mb": None,
           "syncs": None}
    return row | (cuda_memory_and_syncs(step, params + inputs) if grad.is_cuda else {})


def layer_benchmarks(shapes, tokens, ranks, device, warmup, repeats) -> list[dict]:
    """Section 1: one row per (out, in, T, r) with the goat / loop / peft measurements."""
    rows = []
    gen = torch.Generator(device=device).manual_seed(0)
    for m, n in shapes:
        weight = randn((m, n), gen, 0.02)
        data = {T: ([randn((T, n), gen).requires_grad_() for _ in range(N_INPUTS)], randn((T, m), gen)) for T in tokens}
        for r in ranks:
            models = {"goat": adapted(weight, "goat", r)}  # SVD init once per (shape, r)
            models["loop"] = LoopMoE(models["goat"].proj, models["goat"].goat_adapter.config.balance_coef).train()
            found = {T: {"out": m, "in": n, "T": T, "r": r} for T in tokens}
            for name in ("goat", "loop", "peft"):
                model = models.pop(name) if name in models else adapted(weight, "peft", r)
                for T, (inputs, grad) in data.items():
                    found[T][name] = measure(model, inputs, grad, warmup, repeats)
                    log(f"layer {m}x{n} T={T} r={r} {name}: {found[T][name]}")
                del model
            rows += found.values()
    return rows


def check_equivalence(device: torch.device) -> float:
    """Section 0: max abs difference of the output and of the x/A/B/router grads, goat vs loop (eval, fp32)."""
    torch.manual_seed(0)
    goat = adapted(torch.randn(80, 96, device=device) * 0.1, "goat", 16).eval()
    loop = LoopMoE(goat.proj, 0.0).eval()
    x = torch.randn(4, 16, 96, device=device, requires_grad=True)
    grad, found = torch.randn(4, 16, 80, device=device), []
    for model, params in ((goat, (goat.proj.lora_A, goat.proj.lora_B, goat.proj.routing.lora_router.weight)),
                          (loop, (loop.lora_A, loop.lora_B, loop.router))):
        x.grad = None
        out = model(x)
        out.backward(grad)
        found.append([out.detach(), x.grad.clone(), *(p.grad for p in params)])
    diff = max((a - b).abs().max().item() for a, b in zip(*found, strict=True))
    assert diff < 1e-3, f"goat layer and loop reference differ by {diff}"
    return diff


def svd_driver(W, driver):
    U, S, Vh = torch.linalg.svd(W, full_matrices=False, driver=driver)
    return U, S, Vh.mT


def gram_svd(W, dtype):
    """Thin SVD from eigh of the Gram matrix of the short side: sigma = sqrt(lambda), U = W V / sigma."""
    A = W.to(dtype)
    wide = A.shape[-2] < A.shape[-1]
    A = A.mT if wide else A
    lam, V = torch.linalg.eigh(A.mT @ A)
    S, V = lam.flip(-1).clamp_min(0).sqrt(), V.flip(-1)
    U = (A @ V) / S.clamp_min(torch.finfo(dtype).tiny)[..., None, :]
    return (V, S, U) if wide else (U, S, V)


def time_call(fn, device, repeats=3, slow=2.0):
    """(median s of `repeats` calls after a warm-up, runs, result); a warm-up slower than `slow` s is the timing."""
    times = []
    for _ in range(repeats + 1):
        sync(device)
        t0 = time.perf_counter()
        result = fn()
        sync(device)
        times.append(time.perf_counter() - t0)
        if times[0] > slow or not repeats:
            return times[0], 1, result
    return statistics.median(times[1:]), repeats, result


def accuracy(found, ref, idx) -> dict:
    """Max relative sigma error in the top / middle / bottom eighth of the spectrum, and the relative Frobenius
    error of sum_{i in idx} sigma_i u_i v_i^T (GOAT's selected triplets), against the fp64 reference."""
    (U, S, V), (rU, rS, rV) = [[t.double() for t in part] for part in (found, ref)]
    rel = (S - rS).abs() / rS.clamp_min(torch.finfo(torch.float64).tiny)
    h, band = rS.numel(), max(1, rS.numel() // 8)
    picked = [(u[:, idx] * s[idx]) @ v[:, idx].T for u, s, v in ((U, S, V), (rU, rS, rV))]
    return {"err_top": rel[:band].max().item(), "err_mid": rel[(h - band) // 2:(h + band) // 2].max().item(),
            "err_bottom": rel[-band:].max().item(),
            "recon_err": (torch.linalg.norm(picked[0] - picked[1]) / torch.linalg.norm(picked[1])).item()}


def svd_methods(size: int, device: torch.device) -> list[dict]:
    """Section 2: time and accuracy of each way to decompose one (size x size) fp32 matrix, plus a batch of 8."""
    gen = torch.Generator(device=device).manual_seed(1)
    W = randn((size, size), gen).float()
    idx = segment_indices(size, E, 1, "ours", torch.Generator().manual_seed(0)).to(device)
    seconds, _, ref = time_call(lambda: svd_driver(W.double(), None), device, repeats=0)
    rows = [{"method": "linalg.svd fp64 (reference)", "seconds": seconds, "runs": 1}]
    methods = {f"linalg.svd driver={d}": (lambda d=d: svd_driver(W, d)) for d in (None, "gesvd", "gesvdj", "gesvda")}
    methods |= {f"Gram eigh {dt}".replace("torch.float", "fp"): (lambda dt=dt: gram_svd(W, dt))
                for dt in (torch.float32, torch.float64)}
    for name, fn in methods.items():
        try:
            seconds, runs, found = time_call(fn, device)
            rows.append({"method": name, "seconds": seconds, "runs": runs, **accuracy(found, ref, idx)})
        except Exception as error:  # a driver this build or device lacks
            rows.append({"method": name, "error": str(error).strip().splitlines()[0][:100]})
        log(f"SVD method {rows[-1]}")
    stack = randn((8, size, size), gen).float()
    seconds, runs, _ = time_call(lambda: svd_driver(stack, None), device)
    rows.append({"method": "linalg.svd driver=None, batch of 8", "seconds": seconds, "runs": runs,
                 "per_matrix": seconds / 8})
    log(f"SVD method {rows[-1]}")
    return rows


class OutOfTime(Exception):
    pass


@contextlib.contextmanager
def watched_decompose(total: int, deadline: float, device: torch.device):
    """Wraps goat.adapters.svd._decompose (instrumentation only) to log each chunk with a timestamp, and to stop
    the call before a chunk that would end past `deadline` (perf_counter) at the rate seen so far."""
    original, state, begin = svd_lib._decompose, {"matrices": 0, "elements": 0}, time.perf_counter()

    def decompose(stack, *args, **kwargs):  # whatever the library's signature
        rate = (time.perf_counter() - begin) / state["elements"] if state["elements"] else 0.0
        if rate and time.perf_counter() + rate * stack.numel() > deadline:
            raise OutOfTime
        result = original(stack, *args, **kwargs)
        sync(device)
        state["matrices"] += stack.shape[0]
        state["elements"] += stack.numel()
        log(f"  SVD chunk {tuple(stack.shape)} done: {state['matrices']}/{total} matrices")
        return result

    svd_lib._decompose = decompose
    try:
        yield state
    finally:
        svd_lib._decompose = original


def svd_init(shapes: dict, layers: int, device: torch.device, deadline: float) -> dict:
    """Section 3: selected_triplets on random bf16 weights (GOAT indices, r=8, E=8, d=1), cold then cached."""
    gen = torch.Generator(device=device).manual_seed(0)
    names = [f"layers.{layer}.{name}" for layer in range(layers) for name in shapes]
    weights = {name: randn(shapes[name.split(".")[-1]], gen, 0.02) for name in names}
    indices = {name: segment_indices(min(w.shape), E, 1, "ours", torch.Generator().manual_seed(0))
               for name, w in weights.items()}
    result = {"matrices": len(weights), "partial": False}
    with tempfile.TemporaryDirectory() as cache:
        log(f"SVD init: {len(weights)} matrices, cold")
        t0 = time.perf_counter()
        with watched_decompose(len(weights), deadline, device) as state:
            try:
                report = svd_lib.selected_triplets(weights, indices, MODEL_ID, cache)
                result.update(cold_s=report.seconds, cold_decomposed=report.decomposed)
            except OutOfTime:
                elapsed, total = time.perf_counter() - t0, sum(w.numel() for w in weights.values())
                result.update(partial=True, cold_s=elapsed, cold_decomposed=state["matrices"],
                              cold_projected_s=elapsed * total / max(state["elements"], 1))
        done = {name: w for name, w in weights.items()
                if (Path(cache) / f"{svd_lib.cache_key(MODEL_ID, name, w, indices[name])}.safetensors").exists()}
        log(f"SVD init: cold {result['cold_s']:.1f} s; cached run over {len(done)} matrices")
        report = svd_lib.selected_triplets(done, {n: indices[n] for n in done}, MODEL_ID, cache)
    return result | {"cached_s": report.seconds, "cached_from_cache": report.from_cache,
                     "cached_decomposed": report.decomposed}


def fmt(value, spec=".2f") -> str:
    return "n/a" if value is None else format(value, spec)


def met(value, target) -> str:
    return "n/a" if value is None else ("yes" if value <= target else "no")


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def layer_tables(layers: list[dict]) -> list[str]:
    """Step-time and memory tables of section 1."""
    time_rows, mem_rows = [], []
    for row in layers:
        g, p, lp = row["goat"], row["peft"], row["loop"]
        ratio = {k: None if g[k] is None else g[k] / p[k] for k in ("ms", "peak_mb", "step_mb")}
        key = [f"{row['out']}×{row['in']}", row["T"], row["r"]]
        time_rows.append(key + [fmt(g["ms"], ".3f"), fmt(p["ms"], ".3f"), fmt(lp["ms"], ".3f"), fmt(ratio["ms"]),
                                f"≤ {TIME_TARGET}", met(ratio["ms"], TIME_TARGET),
                                "/".join(fmt(v["syncs"], "d") for v in (g, p, lp))])
        mem_rows.append(key + [fmt(g["peak_mb"], ".0f"), fmt(p["peak_mb"], ".0f"), fmt(ratio["peak_mb"], ".3f"),
                               met(ratio["peak_mb"], MEMORY_TARGET), fmt(g["step_mb"], ".0f"), fmt(p["step_mb"], ".0f"),
                               fmt(ratio["step_mb"], ".3f"), met(ratio["step_mb"], MEMORY_TARGET)])
    return ["## Adapted Linear, forward+backward, bf16 autocast (E=8, top-2, dropout 0.05, train mode)\n\n"
            "Median step ms (out×in = weight shape); host syncs in one step goat/PEFT/loop.\n\n"
            + table(["out×in", "T", "r", "goat ms", "PEFT ms", "loop ms", "goat/PEFT", "target", "met",
                     "syncs g/p/l"], time_rows),
            "Peak memory MB. Absolute: max_memory_allocated, includes the base weight and the benchmark's inputs; "
            f"step: peak minus memory allocated before the step. Target ≤ {MEMORY_TARGET}× PEFT.\n\n"
            + table(["out×in", "T", "r", "goat peak", "PEFT peak", "ratio", "met", "goat step", "PEFT step",
                     "step ratio", "met (step)"], mem_rows)]


def render(results: dict) -> str:
    """All results so far as markdown."""
    env = results["env"]
    parts = [f"# goat adapter benchmarks\n\n{env['device']} · torch {env['torch']} · peft {env['peft']} · "
             f"transformers {env['transformers']} · {env['date']} · `{env['args']}`\n\nCheck: goat layer vs "
             f"per-expert loop (eval, fp32), max abs diff of output and grads = {results['equivalence']:.2e}"]
    parts += layer_tables(results.get("layers", [])) if results.get("layers") else []
    if "svd_methods" in results:
        rows = [[r["method"], fmt(r.get("seconds"), ".3f"), r.get("runs", ""), fmt(r.get("per_matrix"), ".3f"),
                 *(fmt(r.get(k), ".1e") for k in ("err_top", "err_mid", "err_bottom", "recon_err")),
                 r.get("error", "")] for r in results["svd_methods"]]
        parts.append(f"## SVD methods (one {results['svd_size']}² fp32 matrix of random bf16 values)\n\nSeconds: "
                     "median of 3 after a warm-up (runs=1: the warm-up alone, it took over 2 s). σ err: max relative "
                     "error in the top / middle / bottom eighth of the spectrum; recon err: relative error of "
                     "Σ σᵢuᵢvᵢᵀ over GOAT's selected indices (r=8, d=1); both against the fp64 SVD.\n\n"
                     + table(["method", "s", "runs", "s/matrix", "σ err top", "σ err mid", "σ err bottom",
                              "GOAT recon err", "error"], rows))
    if "svd_init" in results:
        init = results["svd_init"]
        cold = init.get("cold_projected_s", init["cold_s"])
        note = (f" Stopped at the time budget after {init['cold_decomposed']} of {init['matrices']} matrices in "
                f"{init['cold_s']:.1f} s; the cold time is projected by element count; the cached run covers those "
                f"{init['cached_from_cache']}." if init["partial"] else "")
        rows = [["cold (projected)" if init["partial"] else "cold", fmt(cold, ".1f"), init["cold_decomposed"], 0,
                 f"≤ {COLD_TARGET:.0f} s", met(cold, COLD_TARGET)],
                ["cached", fmt(init["cached_s"], ".2f"), init["cached_decomposed"], init["cached_from_cache"],
                 f"≤ {CACHED_TARGET:.0f} s", met(init["cached_s"], CACHED_TARGET)]]
        parts.append(f"## SVD init, LLaMA-2-7B-shaped ({init['matrices']} matrices, r=8, E=8, d=1)\n\n"
                     f"goat.adapters.svd.selected_triplets, fresh cache dir, then again on the same dir.{note}\n\n"
                     + table(["run", "seconds", "decomposed", "from cache", "target", "met"], rows))
    return "\n\n".join(parts) + "\n"


def save(results: dict, out: Path) -> str:
    text = render(results)
    (out / "benchmarks.md").write_text(text)
    (out / "benchmarks.json").write_text(json.dumps(results, indent=2))
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--quick", action="store_true", help="tiny shapes, few repeats (CPU check)")
    parser.add_argument("--budget", type=float, default=480.0, help="seconds for the whole script (SVD init stops)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    shapes, tokens, warmup, repeats, svd_size, svd_shapes, svd_layers = (
        ([(256, 256), (512, 256), (256, 512)], [64], 1, 2, 256, TINY, 1) if args.quick else
        ([(4096, 4096), (11008, 4096), (4096, 11008)], [2048, 8192], 10, 50, 4096, LLAMA, 32))
    env = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__,
           "peft": peft.__version__, "transformers": transformers.__version__, "cuda": torch.version.cuda,
           "date": datetime.datetime.now().isoformat(timespec="seconds"),
           "args": " ".join(f"--{k} {v}" for k, v in vars(args).items())}
    results = {"env": env, "svd_size": svd_size, "targets": {"time": TIME_TARGET, "memory": MEMORY_TARGET,
                                                             "svd_cold_s": COLD_TARGET, "svd_cached_s": CACHED_TARGET}}
    log(f"device {env['device']}")
    results["equivalence"] = check_equivalence(device)
    log(f"goat vs loop, eval fp32: max abs diff {results['equivalence']:.2e}")
    results["layers"] = layer_benchmarks(shapes, tokens, (8, 32), device, warmup, repeats)
    save(results, args.out)
    results["svd_methods"] = svd_methods(svd_size, device)
    save(results, args.out)
    results["svd_init"] = svd_init(svd_shapes, svd_layers, device, START + args.budget - 30.0)
    print(save(results, args.out), flush=True)
    log("done")


if __name__ == "__main__":
    main()
