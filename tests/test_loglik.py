"""Log-likelihood multiple-choice scoring (task.scoring=loglik): the options read from LLM-Adapters instructions, the
(context, continuation) pairs each set scores, and the batched scores against one unbatched forward per option."""

import json
import math
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from conftest import byte_level_bpe, train_and_losses

from goat.checks import check_config
from goat.cli import compose
from goat.config import ConfigError, DataUnavailableError
from goat.tasks import loglik
from goat.tasks.choices import choice_record, parse_instruction, scoring_pairs
from goat.tasks.loglik import (
    ChoiceTask,
    batches,
    continuation_logprobs,
    encode_pair,
    encode_records,
    evaluate_loglik,
    score_records,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "commonsense"

# One instruction per set, as the LLM-Adapters files write them (HellaSwag's is not in ../shared/data: written by
# hand in its "Ending1..Ending4" format).
INSTRUCTIONS = {
    "boolq": "Please answer the following question with true or false, question: is house tax and property tax are "
    "same?\n\nAnswer format: true/false",
    "piqa": "Please choose the correct solution to the question: dresser\n\nSolution1: replace drawer with bobby pin "
    "\n\nSolution2: finish, woodgrain with  bobby pin \n\nAnswer format: solution1/solution2",
    "siqa": "Please choose the correct answer to the question: Tracy didn't go home. What does Tracy need to do before "
    "this?\n\nAnswer1: make a new plan Answer2: Go home and see Riley Answer3: Find somewhere to go\n\nAnswer format: "
    "answer1/answer2/answer3",
    "hellaswag": "Please choose the correct ending to complete the given sentence: Removing ice from car: The man "
    "scrapes the window. then\n\nEnding1: , the man adds wax. Ending2: , a dog sleds. Ending3: , he drives off. "
    "Ending4: , the man keeps scraping.\n\nAnswer format: ending1/ending2/ending3/ending4",
    "winogrande": "Please choose the correct answer to fill in the blank to complete the given sentence: Sarah was a "
    "much better surgeon than Maria so _ always got the easier cases.\n\nOption1: Sarah Option2: Maria Answer format: "
    "option1/option2",
    "arc_e": "Please choose the correct answer to the question: Which piece of safety equipment is used to keep mold "
    "spores from entering the respiratory system?\n\nAnswer1: safety goggles Answer2: breathing mask Answer3: rubber "
    "gloves Answer4: lead apron\n\nAnswer format: answer1/answer2/answer3/answer4",
    "obqa": "Please choose the correct answer to the question: There is most likely going to be fog around:\n\n"
    "Answer1: a marsh Answer2: a tundra Answer3: the plains Answer4: a desert\n\nAnswer format: "
    "answer1/answer2/answer3/answer4",
}
PARSED = {  # set -> (question, options)
    "boolq": ("is house tax and property tax are same?", ["true", "false"]),
    "piqa": ("dresser", ["replace drawer with bobby pin", "finish, woodgrain with  bobby pin"]),
    "siqa": (
        "Tracy didn't go home. What does Tracy need to do before this?",
        ["make a new plan", "Go home and see Riley", "Find somewhere to go"],
    ),
    "hellaswag": (
        "Removing ice from car: The man scrapes the window. then",
        [", the man adds wax.", ", a dog sleds.", ", he drives off.", ", the man keeps scraping."],
    ),
    "winogrande": ("Sarah was a much better surgeon than Maria so _ always got the easier cases.", ["Sarah", "Maria"]),
    "arc_e": (
        "Which piece of safety equipment is used to keep mold spores from entering the respiratory system?",
        ["safety goggles", "breathing mask", "rubber gloves", "lead apron"],
    ),
    "obqa": ("There is most likely going to be fog around:", ["a marsh", "a tundra", "the plains", "a desert"]),
}


@pytest.mark.parametrize("set_name", sorted(INSTRUCTIONS))
def test_options_are_the_text_between_the_labels_of_the_answer_format(set_name):
    question, options, labels = parse_instruction(set_name, INSTRUCTIONS[set_name])
    assert (question, options) == PARSED[set_name]
    assert len(labels) == len(options)


def test_each_set_scores_its_options_after_its_own_context():
    question = "Which piece of safety equipment is used to keep mold spores from entering the respiratory system?"
    assert scoring_pairs("arc_e", *PARSED["arc_e"])[1] == (f"Question: {question}\nAnswer:", "breathing mask")
    boolq = "Question: is house tax and property tax are same?\nAnswer:"
    assert scoring_pairs("boolq", *PARSED["boolq"]) == [(boolq, "true"), (boolq, "false")]
    assert scoring_pairs("hellaswag", *PARSED["hellaswag"])[3] == (PARSED["hellaswag"][0], ", the man keeps scraping.")
    # WinoGrande: each option fills the blank of the context; the rest of the sentence is the continuation
    assert scoring_pairs("winogrande", *PARSED["winogrande"]) == [
        ("Sarah was a much better surgeon than Maria so Sarah", "always got the easier cases."),
        ("Sarah was a much better surgeon than Maria so Maria", "always got the easier cases."),
    ]
    assert choice_record("winogrande", {"instruction": INSTRUCTIONS["winogrande"], "answer": "option2"})["gold"] == 1
    with pytest.raises(DataUnavailableError, match="none of the options"):
        choice_record("arc_e", {"instruction": INSTRUCTIONS["arc_e"], "answer": "answer5"})
    with pytest.raises(DataUnavailableError, match="Answer3:"):
        parse_instruction("arc_e", INSTRUCTIONS["arc_e"].replace("Answer3:", "Answer 3:"))


@pytest.mark.skipif(not DATA.is_dir(), reason=f"{DATA} (shared test data) is missing")
def test_every_local_test_record_parses_with_its_option_count():
    folders = {"boolq": "boolq", "piqa": "piqa", "siqa": "social_i_qa", "winogrande": "winogrande"}
    folders |= {"arc_e": "ARC-Easy", "arc_c": "ARC-Challenge", "obqa": "openbookqa"}
    counts = {}
    for name, folder in folders.items():
        for record in json.loads((DATA / folder / "test.json").read_text()):
            parsed = choice_record(name, record)
            assert all(parsed["options"]) and 0 <= parsed["gold"] < len(parsed["options"])
            assert record["instruction"].count("Answer format:") == 1
            counts[len(parsed["options"])] = counts.get(len(parsed["options"]), 0) + 1
    # ../shared/data/README.md's record counts; ARC has 11 + 7 three-option and 4 + 3 five-option questions
    assert counts == {2: 3270 + 1838 + 1267, 3: 1954 + 7 + 4, 4: 2365 + 1165 + 500, 5: 4 + 3}


# ----- scores against a hand computation on a tiny LLaMA -----


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A byte-level BPE tokenizer trained here on the instructions (its merges make the context / continuation
    boundary matter), with BOS prepended and a pad token, and a 2-layer LLaMA config."""
    from transformers import LlamaConfig

    tokenizer = byte_level_bpe(list(INSTRUCTIONS.values()) * 4, vocab_size=400, prepend_bos=True)
    root = tmp_path_factory.mktemp("loglik_llama")
    tokenizer.save_pretrained(root)
    LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
        initializer_range=0.3,  # sharper logits than 0.02: the options' scores differ by more than rounding
    ).save_pretrained(root)
    return root


@pytest.fixture(scope="module")
def model_and_tokenizer(model_dir):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig.from_pretrained(model_dir)).eval(), AutoTokenizer.from_pretrained(model_dir)


def records() -> list[dict]:
    golds = {"boolq": "true", "piqa": "solution2", "siqa": "answer1", "hellaswag": "ending4", "winogrande": "option1"}
    golds |= {"arc_e": "answer2", "obqa": "answer1"}
    return [choice_record(name, {"instruction": INSTRUCTIONS[name], "answer": golds[name]}) for name in INSTRUCTIONS]


def by_hand(model, tokenizer, context: str, text: str) -> float:
    """One unbatched forward of context + " " + text; the log-softmax summed over the tokens after the context's."""
    ids = tokenizer(f"{context} {text}")["input_ids"]
    start = len(tokenizer(context)["input_ids"])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), dim=-1)  # (T, V)
    return sum(float(logprobs[j - 1, ids[j]]) for j in range(start, len(ids)))


