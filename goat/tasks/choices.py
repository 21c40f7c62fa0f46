"""The options of a commonsense question, read from its LLM-Adapters instruction, and what log-likelihood scoring
asks the model (task.scoring=loglik; docs/evaluation.md).

An LLM-Adapters test record's instruction is "<preamble>: <question>\\n\\n<Label1>: <text> <Label2>: <text> ...
\\n\\nAnswer format: label1/label2/..." (BoolQ: "Answer format: true/false", no option list). The answer format
names the options; their text lies between consecutive labels.

Each option becomes one (context, continuation) pair; the model scores " " + continuation after the context:
- BoolQ, PIQA, SIQA, ARC-e, ARC-c, OBQA: context "Question: <question>\\nAnswer:" (lm-evaluation-harness's ARC and
  PIQA prompt), continuation the option's text (BoolQ: "true" / "false", the words of its answer format).
- HellaSwag: context the sentence to complete, continuation the ending.
- WinoGrande (lm-evaluation-harness's partial scoring): context the sentence up to the blank with the option
  written in, continuation the rest of the sentence after the blank, the same for every option.
"""

from __future__ import annotations

from goat.config import DataUnavailableError

FORMAT = "Answer format:"
QUESTION_PROMPT = "Question: {question}\nAnswer:"


def parse_instruction(set_name: str, instruction: str) -> tuple[str, list[str], list[str]]:
    """(question, options' text, labels) of one LLM-Adapters instruction; labels as in its answer format
    ("answer1", ...; BoolQ: "true", "false"), in option order."""
    head, found, answer_format = instruction.rpartition(FORMAT)
    labels = [label.strip() for label in answer_format.strip().split("/")]
    if not found or len(labels) < 2:
        raise DataUnavailableError(f"{set_name}: an instruction without '{FORMAT} a/b/...': {instruction[:80]!r}")
    body = head.partition(": ")[2]  # every preamble ends at the instruction's first ": "
    if set_name == "boolq":
        return body.strip(), labels, labels
    starts, ends, position = [], [], 0
    for label in labels:
        marker = f"{label.capitalize()}:"  # answer1 -> "Answer1:", solution2 -> "Solution2:", ending3 -> "Ending3:"
        at = body.find(marker, position)
        if at < 0:
            raise DataUnavailableError(f"{set_name}: no '{marker}' in the instruction {instruction[:80]!r}")
        starts.append(at)
        position = at + len(marker)
        ends.append(position)
    options = [body[end:next_start].strip() for end, next_start in zip(ends, [*starts[1:], len(body)], strict=True)]
    return body[: starts[0]].strip(), options, labels


def scoring_pairs(set_name: str, question: str, options: list[str]) -> list[tuple[str, str]]:
    """One (context, continuation) per option: the model scores " " + continuation after the context."""
    if set_name == "winogrande":
        before, blank, after = question.partition("_")
        if not blank or "_" in after:
            raise DataUnavailableError(f"winogrande: a sentence without exactly one blank '_': {question!r}")
        return [((before + option).strip(), after.strip()) for option in options]
    context = question if set_name == "hellaswag" else QUESTION_PROMPT.format(question=question)
    return [(context, option) for option in options]


def choice_record(set_name: str, record: dict) -> dict:
    """What loglik scoring reads from one test record: options, (context, continuation) pairs, gold index."""
    question, options, labels = parse_instruction(set_name, record["instruction"])
    gold = str(record["answer"]).strip().lower()
    if gold not in labels:
        raise DataUnavailableError(f"{set_name}: the answer {gold!r} is none of the options {'/'.join(labels)}")
    return {"options": options, "pairs": scoring_pairs(set_name, question, options), "gold": labels.index(gold)}
