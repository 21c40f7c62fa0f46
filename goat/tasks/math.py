"""Math reasoning (spec §6 Math): train on MetaMathQA's GSM rows (or GSM8K train), score GSM8K test by generation.

Training data, first match wins:
  task.dataset (hub, e.g. meta-math/MetaMathQA): rows {query, response, type}; rows whose type contains "GSM".
  task.data_dir/task.train_file: a JSON list or JSONL of MetaMathQA rows, or of GSM8K rows {question, answer}.
Test data: task.data_dir/gsm8k_test.jsonl-like file named by task.eval_sets[0] (default gsm8k: the official
GSM8K test.jsonl under data_dir/gsm8k_official/ or data_dir/), rows {question, answer "... #### N"}.
Prompt: the Alpaca prompt without input; the response follows after one space (the reference's template).
Score: the number goat extracts ("The answer is", "####", last number; spec §9.12 fix) equals the gold number.
"""

from __future__ import annotations

from pathlib import Path

from goat.config import DataUnavailableError
from goat.evaluators.answers import extract_gsm8k_answer, gsm8k_gold, numbers_equal
from goat.tasks.instruction import InstructionTask, alpaca_prompt, decoding_kwargs
from goat.tasks.records import EVAL_SUBSET_SEED, read_records, seeded_subset, training_records

TEST_FILES = ("gsm8k_official/test.jsonl", "gsm8k/test.jsonl", "test.jsonl")


def _training_pairs(rows: list[dict], source: str) -> list[dict]:
    """MetaMathQA rows (GSM types only) or GSM8K rows -> {"prompt", "response"}."""
    pairs = []
    for row in rows:
        if {"query", "response"} <= set(row):
            if "GSM" in row.get("type", "GSM"):
                pairs.append({"prompt": alpaca_prompt(row["query"]), "response": " " + row["response"]})
        elif {"question", "answer"} <= set(row):
            pairs.append({"prompt": alpaca_prompt(row["question"]), "response": " " + row["answer"]})
        else:
            raise DataUnavailableError(
                f"a math training record ({source}) has neither query/response (MetaMathQA) nor question/answer "
                f"(GSM8K); it has {', '.join(sorted(row)) or 'no field'}"
            )
    return pairs


def _test_rows(cfg) -> list[dict]:
    if not cfg.data_dir:
        raise DataUnavailableError("the GSM8K test set needs task.data_dir=DIR holding gsm8k_official/test.jsonl")
    root = Path(cfg.data_dir).expanduser()
    for name in TEST_FILES:
        if (root / name).exists():
            return read_records(root / name, ("question", "answer"))
    raise DataUnavailableError(f"{root} holds none of {', '.join(TEST_FILES)} (GSM8K test, rows {{question, answer}})")


def load_math(cfg, seed: int) -> InstructionTask:
    source = f"task.dataset={cfg.dataset}" if cfg.dataset else f"{cfg.data_dir}/{cfg.train_file}, task.train_file"
    train = _training_pairs(seeded_subset(training_records(cfg), cfg.max_train_samples, seed), source)
    tests = seeded_subset(_test_rows(cfg), cfg.max_eval_samples, EVAL_SUBSET_SEED)
    eval_set = [{"prompt": alpaca_prompt(row["question"]), "answer": gsm8k_gold(row["answer"])} for row in tests]
    return InstructionTask(
        cfg.name,
        train,
        {"gsm8k": eval_set},
        score_gsm8k,
        "gsm8k/accuracy",
        cfg.max_new_tokens,
        decoding_kwargs(cfg.decoding, "math"),
        cfg.num_samples,
    )


def score_gsm8k(set_name: str, completion: str, gold) -> bool:
    return numbers_equal(extract_gsm8k_answer(completion), float(gold))
