"""Training step and greedy decoding of a LLaMA-2-7B-shaped model adapted by each method, side by side, on one GPU.

Random bf16 weights built on the GPU (no download; `--layers N` keeps N of the 32 blocks), each method applied through
`goat.adapters.apply_adapter` (r=32, alpha=64, dropout 0.05, E=8, top-2 where the method routes, all seven
projections). Per method:
  1. training, eager and in each compiled `--modes` (`goat.compile.compile_blocks`, fresh dynamo state): median step
     ms of `--steps` after `--warmup` (the first step, compilation included, reported apart), tokens/s, peak GiB,
     host syncs in one step, adapter init s;
  2. greedy decoding of `--new-tokens` after a `--prompt`-token prompt: the fast path (one static KV cache reused by
     every call; on CUDA the decoding step compiled by transformers itself through `compile_config`, CUDA graphs)
     and the eager dynamic-cache baseline; ms/token = (t(N tokens) - t(1 token)) / (N - 1), the prefill left out.
goat-official: the official layer, eager only (`--official-layer PATH`: a local copy of Facico/GOAT-PEFT
goat/peta/src/goat/layer.py, never shipped or downloaded here; otherwise the row says why it is missing).
pissa: initialised through goat's batched SVD (svd_shrink=True: other initial values) unless `--pissa-peft-svd`
(PEFT's full torch.linalg.svd of all 224 matrices, minutes); its layers and step are PEFT's LoRA either way.
<out>/model_speed.json and .md are rewritten after every measurement; `--shapes ''` or `--decode-batches ''` skips
a section. GPU: PYTHONUNBUFFERED=1 PYTHONPATH=. python3 benchmarks/model_speed.py --out $OUT
CPU check: python benchmarks/model_speed.py --tiny --out /tmp/ms  (tiny model, fp32, eager, memory n/a)
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import gc
import importlib.util
import inspect
import json
import math
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import peft
import torch
import transformers
from torch import nn
from torch.profiler import ProfilerActivity, profile
from transformers import AutoModelForCausalLM, CompileConfig, LlamaConfig, LlamaForCausalLM, StaticCache

from goat.adapters import apply_adapter, auxiliary_loss, method_config, moe_layers
from goat.adapters.surgery import count_parameters, find_targets, freeze_except, replace_module
from goat.compile import compile_blocks

START = time.perf_counter()
LORA = {"r": 32, "lora_alpha": 64, "lora_dropout": 0.05,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}
TOP_2 = {"num_experts": 8, "top_k": 2}
# What each method uses beyond LORA: hydralora's preset routes densely (top_k = E) itself, AdaMoLE's threshold gate
# picks how many experts are active.
OPTIONS = {"lora": {}, "dora": {}, "pissa": {}, "goat": TOP_2, "molora": TOP_2,
           "hydralora": {"num_experts": 8}, "adamole": {"num_experts": 8}, "goat-official": TOP_2,
           # what the dropout costs (a variant is its method's preset with these changes; not in the default run):
           # one mask per token instead of one per routed expert, and no dropout at all, beside LoRA's floor
           "goat-shared": {**TOP_2, "dropout_mode": "shared"}, "goat-nodrop": {**TOP_2, "lora_dropout": 0.0},
           "lora-nodrop": {"lora_dropout": 0.0},
           # the dropout kernels named: goat, molora and adamole take the fused Triton ones on CUDA by default
           # (auto), the -torch variants the torch ops (the default before), the -fused ones Triton explicitly
           "goat-fused": {**TOP_2, "dropout_kernel": "triton"}, "molora-fused": {**TOP_2, "dropout_kernel": "triton"},
           "goat-torch": {**TOP_2, "dropout_kernel": "torch"}, "molora-torch": {**TOP_2, "dropout_kernel": "torch"},
           # one mask for all experts through the same kernels: AdaMoLE's threshold and router (its default on
           # CUDA since routed-b), HydraLoRA's router (not its default), from the kernels' loads of x
           "adamole-fused": {"num_experts": 8, "dropout_kernel": "triton"},
           "adamole-torch": {"num_experts": 8, "dropout_kernel": "torch"},
           "hydralora-fused": {"num_experts": 8, "dropout_kernel": "triton"}}
VARIANTS = ("goat-shared", "goat-nodrop", "lora-nodrop", "goat-fused", "molora-fused", "goat-torch", "molora-torch",
            "adamole-fused", "adamole-torch", "hydralora-fused")
METHODS = tuple(OPTIONS)
EAGER_ONLY = ("goat-official",)
OFFICIAL_BALANCE_COEF = 1e-3  # goat's AdapterConfig.balance_coef default, lambda of the official scripts
LLAMA_7B = {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
            "num_key_value_heads": 32, "vocab_size": 32000, "max_position_embeddings": 4096}
TINY = {"hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 4, "vocab_size": 128, "max_position_embeddings": 128}
# generate's KV-cache keyword: `cache` from transformers ~5.2x (`past_key_values` deprecated), `past_key_values` before
CACHE_KEYWORD = "cache" if "cache" in inspect.signature(LlamaForCausalLM.forward).parameters else "past_key_values"
PROFILES = {  # defaults of the GPU run and of --tiny
    "full": {"shapes": "4x512,16x512", "steps": 10, "warmup": 3, "modes": "eager,default", "decode_batches": "8,64",
             "new_tokens": 32, "prompt": 64},
    "tiny": {"shapes": "2x16", "steps": 2, "warmup": 1, "modes": "eager", "decode_batches": "2", "new_tokens": 4,
             "prompt": 8}}


def log(message: str) -> None:
    print(f"[{datetime.datetime.now():%H:%M:%S} +{time.perf_counter() - START:7.1f}s] {message}", flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def wall_seconds(call, device: torch.device) -> float:
    """Seconds of call(), the device's queued work included (synchronized before and after)."""
    sync(device)
    began = time.perf_counter()
    call()
    sync(device)
    return time.perf_counter() - began