def test_a_continuation_is_the_tokens_after_the_contexts_with_bos_first(model_and_tokenizer):
    _, tokenizer = model_and_tokenizer
    for context, text in (pair for record in records() for pair in record["pairs"]):
        ids, n = encode_pair(tokenizer, context, text)
        assert ids[0] == tokenizer.bos_token_id and 0 < n < len(ids)
        assert tokenizer.decode(ids[-n:]) == f" {text}"  # the joining space starts the continuation
        assert tokenizer.decode(ids[1:-n]) == context


def test_batched_scores_equal_one_forward_per_option(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    chosen = records()
    rows = encode_records(tokenizer, chosen)
    expected = [by_hand(model, tokenizer, c, t) for record in chosen for c, t in record["pairs"]]
    assert len(rows) == 2 + 2 + 3 + 4 + 2 + 4 + 4
    for batch_size in (1, 4, len(rows)):  # no padding; padded batches of mixed lengths; everything at once
        got = continuation_logprobs(model, rows, batch_size, tokenizer.pad_token_id, "cpu")
        assert got == pytest.approx(expected, abs=1e-4)
    assert max(expected) - min(expected) > 1.0  # the options' scores differ: the choices below mean something
    # the row order does not matter either
    backwards = continuation_logprobs(model, rows[::-1], 5, tokenizer.pad_token_id, "cpu")
    assert backwards[::-1] == pytest.approx(expected, abs=1e-4)


def test_acc_and_acc_norm_choose_as_the_hand_computation(model_and_tokenizer, tmp_path):
    model, tokenizer = model_and_tokenizer
    chosen = records()
    accelerator = Accelerator(cpu=True)
    task = ChoiceTask("mixed", [], {"mixed": chosen}, "mixed/acc")
    metrics = evaluate_loglik(model, tokenizer, task, accelerator, batch_size=3, out_dir=tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "mixed.jsonl").read_text().splitlines()]
    right = right_norm = 0
    for row, record in zip(rows, chosen, strict=True):
        sums = [by_hand(model, tokenizer, c, t) for c, t in record["pairs"]]
        per_char = [value / len(text) for value, (_, text) in zip(sums, record["pairs"], strict=True)]
        choice, choice_norm = sums.index(max(sums)), per_char.index(max(per_char))
        assert row["logprobs"] == pytest.approx(sums, abs=1e-4)
        assert row["normalized"] == pytest.approx(per_char, abs=1e-5)
        assert (row["options"], row["gold"]) == (record["options"], record["gold"])
        assert (row["choice"], row["choice_norm"]) == (choice, choice_norm)
        right, right_norm = right + (choice == record["gold"]), right_norm + (choice_norm == record["gold"])
    assert metrics["mixed/acc"] == pytest.approx(100 * right / len(chosen))
    assert metrics["mixed/acc_norm"] == pytest.approx(100 * right_norm / len(chosen))
    assert metrics["average/acc"] == metrics["mixed/acc"]
    # WinoGrande's options share one continuation: dividing by its length changes no choice
    winogrande = rows[list(INSTRUCTIONS).index("winogrande")]
    assert winogrande["choice"] == winogrande["choice_norm"]


