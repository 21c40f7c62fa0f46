"""reproduce-small-commonsense: the grid of SmolLM2-135M on the commonsense tasks with a train split, the per-task
training files it reads, and scripts/convert_gguf.py, which builds the offline model from a GGUF file."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from goat import grid
from goat.cli import compose
from goat.tables import load_spec
from goat.tasks import load_task

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
# column task -> (LLM-Adapters folder, training records there: ../shared/data/README.md)
TRAIN_SPLITS = {
    "commonsense/boolq": ("boolq", 9427),
    "commonsense/arc_e": ("ARC-Easy", 2251),
    "commonsense/arc_c": ("ARC-Challenge", 1119),
    "commonsense/obqa": ("openbookqa", 4957),
}


@pytest.fixture(scope="module")
def spec():
    return load_spec()


def test_grid_is_the_small_methods_times_four_tasks_with_one_shared_setting(spec, tmp_path):
    runs = grid.expand("small_commonsense", [0, 1, 2], tmp_path / "runs", data=tmp_path, spec=spec)
    methods = list(spec["tables"]["small"]["rows"])
    assert len(methods) == 11 and list(spec["tables"]["small_commonsense"]["rows"]) == methods
    assert len(runs) == 11 * 4 * 3
    assert {r.task for r in runs} == set(TRAIN_SPLITS)
    for run in runs:
        folder, _ = TRAIN_SPLITS[run.task]
        overrides = dict(o.split("=", 1) for o in run.overrides)
        assert overrides["method"] == run.variant  # the rows are the plain methods
        assert overrides["model"] == "smollm2-135m"
        assert overrides["task.data_dir"] == f"{tmp_path}/commonsense"
        assert overrides["task.train_file"] == f"{folder}/train.json"
        assert overrides["trainer.lr"] == "5e-4"  # one learning rate for every method (none is tuned alone)
        assert run.output_dir == tmp_path / "runs" / "small_commonsense" / run.task / run.variant / f"seed{run.seed}"
    # every run of a method differs from another method's only in the method
    settings = {
        tuple(o for o in r.overrides if not o.startswith("method=")) for r in runs if r.task == "commonsense/arc_c"
    }
    assert len(settings) == 1


def test_loss_figure_reads_the_tables_own_runs(spec, tmp_path):
    table = {
        r.output_dir: r.overrides for r in grid.expand("small_commonsense", [0], tmp_path, data=tmp_path, spec=spec)
    }
    figure = grid.expand("small_commonsense_loss", [0], tmp_path, data=tmp_path, spec=spec)
    assert len(figure) == 7 and all(table[r.output_dir] == r.overrides for r in figure)
    # the same holds for reproduce-small's loss figure, whose SST-2 column has its own data folder
    small = {r.output_dir: r.overrides for r in grid.expand("small", [0], tmp_path, data=tmp_path, spec=spec)}
    assert all(small[r.output_dir] == r.overrides for r in grid.expand("small_loss", [0], tmp_path, data=tmp_path))


def test_a_run_composes_to_smollm2_with_the_papers_adapter_and_a_short_answer_budget(spec, tmp_path):
    run = next(
        r
        for r in grid.expand("small_commonsense", [1], tmp_path, data=tmp_path, spec=spec)
        if (r.task, r.variant) == ("commonsense/arc_c", "goat")
    )
    cfg = compose(run.train_args())
    assert (cfg.model.name_or_path, cfg.model.kind, cfg.model.dtype) == (
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        "causal_lm",
        "float32",
    )
    assert (cfg.method.method, cfg.method.r, cfg.method.lora_alpha) == ("goat", 32, 64.0)  # Table 3's setting
    assert list(cfg.method.target_modules) == ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]
    assert list(cfg.task.eval_sets) == ["arc_c"] and cfg.task.train_file == "ARC-Challenge/train.json"
    t = cfg.trainer
    assert (t.batch_size, t.micro_batch_size, t.epochs, t.mixed_precision, t.seed) == (32, 32, 1.0, "bf16", 1)
    # "the correct answer is answer3" is 6 SmolLM2 tokens: 8 new tokens hold it
    assert cfg.task.max_new_tokens == 8 and cfg.task.max_train_samples == 1024 and cfg.task.max_eval_samples == 1000


def _write_split(folder: Path, split: str, answers: list[str]) -> list[dict]:
    records = [
        {
            "instruction": f"Please choose the correct answer to the question: q{i}?\n\nAnswer1: a Answer2: b\n\n"
            "Answer format: answer1/answer2",
            "input": "",
            "output": f"the correct answer is {answer}",
            "answer": answer,
        }
        for i, answer in enumerate(answers)
    ]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{split}.json").write_text(json.dumps(records))
    return records


def test_per_task_training_file_is_read_below_the_data_folder(tmp_path):
    train = _write_split(tmp_path / "ARC-Easy", "train", ["answer1", "answer2", "answer2"])
    _write_split(tmp_path / "ARC-Easy", "test", ["answer2", "answer1"])
    cfg = compose(["task=commonsense/arc_e", f"task.data_dir={tmp_path}", "task.train_file=ARC-Easy/train.json"])
    task = load_task(cfg.task, seed=0)
    assert [row["response"] for row in task.train] == [r["output"] for r in train]
    assert task.train[0]["prompt"].endswith("Answer format: answer1/answer2\n\n### Response:\n")
    assert [row["answer"] for row in task.eval_sets["arc_e"]] == ["answer2", "answer1"]
    assert task.main_metric == "arc_e/accuracy"


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="needs ../shared/data (the benchmark slices)")
def test_every_column_reads_a_real_train_split():
    from goat.tasks.records import read_records

    for task, (folder, count) in TRAIN_SPLITS.items():
        records = read_records(SHARED_DATA / "commonsense" / folder / "train.json")
        assert len(records) == count, task
        assert all(r["output"] == f"the correct answer is {r['answer']}" for r in records[:50]), task


# ----- scripts/convert_gguf.py on a tiny LLaMA written with the gguf package -----
HIDDEN, FFN, LAYERS = 16, 32, 2


def _tiny_gguf(path: Path) -> dict:
    """A 2-layer LLaMA with a byte-level BPE vocabulary, float32 tensors; returns the tensors by GGUF name."""
    gguf = pytest.importorskip("gguf")
    from tokenizers.pre_tokenizers import ByteLevel

    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *sorted(ByteLevel.alphabet()), "Ġt", "he"]
    rng = np.random.default_rng(0)
    tensors = {"token_embd.weight": (len(tokens), HIDDEN), "output_norm.weight": (HIDDEN,)}
    for i in range(LAYERS):
        shapes = {
            "attn_norm": (HIDDEN,),
            "ffn_norm": (HIDDEN,),
            "attn_q": (HIDDEN, HIDDEN),
            "attn_k": (HIDDEN // 2, HIDDEN),  # 2 query heads share 1 key/value head of 8
            "attn_v": (HIDDEN // 2, HIDDEN),
            "attn_output": (HIDDEN, HIDDEN),
            "ffn_gate": (FFN, HIDDEN),
            "ffn_up": (FFN, HIDDEN),
            "ffn_down": (HIDDEN, FFN),
        }
        tensors.update({f"blk.{i}.{name}.weight": shape for name, shape in shapes.items()})
    tensors = {name: (0.1 * rng.standard_normal(shape)).astype(np.float32) for name, shape in tensors.items()}
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(LAYERS)
    writer.add_context_length(64)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(2)
    writer.add_head_count_kv(1)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3, 3, 3] + [1] * (len(tokens) - 3))  # 3: control tokens
    writer.add_token_merges(["Ġ t", "h e"])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(2)
    for name, value in tensors.items():
        writer.add_tensor(name, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return tensors


@pytest.fixture(scope="module")
def convert_gguf():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import convert_gguf
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    return convert_gguf


def test_converted_gguf_loads_in_goat_with_the_same_weights_and_logits(convert_gguf, tmp_path):
    from safetensors.torch import load_file

    from goat.models import load_model

    tensors = _tiny_gguf(tmp_path / "tiny.gguf")
    data = (tmp_path / "tiny.gguf").read_bytes()
    parts = [tmp_path / f"tiny.gguf.part-a{c}" for c in "abc"]  # what `split -b` makes of it
    for index, part in enumerate(parts):
        part.write_bytes(data[index * len(data) // 3 : (index + 1) * len(data) // 3])

    summary = convert_gguf.convert(
        parts, tmp_path / "model", expected_sha256=convert_gguf.sha256(tmp_path / "tiny.gguf")
    )
    assert summary["max_logit_difference"] == 0.0  # the saved folder computes what the GGUF-loaded model computed
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("tiny")) == ["model"]  # no leftovers
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert "quantization_config" not in config and config["num_hidden_layers"] == LAYERS
    saved = load_file(str(tmp_path / "model" / "model.safetensors"))
    # tensors that GGUF stores in transformers' own layout come back bit for bit (q and k are permuted by design)
    assert torch.equal(saved["model.embed_tokens.weight"], torch.from_numpy(tensors["token_embd.weight"]))
    assert torch.equal(saved["model.layers.1.mlp.down_proj.weight"], torch.from_numpy(tensors["blk.1.ffn_down.weight"]))
    assert torch.equal(
        saved["model.layers.0.self_attn.v_proj.weight"], torch.from_numpy(tensors["blk.0.attn_v.weight"])
    )

    cfg = compose(["task=commonsense/arc_e", "model=smollm2-135m", f"model.name_or_path={tmp_path / 'model'}"])
    model, tokenizer = load_model(cfg.model)
    assert type(model).__name__ == "LlamaForCausalLM" and tokenizer.pad_token_id == 2
    assert tokenizer.decode(tokenizer("the correct answer")["input_ids"]) == "the correct answer"


def test_conversion_refuses_a_missing_part_and_an_existing_folder(convert_gguf, tmp_path):
    pytest.importorskip("gguf")
    _tiny_gguf(tmp_path / "tiny.gguf")
    data = (tmp_path / "tiny.gguf").read_bytes()
    (tmp_path / "part-aa").write_bytes(data[: len(data) // 2])
    expected = convert_gguf.sha256(tmp_path / "tiny.gguf")
    with pytest.raises(SystemExit, match="a part is missing or bad"):
        convert_gguf.convert([tmp_path / "part-aa"], tmp_path / "model", expected_sha256=expected)
    with pytest.raises(SystemExit, match="not found"):
        convert_gguf.convert([tmp_path / "part-aa", tmp_path / "part-ab"], tmp_path / "model")
    (tmp_path / "model").mkdir()
    with pytest.raises(SystemExit, match="exists already"):
        convert_gguf.convert([tmp_path / "tiny.gguf"], tmp_path / "model")