@dataclass
class Run:
    """The settings, the results so far (rewritten to disk at each change) and the time budget."""

    args: argparse.Namespace
    device: torch.device
    results: dict
    spent: dict = field(default_factory=dict)  # kind of work -> longest seconds it took so far

    def autocast(self):
        if self.device.type != "cuda":
            return contextlib.nullcontext()  # the CPU check runs fp32
        return torch.autocast("cuda", dtype=torch.bfloat16)

    def allows(self, kind: str, what: str) -> bool:
        """False (and the skip recorded) when the longest earlier work of this kind would end past --budget."""
        expected = self.spent.get(kind, 0.0)
        if time.perf_counter() - START + expected <= self.args.budget:
            return True
        log(f"skipped {what}: {expected:.0f} s expected, budget {self.args.budget:.0f} s")
        self.results["skipped"].append(what)
        return False

    @contextlib.contextmanager
    def timed(self, kind: str):
        began = time.perf_counter()
        yield
        self.spent[kind] = max(self.spent.get(kind, 0.0), time.perf_counter() - began)

    def record(self, section: str, row: dict) -> None:
        self.results[section].append(row)
        save(self)


@dataclass
class Adapted:
    model: nn.Module | None  # None: the method could not be built here (see note)
    aux: object = None  # model -> auxiliary loss tensor or None
    init_s: float | None = None
    trainable: int | None = None
    note: str = ""
    compiled: bool = False  # compile_blocks ran on it: never measured in another mode


# ----- models -----


def build_base(run: Run) -> nn.Module:
    """The LLaMA-shaped causal LM with the same random weights for every method, in train mode, no KV cache."""
    shape = TINY if run.args.tiny else {**LLAMA_7B, "num_hidden_layers": run.args.layers}
    torch.manual_seed(0)
    with torch.device(run.device):
        model = AutoModelForCausalLM.from_config(LlamaConfig(**shape, use_cache=False),
                                                 dtype=torch.float32 if run.args.tiny else torch.bfloat16)
    return model.train()