def test_records_split_over_processes_score_as_all_together(model_and_tokenizer):
    """What each process scores does not depend on the others' records: two halves gathered = the whole."""
    model, tokenizer = model_and_tokenizer
    chosen, accelerator = records(), Accelerator(cpu=True)
    whole = score_records(model, tokenizer, chosen, 4, accelerator)
    halves = score_records(model, tokenizer, chosen[:3], 4, accelerator)
    halves += score_records(model, tokenizer, chosen[3:], 4, accelerator)
    for one, other in zip(whole, halves, strict=True):
        assert one["logprobs"] == pytest.approx(other["logprobs"], abs=1e-4)
        assert (one["choice"], one["choice_norm"]) == (other["choice"], other["choice_norm"])


# ----- goat-train with task.scoring=loglik -----


@pytest.mark.skipif(not DATA.is_dir(), reason=f"{DATA} (shared test data) is missing")
def test_goat_train_scores_arc_e_by_loglik_before_any_step(model_dir, tmp_path):
    """trainer.max_steps=0: one evaluation of the model as loaded (LoRA's B = 0: the base model) with acc and
    acc_norm, and the per-example file they are counted from."""
    (tmp_path / "ARC-Easy").mkdir()
    arc = json.loads((DATA / "ARC-Easy" / "test.json").read_text())
    (tmp_path / "ARC-Easy" / "test.json").write_text(json.dumps(arc[:40]))
    (tmp_path / "train.json").write_text(json.dumps(arc[40:56]))
    out = tmp_path / "run"
    overrides = [
        "task=commonsense/arc_e",
        "task.scoring=loglik",
        f"task.data_dir={tmp_path}",
        "task.train_file=train.json",
        "task.max_eval_samples=12",
        "task.max_length=1024",
        f"model.name_or_path={model_dir}",
        "model.from_config=true",
        "model.dtype=float32",
        "method=lora",
        "method.r=4",
        "trainer=cpu",
        "trainer.max_steps=0",
        "trainer.batch_size=8",
        "trainer.micro_batch_size=8",
        "trainer.eval_batch_size=16",
        "trainer.progress=false",
        "logger=none",
        f"output_dir={out}",
    ]
    results, _ = train_and_losses(overrides)
    assert results["steps"] == 0 and results["main_metric"] == "arc_e/acc" and results["epoch_hours"] is None
    assert [entry["step"] for entry in results["history"]] == [0]
    final = results["final"]
    written = out / "generations" / "step-00000000" / "arc_e.jsonl"
    rows = [json.loads(line) for line in written.read_text().splitlines()]
    assert len(rows) == 12 and {len(row["options"]) for row in rows} <= {3, 4, 5}
    assert final["arc_e/acc"] == pytest.approx(100 * sum(r["choice"] == r["gold"] for r in rows) / 12)
    assert final["arc_e/acc_norm"] == pytest.approx(100 * sum(r["choice_norm"] == r["gold"] for r in rows) / 12)
    for row in rows:
        assert all(math.isfinite(value) and value < 0 for value in row["logprobs"])
        assert row["choice"] == row["logprobs"].index(max(row["logprobs"]))


