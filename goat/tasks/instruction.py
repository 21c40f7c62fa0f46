"""Instruction tuning of causal LMs: the Alpaca prompt, response-only labels, and batched greedy generation.

Prompt (LLM-Adapters / the reference's generate_prompt, spec §6 CR and Math), with "### Input:" only when the
record has an input. Training tokens: prompt (with BOS) + response + EOS; labels are -100 on the prompt, so
the loss is on the response. Evaluation tokenises the prompt the same way (with BOS: the reference dropped it
at eval, spec §9.11) and generates with left padding and an attention mask.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate.utils import gather_object
from torch.utils.data import DataLoader, Dataset

from goat import distributed
from goat.compile import eager_blocks
from goat.evaluators.answers import pass_at_k
from goat.tasks.base import Task
from goat.tasks.classification import resumable_loader

IGNORE = -100
HEADER = "Below is an instruction that describes a task. Write a response that appropriately completes the request."
HEADER_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request."
)


def alpaca_prompt(instruction: str, input_text: str = "") -> str:
    """The prompt up to and including "### Response:\\n"; the response follows it directly."""
    if input_text:
        return f"{HEADER_WITH_INPUT}\n\n### Instruction:\n{instruction}\n\n### Input:\n{input_text}\n\n### Response:\n"
    return f"{HEADER}\n\n### Instruction:\n{instruction}\n\n### Response:\n"


@dataclass
class InstructionTask(Task):
    """Instruction tuning of a causal LM, scored by generating answers (spec §6 CR, Math).

    train: [{"prompt": str, "response": str}]: the loss is on the response (and EOS) only.
    eval_sets: set name -> [{"prompt": str, "answer": gold}]; each prompt is completed by greedy generation.
    score(set name, completion, gold) -> bool: the set's answer extraction and comparison.
    main_metric: the key of the results reported and selected by ("average/accuracy" over the sets, or one set's).
    """

    name: str
    train: list
    eval_sets: dict
    score: Callable[[str, str, object], bool]
    main_metric: str = "average/accuracy"
    max_new_tokens: int = 32
    decoding: dict = field(default_factory=dict)  # generate() kwargs; empty = greedy
    samples: int = 1  # completions per prompt (n of pass@k; > 1 needs sampling)

    @property
    def train_size(self) -> int:
        return len(self.train)

    def pipeline(self, cfg, tokenizer, accelerator, run_dir):
        return generation_pipeline(cfg, self, tokenizer, accelerator, run_dir, evaluate_generation)


class InstructionSplit(Dataset):
    """Tokenised (prompt, response) pairs: input_ids = prompt + response + EOS, labels masked on the prompt."""

    def __init__(self, records: list[dict], tokenizer, max_length: int):
        self.rows = []
        for record in records:
            prompt = tokenizer(record["prompt"])["input_ids"]
            response = tokenizer(record["response"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            ids = (prompt + response)[:max_length]
            labels = ([IGNORE] * len(prompt) + response)[:max_length]
            if any(label != IGNORE for label in labels):  # a prompt longer than max_length teaches nothing
                self.rows.append((ids, labels))
        if len(self.rows) < len(records):
            logging.getLogger("goat").warning(
                "%d of %d training records dropped: their prompt alone fills task.max_length=%d",
                len(records) - len(self.rows),
                len(records),
                max_length,
            )

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        ids, labels = self.rows[index]
        return {"input_ids": ids, "labels": labels}


def pad_right(pad_id: int, pad_to_multiple_of: int = 1, rows: int | None = None):
    """Collate for training: right padding to the longest row, rounded up to `pad_to_multiple_of`; labels padded
    with -100. With `rows`, a smaller batch (an epoch's last) gets rows of padding up to `rows`: they hold no
    real token and no label, so the loss, the balance loss and the token count are those of the batch without
    them, and a compiled model sees one batch shape (no recompilation for the last batch of an epoch)."""

    def collate(examples: list[dict]) -> dict:
        width = -(-max(len(row["input_ids"]) for row in examples) // pad_to_multiple_of) * pad_to_multiple_of
        height = max(len(examples), rows or 0)
        ids = torch.full((height, width), pad_id, dtype=torch.long)
        labels = torch.full((height, width), IGNORE, dtype=torch.long)
        mask = torch.zeros((height, width), dtype=torch.long)
        for i, row in enumerate(examples):
            n = len(row["input_ids"])
            ids[i, :n], labels[i, :n], mask[i, :n] = torch.tensor(row["input_ids"]), torch.tensor(row["labels"]), 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}

    collate.right_padding_only = True  # the mask marks trailing padding only (goat.trainer.forward_right_padded)
    return collate


# The reference's generation settings per family (spec §6). Commonsense: beam search (its sampling values are
# ignored, do_sample is never set); math/code/chat: top-p 0.95, T 0.8 without do_sample, i.e. greedy.
PAPER_DECODING = {"commonsense": {"num_beams": 4}, "math": {}, "code": {}, "chat": {}}
SAMPLING = {
    "commonsense": {"temperature": 0.1, "top_p": 0.75, "top_k": 40},
    "math": {"temperature": 0.8, "top_p": 0.95},
    "code": {"temperature": 0.8, "top_p": 0.95},
    "chat": {"temperature": 0.8, "top_p": 0.95},
}
DECODINGS = ("greedy", "paper", "sample")


def decoding_kwargs(decoding: str, family: str) -> dict:
    """generate() keyword arguments: greedy (goat's default), paper (what the reference ran), or sample (its
    sampling values with do_sample=True)."""
    if decoding not in DECODINGS:
        raise ValueError(f"task.decoding={decoding!r} is unknown; valid: {', '.join(DECODINGS)}")
    if decoding == "greedy":
        return {}
    if decoding == "paper":
        return dict(PAPER_DECODING[family])
    return {"do_sample": True, **SAMPLING[family]}


# With a static cache, prompts are left-padded to a multiple of this many tokens: the cache's length (prompt +
# new tokens) then takes a few values, and so do the compiled decoding step's shapes and CUDA graphs.
PROMPT_BUCKET = 64


def static_cache_decoding(model, device) -> bool:
    """Whether generate() runs on the fast path: a static KV cache, whose decoding step transformers compiles
    (torch.compile, CUDA graphs) on a GPU. Models whose code transformers cannot compile whole keep the
    dynamic cache."""
    return torch.device(device).type == "cuda" and bool(getattr(model, "_can_compile_fullgraph", False))


@torch.no_grad()
def generate(
    model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int, device, static_cache=None, **decoding
):
    """Completions of `prompts` (greedy unless `decoding` says otherwise: num_beams, do_sample, temperature, ...),
    batched with left padding and an attention mask; the prompt echo is cut off. `static_cache` None: the fast
    path wherever static_cache_decoding allows it.

    `batch_size` is where generation starts: a batch that runs out of GPU memory is generated again in halves
    (and so is the rest), so a large trainer.eval_batch_size uses the memory a GPU has and never ends a run.
    Processes generating in step (synced_gpus) must keep one batch size: there the error is raised.
    """
    if static_cache is None:
        static_cache = static_cache_decoding(model, device)
    options = {"do_sample": False, **({"cache_implementation": "static"} if static_cache else {}), **decoding}
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    completions, start = [], 0
    try:
        while start < len(prompts):
            chunk = prompts[start : start + batch_size]
            try:
                completions += _generate_batch(model, tokenizer, chunk, max_new_tokens, device, static_cache, options)
            except torch.cuda.OutOfMemoryError:
                if batch_size == 1 or options.get("synced_gpus"):
                    raise
                torch.cuda.empty_cache()
                logging.getLogger("goat").warning(
                    "generation ran out of GPU memory at batch %d: going on at %d", batch_size, batch_size // 2
                )
                batch_size //= 2
                continue
            start += len(chunk)
    finally:
        tokenizer.padding_side = side
    return completions


def _generate_batch(model, tokenizer, chunk, max_new_tokens, device, static_cache, options) -> list[str]:
    bucket = PROMPT_BUCKET if static_cache else None
    batch = tokenizer(chunk, return_tensors="pt", padding=True, pad_to_multiple_of=bucket).to(device)
    with eager_blocks(model):  # blocks compiled for training would compile again for every cache length
        output = model.generate(**batch, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id, **options)
    new_tokens = output[:, batch["input_ids"].shape[1] :]  # (B, new): left padding aligns every prompt's end
    return tokenizer.batch_decode(new_tokens, skip_special_tokens=True)


def generate_in_step(
    model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int, accelerator, **decoding
):
    """generate() on this process's prompts. Under ZeRO-3 or FSDP every forward pass gathers weights from all
    processes, so they must run the same number of batches and tokens: the shorter shards are padded with
    copies of a prompt (their completions dropped) and generate() keeps stepping until all are done."""
    if accelerator.num_processes == 1 or not distributed.shards_parameters(accelerator):
        return generate(model, tokenizer, prompts, max_new_tokens, batch_size, accelerator.device, **decoding)
    count = torch.tensor([len(prompts)], device=accelerator.device)
    longest = int(accelerator.gather(count).max())
    filler = [prompts[0] if prompts else "Hello"] * (longest - len(prompts))
    completions = generate(  # sharded weights are gathered at every step: no static graph to capture
        model,
        tokenizer,
        prompts + filler,
        max_new_tokens,
        batch_size,
        accelerator.device,
        static_cache=False,
        synced_gpus=True,
        **decoding,
    )
    return completions[: len(prompts)]


def evaluate_generation(model, tokenizer, task, accelerator, batch_size: int, out_dir: Path | None = None) -> dict:
    """Per-set accuracy (%) and their average; the test sets are split over processes and gathered.

    With task.samples = n > 1 (sampling), each prompt is completed n times: accuracy is then the unbiased pass@1
    (mean of c/n), and pass@10 / pass@100 are reported where n allows (goat.evaluators.answers.pass_at_k).
    Writes prompts, completions, golds and verdicts to out_dir/<set>.jsonl on the main process.
    """
    unwrapped = accelerator.unwrap_model(model)
    was_training = unwrapped.training
    unwrapped.eval()
    accuracies, extra, n = {}, {}, task.samples
    for name, records in task.eval_sets.items():
        with accelerator.split_between_processes(list(enumerate(records))) as shard:
            prompts = [record["prompt"] for _, record in shard for _ in range(n)]
            completions = generate_in_step(
                unwrapped, tokenizer, prompts, task.max_new_tokens, batch_size, accelerator, **task.decoding
            )
            rows = []
            for j, (i, record) in enumerate(shard):
                outs = completions[j * n : (j + 1) * n]
                verdicts = [bool(task.score(name, out, record["answer"])) for out in outs]
                row = {
                    "index": i,
                    "prompt": record["prompt"],
                    "completion": outs[0],
                    "gold": record["answer"],
                    "correct": verdicts[0],
                }
                rows.append(row if n == 1 else {**row, "completions": outs, "verdicts": verdicts})
        rows = sorted(gather_object(rows), key=lambda row: row["index"])
        counts = [sum(row.get("verdicts", [row["correct"]])) for row in rows]
        accuracies[f"{name}/accuracy"] = 100.0 * sum(counts) / max(n * len(rows), 1)
        for k in (10, 100):
            if n >= k:
                extra[f"{name}/pass@{k}"] = 100.0 * sum(pass_at_k(n, c, k) for c in counts) / max(len(rows), 1)
        if out_dir is not None and accelerator.is_main_process:
            out_dir.mkdir(parents=True, exist_ok=True)
            with open(out_dir / f"{name}.jsonl", "w") as handle:
                handle.writelines(json.dumps(row) + "\n" for row in rows)
    unwrapped.train(was_training)
    average = sum(accuracies.values()) / max(len(accuracies), 1)
    return {**accuracies, **extra, "average/accuracy": average}


def train_loader(
    split: InstructionSplit,
    tokenizer,
    batch_size: int,
    seed: int,
    num_workers: int = 0,
    pad_to_multiple_of: int = 1,
    fixed_rows: bool = False,
) -> DataLoader:
    """Shuffled, resumable micro-batches; `fixed_rows` (compiled training) pads an epoch's last batch with empty
    rows to `batch_size` rows."""
    collate = pad_right(tokenizer.pad_token_id, pad_to_multiple_of, batch_size if fixed_rows else None)
    return resumable_loader(split, batch_size, collate, seed, num_workers)


def generation_pipeline(cfg, task, tokenizer, accelerator, run_dir, write=evaluate_generation):
    """(train loader, evaluator, main metric key) for instruction and chat tasks: each evaluation calls
    write(model, tokenizer, task, accelerator, batch size, folder) on <run_dir>/generations/step-<step>/ (scored
    test sets as <set>.jsonl for InstructionTask; MT-Bench answers for ChatTask)."""
    t = cfg.trainer
    split = InstructionSplit(task.train, tokenizer, cfg.task.max_length)

    def evaluator(model, step):
        out = Path(run_dir) / "generations" / f"step-{step:08d}"
        return write(model, tokenizer, task, accelerator, t.eval_batch_size, out)

    fixed_rows = t.compile != "none"  # one batch shape for the compiled blocks
    train = train_loader(split, tokenizer, t.micro_batch_size, t.seed, t.num_workers, t.pad_to_multiple_of, fixed_rows)
    return train, evaluator, task.main_metric