def wrap_official(model: nn.Module, path: Path, cfg) -> nn.Module:
    """Wraps each target nn.Linear in the official GOAT layer, as the official model code does.

    Expects in `path` (Facico/GOAT-PEFT goat/peta/src/goat/layer.py) class LinearGOATLayer(base_layer, adapter_name,
    lora_rank, lora_alpha, lora_dropout, init_lora_weights, num_experts, top_k, init_type, init_cof): a PEFT
    BaseTunerLayer computing base_layer(x) + moe_layer[adapter](x) with a Python loop over experts, parameters named
    lora_A / lora_B / lora_gating, and modules keeping `layer_loss` (the balance loss) after each forward. Its layers
    are built in fp32 on the base layer's device. init_type="mole" (kaiming A, zero B): its "goat" init runs a full
    torch.linalg.svd per matrix, and the step does not depend on the initial values.
    """
    spec = importlib.util.spec_from_file_location("official_goat_layer", path)
    official = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(official)
    freeze_except(model, [])  # the base model; the official layers' own parameters are created trainable
    for name in find_targets(model, cfg.target_modules, []):
        base = model.get_submodule(name)
        with torch.device(base.weight.device):
            layer = official.LinearGOATLayer(base, "default", lora_rank=cfg.r, lora_alpha=cfg.lora_alpha,
                                             lora_dropout=cfg.lora_dropout, num_experts=cfg.num_experts,
                                             top_k=cfg.top_k, init_type="mole")
        replace_module(model, name, layer)
    return model


def official_aux_loss(model: nn.Module) -> torch.Tensor | None:
    """lambda * sum of the official layers' balance losses (`layer_loss`) from the last forward."""
    losses = [m.layer_loss for m in model.modules() if isinstance(getattr(m, "layer_loss", None), torch.Tensor)]
    return OFFICIAL_BALANCE_COEF * sum(losses) if losses else None


def adapt(run: Run, method: str) -> Adapted:
    """A fresh base model adapted by `method`; init_s times the adapter surgery and its initialisation."""
    official = run.args.official_layer
    if method == "goat-official" and (official is None or not official.is_file()):
        return Adapted(None, note=f"n/a: --official-layer {official} is not a file (never shipped or downloaded)")
    svd = {"svd_shrink": True} if method == "pissa" and not run.args.pissa_peft_svd else {}
    cache = None if run.args.svd_cache is None else str(run.args.svd_cache)
    preset = method.split("-")[0]  # goat-official, goat-shared, lora-nodrop: their method's preset
    cfg = method_config(preset, **{**LORA, **OPTIONS[method]}, **svd, svd_cache_dir=cache)
    model = build_base(run)
    sync(run.device)
    began = time.perf_counter()
    if method == "goat-official":
        model, aux = wrap_official(model, official, cfg), official_aux_loss
    else:
        model = apply_adapter(model, cfg)
        routed = list(moe_layers(model))  # listed once, as the trainer does: a scan of 7B's modules takes ms
        aux = functools.partial(layers_aux_loss, routed)
    sync(run.device)
    return Adapted(model, aux, time.perf_counter() - began, count_parameters(model)[0])


def layers_aux_loss(routed: list, model: nn.Module) -> torch.Tensor | None:
    """goat's balance loss from the MoE layers listed once (`model` is there for the official layer's signature)."""
    return auxiliary_loss(routed)