def test_loglik_scoring_is_refused_where_there_are_no_options(tiny_model_dir, keyword_data, tmp_path):
    from conftest import tiny_run_overrides

    cfg = compose(tiny_run_overrides(tiny_model_dir, keyword_data, tmp_path / "run", "task.scoring=loglik"))
    with pytest.raises(ConfigError, match="task.scoring=loglik scores the options of commonsense"):
        check_config(cfg)


def test_forwards_keep_the_batch_size_and_the_logits_budget(monkeypatch):
    rows = [([0] * length, n) for length, n in [(9, 2), (30, 20), (12, 5), (5, 1), (30, 3), (18, 9), (7, 6)]]
    monkeypatch.setattr(loglik, "LOGITS_BUDGET", 3 * 10 * 100)
    groups = batches(rows, batch_size=3, vocab=100)
    assert sorted(i for group in groups for i in group) == list(range(len(rows)))  # every row once
    lengths = [len(rows[i][0]) for group in groups for i in group]
    assert lengths == sorted(lengths, reverse=True)  # longest first
    for group in groups:
        assert len(group) <= 3
        keep = max(rows[i][1] for i in group)
        assert len(group) == 1 or len(group) * keep * 100 <= loglik.LOGITS_BUDGET  # a row alone may pass it
    assert [1] in groups  # the 20-token continuation needs a forward of its own
    assert len(batches(rows, batch_size=3, vocab=1)) == 3  # a budget that never binds: ceil(7 / 3)


def test_a_small_logits_budget_changes_the_forwards_not_the_scores(model_and_tokenizer, monkeypatch):
    model, tokenizer = model_and_tokenizer
    chosen = records()
    rows = encode_records(tokenizer, chosen)
    expected = [by_hand(model, tokenizer, c, t) for record in chosen for c, t in record["pairs"]]
    calls = []
    hook = model.register_forward_hook(lambda module, args, output: calls.append(1))
    monkeypatch.setattr(loglik, "LOGITS_BUDGET", 4 * model.config.vocab_size)  # 4 scored tokens a forward
    got = continuation_logprobs(model, rows, len(rows), tokenizer.pad_token_id, "cpu")
    assert got == pytest.approx(expected, abs=1e-4)
    split = len(calls)
    assert split == len(batches(rows, len(rows), model.config.vocab_size)) and split > 1
    # processes in lockstep (ZeRO-3, FSDP): extra forwards of row 0 leave every score as it was
    calls.clear()
    padded = continuation_logprobs(model, rows, len(rows), tokenizer.pad_token_id, "cpu", forwards=split + 3)
    hook.remove()
    assert len(calls) == split + 3 and padded == pytest.approx(expected, abs=1e-4)
