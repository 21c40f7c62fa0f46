"""Chat (spec §6 Chat): instruction-tune on WizardLM evol-instruct, write MT-Bench answers for FastChat's judge.

Training rows {instruction, output} (WizardLM's English fields) from the hub (task.dataset) or
task.data_dir/task.train_file; outputs containing "sorry" or "as an ai" are dropped (the reference's filter).
MT-Bench: task.data_dir/question.jsonl (FastChat's data/mt_bench/question.jsonl: {question_id, category,
turns}); both turns are answered greedily, the second with the first exchange in its prompt, and written to
<run_dir>/generations/step-*/mt_bench.jsonl in FastChat's answer-file format. The GPT-4 judge is external:
copy that file to FastChat's data/mt_bench/model_answer/<model_id>.jsonl and run
`python -m fastchat.llm_judge.gen_judgment --model-list <model_id>` then `python -m fastchat.llm_judge.show_result`
(the paper reports the first-turn score).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from accelerate.utils import gather_object

from goat.config import DataUnavailableError
from goat.tasks.base import Task
from goat.tasks.instruction import alpaca_prompt, decoding_kwargs, generate_in_step, generation_pipeline
from goat.tasks.records import EVAL_SUBSET_SEED, read_records, seeded_subset, training_records

REFUSALS = ("sorry", "as an ai")


@dataclass
class ChatTask(Task):
    name: str
    train: list  # [{"prompt", "response"}]
    questions: list  # MT-Bench rows {question_id, category, turns}
    model_id: str
    max_new_tokens: int = 1024
    decoding: dict = field(default_factory=dict)
    main_metric: str = "mt_bench/answered"

    @property
    def train_size(self) -> int:
        return len(self.train)

    def pipeline(self, cfg, tokenizer, accelerator, run_dir):
        return generation_pipeline(cfg, self, tokenizer, accelerator, run_dir, write_mt_bench_answers)


def load_chat(cfg, seed: int) -> ChatTask:
    rows = training_records(cfg)
    if rows and not {"instruction", "output"} <= set(rows[0]):
        raise DataUnavailableError(
            f"chat training rows need the fields instruction and output; found {sorted(rows[0])}"
        )
    kept = [r for r in rows if not any(word in r["output"].lower() for word in REFUSALS)]
    train = [
        {"prompt": alpaca_prompt(r["instruction"]), "response": r["output"]}
        for r in seeded_subset(kept, cfg.max_train_samples, seed)
    ]
    if not cfg.data_dir:
        raise DataUnavailableError(
            "MT-Bench needs task.data_dir=DIR holding question.jsonl (FastChat's MT-Bench questions)"
        )
    questions = seeded_subset(
        read_records(Path(cfg.data_dir) / "question.jsonl"), cfg.max_eval_samples, EVAL_SUBSET_SEED
    )
    return ChatTask(
        cfg.name,
        train,
        questions,
        model_id=cfg.subset or "goat",
        max_new_tokens=cfg.max_new_tokens,
        decoding=decoding_kwargs(cfg.decoding, "chat"),
    )


def second_turn_prompt(first_question: str, first_answer: str, second_question: str) -> str:
    """The second MT-Bench turn in the training template: the first exchange, then the new instruction."""
    return (
        alpaca_prompt(first_question)
        + first_answer.strip()
        + "\n\n### Instruction:\n"
        + second_question
        + "\n\n### Response:\n"
    )


def write_mt_bench_answers(model, tokenizer, task: ChatTask, accelerator, batch_size: int, out_dir: Path) -> dict:
    """Answers both turns of every question (main process order), writes FastChat's answer file; returns counts."""
    unwrapped = accelerator.unwrap_model(model)
    was_training = unwrapped.training
    unwrapped.eval()
    with accelerator.split_between_processes(list(task.questions)) as shard:
        first = generate_in_step(
            unwrapped,
            tokenizer,
            [alpaca_prompt(q["turns"][0]) for q in shard],
            task.max_new_tokens,
            batch_size,
            accelerator,
            **task.decoding,
        )
        seconds = [
            second_turn_prompt(q["turns"][0], a, q["turns"][1]) if len(q["turns"]) > 1 else None
            for q, a in zip(shard, first, strict=True)
        ]
        asked = [p for p in seconds if p is not None]
        answers = iter(
            generate_in_step(unwrapped, tokenizer, asked, task.max_new_tokens, batch_size, accelerator, **task.decoding)
        )
        rows = [
            {
                "question_id": q["question_id"],
                "answer_id": f"goat-{q['question_id']}",
                "model_id": task.model_id,
                "choices": [{"index": 0, "turns": [a] + ([next(answers)] if p is not None else [])}],
                "tstamp": time.time(),
            }
            for q, a, p in zip(shard, first, seconds, strict=True)
        ]
    rows = sorted(gather_object(rows), key=lambda row: row["question_id"])
    if accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        with open(out_dir / "mt_bench.jsonl", "w") as handle:
            handle.writelines(json.dumps(row) + "\n" for row in rows)
    unwrapped.train(was_training)
    return {"mt_bench/answered": float(len(rows))}