def free_memory() -> None:
    """Hands the memory of unreferenced models and optimizers back to the allocator's pool."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ----- training -----


def batches(run: Run, vocab: int) -> dict[str, dict]:
    """One fixed random micro-batch per --shapes entry "BxL": input_ids = labels (B, L), attention_mask of ones."""
    gen = torch.Generator().manual_seed(1)
    found = {}
    for shape in filter(None, run.args.shapes.split(",")):
        b, length = (int(v) for v in shape.split("x"))
        ids = torch.randint(vocab, (b, length), generator=gen).to(run.device)
        found[shape] = {"input_ids": ids, "labels": ids, "attention_mask": torch.ones_like(ids)}
    return found


def train_step(run: Run, adapted: Adapted, batch: dict, optimizer: torch.optim.Optimizer) -> None:
    """Forward with labels (+ the auxiliary balance loss), backward, AdamW step, zero_grad."""
    if run.device.type == "cuda":
        torch.compiler.cudagraph_mark_step_begin()  # a new iteration for CUDA-graph modes; harmless otherwise
    with run.autocast():
        loss = adapted.model(**batch, use_cache=False).loss
        aux = adapted.aux(adapted.model)
        if aux is not None:
            loss = loss + aux
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def host_syncs(step) -> int:
    """Host-device synchronisations in one step (torch's sync debug mode turns each into a warning)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    return sum("synchroniz" in str(w.message) for w in caught)


def measure_training(run: Run, method: str, mode: str, adapted: Adapted) -> None:
    """One row per shape: first step s (compilation included), median step ms, tokens/s, peak GiB, host syncs."""
    params = [p for p in adapted.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, fused=run.device.type == "cuda")
    cuda = run.device.type == "cuda"
    for shape, batch in batches(run, adapted.model.config.vocab_size).items():
        if not run.allows(f"train {mode}", f"{method} {mode} {shape}"):
            continue
        with run.timed(f"train {mode}"):
            step = functools.partial(train_step, run, adapted, batch, optimizer)
            if cuda:  # from the first step: CUDA graphs allocate a step's activations only while they capture it
                torch.cuda.reset_peak_memory_stats()
            try:
                first_s = wall_seconds(step, run.device)
                for _ in range(run.args.warmup - 1):
                    step()
                median_ms = 1e3 * statistics.median(wall_seconds(step, run.device) for _ in range(run.args.steps))
            except torch.OutOfMemoryError:  # the official layer at 16x512: a row that says so, and the run goes on
                median_ms = None
            peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
            if median_ms is None:
                optimizer.zero_grad(set_to_none=True)
                free_memory()
                note = f"out of memory at {shape} ({fmt(peak)} GiB allocated at the peak)"
                run.record("train", {"method": method, "mode": mode, "note": note})
                log(f"train {method} {mode} {shape}: {note}")
                continue
            row = {"method": method, "mode": mode, "shape": shape, "step_ms": median_ms,
                   "tokens_per_s": batch["input_ids"].numel() / (median_ms / 1e3), "peak_gib": peak,
                   "first_step_s": first_s, "init_s": adapted.init_s, "syncs": host_syncs(step) if cuda else None,
                   "trainable": adapted.trainable}
            if run.args.profile:
                row["kernels"] = profile_step(run, step, f"{method} {mode} {shape}")
        run.record("train", row)
        log(f"train {method} {mode} {shape}: {median_ms:.1f} ms, {row['tokens_per_s']:.0f} tok/s, first step "
            f"{first_s:.1f} s, peak {fmt(peak)} GiB, syncs {fmt(row['syncs'], 'd')}")


def profile_step(run: Run, step, title: str) -> int:
    """One step under torch.profiler: appends its busiest kernels to <out>/profiles.txt; returns the number of
    device kernels it launched (on the CPU: the number of operator calls)."""
    cuda = run.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        step()
        sync(run.device)
    events = prof.events()
    if cuda:
        launched = sum(1 for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
    else:
        launched = len(events)
    sort_by = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=sort_by, row_limit=30, max_name_column_width=90)
    path = Path(run.args.out) / "profiles.txt"
    with path.open("a") as out:
        out.write(f"## {title}: {launched} {'kernels' if cuda else 'operator calls'}\n\n{table}\n\n")
    return launched


# ----- decoding -----


def generate_seconds(run: Run, model: nn.Module, prompt: dict, new_tokens: int, cache: StaticCache | None) -> float:
    """Wall seconds of one greedy generate of exactly `new_tokens` tokens (a PeftModel's generate for PEFT); the fast
    path when `cache` is a static cache (emptied first) or None with --fresh-static-cache, the dynamic cache else."""
    options = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False, "pad_token_id": 0,
               "use_cache": True}
    fast = cache is not None or run.args.fresh_static_cache
    if cache is not None:
        cache.reset()  # in place: the tensors keep their addresses
        options[CACHE_KEYWORD] = cache
    elif fast:
        options["cache_implementation"] = "static"  # transformers allocates a new one per call
    if fast and run.device.type == "cuda":  # transformers compiles the decoding step itself; the prefill stays eager
        options["compile_config"] = CompileConfig(fullgraph=False, dynamic=False, mode="reduce-overhead")

    def generate():
        with run.autocast():
            out = model.generate(**prompt, **options)
        if out.shape[1] != prompt["input_ids"].shape[1] + new_tokens:
            raise RuntimeError(f"generate returned {out.shape[1]} positions, expected prompt + {new_tokens}")

    return wall_seconds(generate, run.device)


