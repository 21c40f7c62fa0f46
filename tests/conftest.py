"""Shared fixtures: tiny models built from configs in the test itself (no download)."""

import json

import pytest
import torch
from torch import nn


class Holder(nn.Module):
    """A model whose only layer is `proj`: lets apply_adapter wrap one nn.Linear."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.proj = linear

    def forward(self, x):
        return self.proj(x)


def holder(in_features: int, out_features: int, dtype=torch.float64, seed: int = 0, bias: bool = True) -> Holder:
    torch.manual_seed(seed)
    return Holder(nn.Linear(in_features, out_features, bias=bias, dtype=dtype))


def tiny_bert(num_labels: int = 3, seed: int = 0):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=num_labels,
    )
    return BertForSequenceClassification(config).eval()


def tiny_llama(method: str, dropout: float = 0.1, seed: int = 0, dtype=torch.float32):
    """A 2-block LLaMA with every Linear of the blocks adapted; random B so that every expert contributes."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from goat.adapters import apply_adapter, method_config

    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        vocab_size=128,
        use_cache=False,
    )
    model = LlamaForCausalLM(config).to(dtype)
    cfg = method_config(method, r=8, lora_alpha=16, lora_dropout=dropout, svd_cache_dir=None)
    model = apply_adapter(model, cfg)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_()
    return model


@pytest.fixture(autouse=True)
def _no_svd_cache(monkeypatch, tmp_path):
    """Tests never write to the user's SVD cache."""
    monkeypatch.setenv("HOME", str(tmp_path))


def train_and_losses(overrides: list[str]) -> tuple[dict, list[float]]:
    """Composes goat-train's config from `overrides` (one must set output_dir), trains, and returns the results
    and the logged train/loss values in order."""
    import json
    from pathlib import Path

    from goat.cli import compose
    from goat.train import train

    cfg = compose(overrides)
    results = train(cfg)
    lines = (Path(cfg.output_dir) / "metrics.jsonl").read_text().splitlines()
    return results, [json.loads(line)["train/loss"] for line in lines if "train/loss" in line]


WORDS = ["alpha", "beta", "gamma", "delta", "eps", "zeta", "eta", "theta", "iota", "kappa", "lam", "mu"]


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    """A 2-layer BERT config and a word-level tokenizer: no download, random weights (model.from_config=true)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import BertConfig, PreTrainedTokenizerFast

    root = tmp_path_factory.mktemp("tiny_bert")
    vocab = {token: i for i, token in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *WORDS])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]"
    )
    tokenizer.save_pretrained(root)
    BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=32,
    ).save_pretrained(root)
    return root


def byte_level_bpe(texts: list[str], vocab_size: int, prepend_bos: bool):
    """A byte-level BPE tokenizer trained here on `texts` (ids 0-2: <s>, </s>, <pad>), for tiny causal LMs; with
    prepend_bos every encoding starts with <s>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    special = ["<s>", "</s>", "<pad>"]
    core.train_from_iterator(
        texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special, initial_alphabet=alphabet)
    )
    if prepend_bos:
        core.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


@pytest.fixture(scope="module")
def keyword_data(tmp_path_factory):
    """Label 1 iff the sentence contains "alpha": learnable in a few dozen steps."""
    root = tmp_path_factory.mktemp("keyword_data")
    generator = torch.Generator().manual_seed(0)
    for split, size in (("train", 256), ("validation", 128)):
        with open(root / f"{split}.jsonl", "w") as handle:
            for i in range(size):
                words = [WORDS[1 + int(j)] for j in torch.randint(0, len(WORDS) - 1, (6,), generator=generator)]
                label = i % 2
                if label:
                    words[int(torch.randint(0, 6, (1,), generator=generator))] = "alpha"
                handle.write(json.dumps({"text": " ".join(words), "label": label}) + "\n")
    return root


def tiny_run_overrides(model_dir, data_dir, out, *extra):
    """goat-train overrides for a 40-step GOAT run of the tiny BERT on the keyword task (CPU, no logger)."""
    return [
        "task=text_files",
        f"task.data_dir={data_dir}",
        "task.max_length=16",
        f"model.name_or_path={model_dir}",
        "model.from_config=true",
        "method=goat",
        "method.r=32",
        "method.lora_alpha=64",
        "model.pretrained_label=",
        "trainer=cpu",
        "trainer.batch_size=16",
        "trainer.micro_batch_size=8",
        "trainer.max_steps=40",
        "trainer.lr=5e-3",
        "trainer.warmup_steps=0",
        "trainer.log_every_steps=5",
        "trainer.progress=false",
        "trainer.eval_batch_size=64",
        "logger=none",
        f"output_dir={out}",
        *extra,
    ]
