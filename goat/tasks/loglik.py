"""Multiple-choice scoring by log-likelihood (task.scoring=loglik; docs/evaluation.md): each option's text is scored
as a continuation of a context (goat.tasks.choices), and the option with the highest score is the model's choice.

- acc: the option with the largest sum of log p(token | everything before it) over the continuation's tokens.
- acc_norm: that sum divided by the option's length in characters (lm-evaluation-harness's acc_norm: len() of the
  choice text, without the space that joins it to the context).

Tokens (lm-evaluation-harness's encoding): the whole text context + " " + continuation is tokenised once (with
the tokenizer's special tokens, BOS where it adds one, as goat trains and generates), and the continuation's
tokens are those after the first len(tokenise(context)) tokens. A token that merges across the boundary counts
as the continuation's.

Batches: rows of (context + continuation) tokens, left-padded, with position ids that start at 0 at each row's first
real token, so a row scores the same alone or in any batch; the model returns logits for the last
max(continuation length) positions only (logits_to_keep), not for the whole (B, T, vocab), and a forward holds at
most the evaluation batch's rows and LOGITS_BUDGET logits.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from accelerate.utils import gather_object

from goat import distributed
from goat.tasks.base import Task
from goat.tasks.instruction import generation_pipeline


@dataclass
class ChoiceTask(Task):
    """Instruction tuning of a causal LM (as InstructionTask), scored by the log-likelihood of each option's text
    (task.scoring=loglik, goat.tasks.loglik).

    train: [{"prompt": str, "response": str}]: the loss is on the response (and EOS) only.
    eval_sets: set name -> [{"options": [str], "pairs": [(context, continuation)] one per option, "gold": int}]
        (goat.tasks.choices.choice_record); "heldout": training rows held out to choose on, in no average.
    main_metric: "<set>/acc" for one set, "average/acc" over several (acc_norm is reported beside it).
    groups: average name -> the sets it averages ("average": the test sets, "heldout" never in one; in_domain,
        transfer); empty: "average" over every set.
    """

    name: str
    train: list
    eval_sets: dict
    main_metric: str = "average/acc"
    groups: dict = field(default_factory=dict)

    @property
    def train_size(self) -> int:
        return len(self.train)

    def pipeline(self, cfg, tokenizer, accelerator, run_dir):
        return generation_pipeline(cfg, self, tokenizer, accelerator, run_dir, evaluate_loglik)


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], int]:
    """(token ids of context + " " + continuation, how many of the last ones are the continuation's)."""
    whole = tokenizer(f"{context} {continuation}")["input_ids"]
    context_length = len(tokenizer(context)["input_ids"])
    if context_length == 0 or context_length >= len(whole):
        raise ValueError(f"cannot score {continuation!r} after {context!r}: the context or continuation has no token")
    return whole, len(whole) - context_length


LOGITS_BUDGET = 2**28  # logits one forward may return (rows x kept positions x vocab): 1 GiB in fp32


def batches(rows: list[tuple[list[int], int]], batch_size: int, vocab: int) -> list[list[int]]:
    """Row indices in forwards of at most batch_size rows and LOGITS_BUDGET logits (a row alone may pass it),
    longest rows first so that similar lengths share a forward. The budget keeps a large evaluation batch of long
    options (PIQA, BoolQ passages) from asking for the whole (B, keep, vocab) at once."""
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
    out, current, keep = [], [], 0
    for i in order:
        wider = max(keep, rows[i][1])
        if current and (len(current) == batch_size or (len(current) + 1) * wider * vocab > LOGITS_BUDGET):
            out.append(current)
            current, wider = [], rows[i][1]
        current.append(i)
        keep = wider
    return out + [current] if current else out


@torch.no_grad()
def continuation_logprobs(
    model, rows: list[tuple[list[int], int]], batch_size: int, pad_id: int, device, forwards: int = 0
) -> list:
    """For each row (ids, n): the sum over the last n tokens of ids of log p(token | the tokens before it), in the
    rows' order (forwards as `batches` groups them). forwards: run at least this many (row 0 again, its score
    unchanged), so that processes that gather sharded weights in every forward stay in step."""
    groups = batches(rows, batch_size, model.config.vocab_size)
    groups += [[0]] * (forwards - len(groups))
    sums = [0.0] * len(rows)
    for indices in groups:
        for i, value in zip(indices, _batch_logprobs(model, [rows[i] for i in indices], pad_id, device), strict=True):
            sums[i] = value
    return sums


def _batch_logprobs(model, chunk: list[tuple[list[int], int]], pad_id: int, device) -> list[float]:
    """One forward over `chunk`, left-padded to (B, T = longest row - 1); logits only for the last `keep` positions
    (B, keep, vocab), keep = the longest continuation, where every row's continuation ends."""
    width = max(len(ids) for ids, _ in chunk) - 1  # the last token is only predicted, never input
    keep = max(n for _, n in chunk)
    inputs = torch.full((len(chunk), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(chunk), width), dtype=torch.long)
    targets = torch.zeros((len(chunk), keep), dtype=torch.long)
    scored = torch.zeros((len(chunk), keep), dtype=torch.bool)
    for b, (ids, n) in enumerate(chunk):
        inputs[b, width - len(ids) + 1 :] = torch.tensor(ids[:-1])
        mask[b, width - len(ids) + 1 :] = 1
        targets[b, keep - n :] = torch.tensor(ids[-n:])
        scored[b, keep - n :] = True
    inputs, mask, targets, scored = (t.to(device) for t in (inputs, mask, targets, scored))
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, T): 0 at each row's first real token
    logits = model(
        input_ids=inputs, attention_mask=mask, position_ids=positions, logits_to_keep=keep, use_cache=False
    ).logits
    logprobs = torch.log_softmax(logits.float(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (B, keep)
    return torch.where(scored, logprobs, 0.0).sum(-1).tolist()


def encode_records(tokenizer, records: list[dict]) -> list[tuple[list[int], int]]:
    """encode_pair of every option of every record (goat.tasks.choices.choice_record), records in order."""
    return [encode_pair(tokenizer, context, text) for record in records for context, text in record["pairs"]]


def choices_from(records: list[dict], sums: list[float]) -> list[dict]:
    """Per record, from its options' summed log-probabilities (encode_records' order): each option's sum, its
    per-character score, the choices they make (ties: the first option) and the gold index."""
    scored, start = [], 0
    for record in records:
        logprobs = sums[start : start + len(record["pairs"])]
        start += len(record["pairs"])
        normalized = [value / len(text) for value, (_, text) in zip(logprobs, record["pairs"], strict=True)]
        scored.append(
            {
                "options": record["options"],
                "logprobs": logprobs,
                "normalized": normalized,
                "choice": int(np.argmax(logprobs)),
                "choice_norm": int(np.argmax(normalized)),
                "gold": record["gold"],
            }
        )
    return scored


def score_records(model, tokenizer, records: list[dict], batch_size: int, accelerator) -> list[dict]:
    """choices_from this process's records. Under ZeRO-3 or FSDP every forward pass gathers weights from all
    processes, so every process must run the same number of forwards: a process with no rows scores a stand-in
    row, and every process runs as many forwards as the one that needs most (their extra scores dropped)."""
    rows = encode_records(tokenizer, records)
    total = len(rows)
    forwards = 0
    if accelerator.num_processes > 1 and distributed.shards_parameters(accelerator):
        rows = rows or [encode_pair(tokenizer, "Hello", "world")]
        mine = len(batches(rows, batch_size, model.config.vocab_size))
        forwards = int(accelerator.gather(torch.tensor([mine], device=accelerator.device)).max())
    sums = continuation_logprobs(model, rows, batch_size, tokenizer.pad_token_id, accelerator.device, forwards)
    return choices_from(records, sums[:total])


def evaluate_loglik(model, tokenizer, task, accelerator, batch_size: int, out_dir: Path | None = None) -> dict:
    """Per-set acc and acc_norm (%) and their averages (task.groups; default: "average" over every set); the test
    sets are split over processes and gathered.
    Writes each record's options, scores, choices and gold to out_dir/<set>.jsonl on the main process."""
    unwrapped = accelerator.unwrap_model(model)
    was_training = unwrapped.training
    unwrapped.eval()
    results = {}
    for name, records in task.eval_sets.items():
        with accelerator.split_between_processes(list(range(len(records)))) as shard:
            scored = score_records(unwrapped, tokenizer, [records[i] for i in shard], batch_size, accelerator)
            rows = [{"index": i, **row} for i, row in zip(shard, scored, strict=True)]
        rows = sorted(gather_object(rows), key=lambda row: row["index"])
        for metric, key in (("acc", "choice"), ("acc_norm", "choice_norm")):
            results[f"{name}/{metric}"] = 100.0 * sum(row[key] == row["gold"] for row in rows) / max(len(rows), 1)
        if out_dir is not None and accelerator.is_main_process:
            out_dir.mkdir(parents=True, exist_ok=True)
            with open(out_dir / f"{name}.jsonl", "w") as handle:
                handle.writelines(json.dumps(row) + "\n" for row in rows)
    unwrapped.train(was_training)
    for group, names in (task.groups or {"average": list(task.eval_sets)}).items():
        for metric in ("acc", "acc_norm"):
            results[f"{group}/{metric}"] = sum(results[f"{name}/{metric}"] for name in names) / max(len(names), 1)
    return results