def ms_per_token(run: Run, model: nn.Module, prompt: dict, fast: bool) -> dict:
    """ms per generated token past the first: medians of 3 generates of N and of 1 token, after warm-up generates of
    N until three in a row agree within 10% (at least 5 when compiled, at most 10). The first warm-up includes
    compilation. The fast path reuses one static cache: CUDA graph trees re-record the decoding step whenever the
    addresses of the cache's tensors change, and with a new cache per call (--fresh-static-cache) goat's MoE models
    ran 20x slower than replay for 3 to 6+ calls (2 layers, H200)."""
    n = run.args.new_tokens
    cache = None
    if fast and not run.args.fresh_static_cache:
        cache = StaticCache(config=model.config, max_cache_len=prompt["input_ids"].shape[1] + n)
    least = 5 if fast and run.device.type == "cuda" else 2
    warmup = [generate_seconds(run, model, prompt, n, cache)]
    while len(warmup) < 10 and (len(warmup) < least or not settled(warmup[-3:])):
        warmup.append(generate_seconds(run, model, prompt, n, cache))
    long = [generate_seconds(run, model, prompt, n, cache) for _ in range(3)]
    short = [generate_seconds(run, model, prompt, 1, cache) for _ in range(3)]
    ms = 1e3 * (statistics.median(long) - statistics.median(short)) / (n - 1)
    return {"ms_per_token": ms, "warmup_s": warmup[0], "warmups_s": warmup, "seconds_n": long, "seconds_1": short}


def settled(times: list[float]) -> bool:
    """Three generates in a row within 10% of each other (two slow ones in a row can still be re-recordings)."""
    return len(times) == 3 and max(times) <= 1.1 * min(times)


def measure_decoding(run: Run, method: str, adapted: Adapted) -> None:
    """One row per decoding batch size: the eager dynamic-cache path, then the fast path (not for eager-only ones),
    each if --decode-paths names it."""
    model = adapted.model.eval()
    gen = torch.Generator().manual_seed(2)
    paths = [path for path in run.args.decode_paths.split(",") if path == "eager" or method not in EAGER_ONLY]
    for batch in (int(b) for b in filter(None, run.args.decode_batches.split(","))):
        ids = torch.randint(model.config.vocab_size, (batch, run.args.prompt), generator=gen).to(run.device)
        prompt = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        row = {"method": method, "batch": batch, "fast_compiled": run.device.type == "cuda",
               "fresh_static_cache": run.args.fresh_static_cache, "eager": {}, "fast": {}}
        run.results["decode"].append(row)  # filled in place, saved after each path
        for path in paths:
            if not run.allows(f"decode {path}", f"{method} decode {path} batch {batch}"):
                continue
            with run.timed(f"decode {path}"):
                row[path] = ms_per_token(run, model, prompt, fast=path == "fast")
            log(f"decode {method} {path} batch {batch}: {row[path]['ms_per_token']:.2f} ms/token; generate s: "
                f"warm-up {fmt_list(row[path]['warmups_s'])}, {run.args.new_tokens} tokens "
                f"{fmt_list(row[path]['seconds_n'])}, 1 token {fmt_list(row[path]['seconds_1'])}")
            save(run)
    model.train()


# ----- one method -----


def run_method(run: Run, method: str) -> None:
    """Eager training and decoding on one adapted model; each compiled mode on a fresh compile (of the eager model
    for the first compiled mode, of a freshly adapted one after that)."""
    modes = [m for m in run.args.modes.split(",") if m == "eager" or method not in EAGER_ONLY]
    if len(modes) < len(run.args.modes.split(",")):
        log(f"{method}: eager only")
    adapted = None
    for mode in modes:
        # with no training shapes the eager pass is the method's decoding: the skip says so
        what = f"{method} {mode}" if run.args.shapes or mode != "eager" else f"{method} decoding"
        if not run.allows(f"method {mode}", what):
            continue
        with run.timed(f"method {mode}"):
            torch._dynamo.reset()
            if adapted is None or adapted.compiled:
                adapted = None
                free_memory()
                adapted = adapt(run, method)
                log(f"{method}: adapted in {fmt(adapted.init_s)} s, {fmt(adapted.trainable, ',d')} trainable "
                    f"{adapted.note}")
            if adapted.model is None:
                run.record("train", {"method": method, "mode": mode, "note": adapted.note})
                return
            if mode != "eager":
                compile_blocks(adapted.model, mode)
                adapted.compiled = True
            measure_training(run, method, mode, adapted)
            if mode == "eager":
                measure_decoding(run, method, adapted)
    adapted = None
    free_memory()
    torch._dynamo.reset()


# ----- output -----


def fmt(value, spec: str = ".2f") -> str:
    return "n/a" if value is None or (isinstance(value, float) and not math.isfinite(value)) else format(value, spec)


def fmt_list(values: list[float]) -> str:
    return "/".join(f"{v:.3f}" for v in values)


def ratio(value, reference) -> str:
    return "n/a" if value is None or not reference else f"{value / reference:.2f}"


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def training_tables(rows: list[dict]) -> list[str]:
    """Per shape: method x mode, step time relative to PEFT LoRA's best mode and to LoRA in the same mode."""
    measured = [r for r in rows if "step_ms" in r]
    lora = {(r["shape"], r["mode"]): r["step_ms"] for r in measured if r["method"] == "lora"}
    parts = []
    for shape in dict.fromkeys(r["shape"] for r in measured):
        best = min((ms for (s, _), ms in lora.items() if s == shape), default=None)
        body = [[r["method"], r["mode"], fmt(r["step_ms"], ".1f"), ratio(r["step_ms"], best),
                 ratio(r["step_ms"], lora.get((shape, r["mode"]))), fmt(r["tokens_per_s"], ".0f"),
                 fmt(r["peak_gib"]), fmt(r["first_step_s"], ".1f"), fmt(r["init_s"], ".1f"), fmt(r["syncs"], "d")]
                for r in measured if r["shape"] == shape]
        parts.append(f"### Training step, micro-batch {shape} (B x L)\n\n" + table(
            ["method", "mode", "step ms", "x LoRA best", "x LoRA same mode", "tokens/s", "peak GiB", "first step s",
             "init s", "host syncs"], body))
    missing = [f"{r['method']}: {r['note']}" for r in rows if "note" in r]
    return parts + (["Not measured: " + "; ".join(missing)] if missing else [])


def decoding_table(rows: list[dict]) -> str:
    lora = {r["batch"]: r for r in rows if r["method"] == "lora"}
    body = []
    for r in rows:
        fast, eager = r["fast"].get("ms_per_token"), r["eager"].get("ms_per_token")
        ref = lora.get(r["batch"], {"fast": {}, "eager": {}})
        body.append([r["method"], r["batch"], fmt(fast), fmt(eager), ratio(fast, ref["fast"].get("ms_per_token")),
                     ratio(eager, ref["eager"].get("ms_per_token")), fmt(r["fast"].get("warmup_s"), ".1f")])
    cache = "a new static cache per generate" if rows[0]["fresh_static_cache"] else "one static cache, reused"
    fast = f"{cache}, decoding step compiled (reduce-overhead)" if any(
        r["fast_compiled"] for r in rows) else f"{cache}, eager (no compile off CUDA)"
    return (f"### Greedy decoding, ms per generated token (fast: {fast}; eager: dynamic cache)\n\n"
            "fast warm-up s: the first generate, compilation included.\n\n" + table(
                ["method", "batch", "fast ms/token", "eager ms/token", "fast x LoRA", "eager x LoRA",
                 "fast warm-up s"], body))


TABLE_NOTES = (
    "Step: forward + loss (+ balance loss) + backward + AdamW (bf16 autocast and fused AdamW on CUDA), median of "
    "--steps, each synchronized. x LoRA best: step ms over PEFT LoRA's fastest mode at that shape. init s: "
    "apply_adapter (pissa through goat's SVD unless --pissa-peft-svd). host syncs: in one step. peak GiB: the "
    "most memory allocated during any step at that shape, the first (compilation, CUDA graph capture) included: "
    "replayed CUDA graphs allocate nothing, so a peak over the timed steps alone leaves their activations out "
    "(files whose notes lack this sentence did). Dropout kernel: goat, molora and adamole take "
    "method.dropout_kernel=auto (the fused Triton kernels on CUDA, torch ops elsewhere), -torch and -fused name "
    "one (files before 2026-12-02: goat and molora used torch ops; adamole did up to and including routed-b).")


def save(run: Run) -> str:
    """Rewrites model_speed.json and model_speed.md with everything measured so far; returns the markdown."""
    results, env = run.results, run.results["env"]
    parts = [f"# Model speed: LLaMA-2-7B-shaped causal LM, {results['layers']} layers\n\n{env['device']} · torch "
             f"{env['torch']} · transformers {env['transformers']} · peft {env['peft']} · {env['date']} · "
             f"`{' '.join(env['argv'])}`\n\n{TABLE_NOTES}"]
    parts += training_tables(results["train"])
    if results["decode"]:
        parts.append(decoding_table(results["decode"]))
    if results["skipped"]:
        parts.append("Skipped (time budget): " + ", ".join(results["skipped"]))
    text = "\n\n".join(parts) + "\n"
    (run.args.out / "model_speed.md").write_text(text)
    (run.args.out / "model_speed.json").write_text(json.dumps(results, indent=2))
    return text


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tiny", action="store_true", help="tiny LLaMA on the CPU, fp32, eager (a check, seconds)")
    default = ",".join(m for m in METHODS if m not in VARIANTS)
    parser.add_argument("--methods", default=default, help=f"comma-separated, from {list(METHODS)}")
    parser.add_argument("--modes", help="eager and goat.compile modes (default eager,default)")
    parser.add_argument("--shapes", help="training micro-batches BxL (default 4x512,16x512; '' for none)")
    parser.add_argument("--steps", type=int, help="timed training steps (default 10)")
    parser.add_argument("--warmup", type=int, help="warm-up steps, the first one timed apart (default 3)")
    parser.add_argument("--decode-batches", help="decoding batch sizes (default 8,64; '' for none)")
    parser.add_argument("--decode-paths", default="eager,fast", help="decoding paths timed (default eager,fast)")
    parser.add_argument("--new-tokens", type=int, help="generated tokens per decoding run (default 32)")
    parser.add_argument("--prompt", type=int, help="prompt tokens (default 64)")
    parser.add_argument("--layers", type=int, default=LLAMA_7B["num_hidden_layers"], help="decoder blocks kept")
    parser.add_argument("--budget", type=float, default=math.inf, help="seconds; work that would pass it is skipped")
    parser.add_argument("--official-layer", type=Path, help="local copy of the official GOAT layer.py")
    parser.add_argument("--pissa-peft-svd", action="store_true", help="PiSSA init by PEFT's full SVD per matrix")
    parser.add_argument("--fresh-static-cache", action="store_true",
                        help="fast path: a new static cache per generate (transformers' default) instead of one reused")
    parser.add_argument("--profile", action="store_true",
                        help="also profile one training step per row: kernel count in the json, busiest kernels in "
                             "<out>/profiles.txt")
    parser.add_argument("--svd-cache", type=Path, help="SVD cache directory (default none: every init s is cold)")
    args = parser.parse_args(argv)
    for key, value in PROFILES["tiny" if args.tiny else "full"].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    unknown = sorted(set(args.methods.split(",")) - set(METHODS))
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {list(METHODS)}")
    paths = set(filter(None, args.decode_paths.split(",")))
    if not paths or paths - {"eager", "fast"}:
        parser.error(f"--decode-paths takes eager and/or fast, comma-separated; got {args.decode_paths!r}")
    if args.new_tokens < 2 or args.warmup < 1:
        parser.error(f"--new-tokens must be >= 2 and --warmup >= 1, got {args.new_tokens} and {args.warmup}")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = torch.device("cpu" if args.tiny else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("the benchmark needs a CUDA GPU; --tiny runs a CPU check")
    if args.tiny:
        torch.set_num_threads(1)  # 64-wide matrices: threads only add OpenMP spin-waits (50x slower on a busy host)
    args.out.mkdir(parents=True, exist_ok=True)
    env = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__,
           "transformers": transformers.__version__, "peft": peft.__version__, "cuda": torch.version.cuda,
           "date": datetime.datetime.now().isoformat(timespec="seconds"),
           "argv": sys.argv[1:] if argv is None else list(argv)}
    results = {"env": env, "layers": TINY["num_hidden_layers"] if args.tiny else args.layers,
               "settings": {k: str(v) for k, v in vars(args).items()}, "train": [], "decode": [], "skipped": []}
    run = Run(args, device, results)
    log(f"{env['device']}, torch {env['torch']}, transformers {env['transformers']}, peft {env['peft']}")
    for method in args.methods.split(","):
        run_method(run, method)
        print(save(run), flush=True)
    log("done")
    return results


if __name__ == "__main__":
    main()
