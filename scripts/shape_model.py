"""A model folder that holds only a config and a tokenizer: the paper's LLaMA-2-7B shape, for speed runs.

goat-train builds it with random weights (model.from_config=true: loudly warned about, kept out of every results
table) directly on the GPU, so the paper's recipe can be timed at the paper's scale without a download:

    python scripts/shape_model.py --out shapes/llama2-7b
    goat-train task=math/gsm8k task.data_dir=DATA model.name_or_path=shapes/llama2-7b model.from_config=true \
        trainer.max_steps=40 ...

The config is LLaMA-2-7B's (meta-llama/Llama-2-7b-hf's config.json: hidden 4096, 32 blocks of 32 heads, MLP
11008, vocabulary 32000, RMSNorm 1e-5, rope theta 1e4, transformers' default). The tokenizer is byte-level (3
special tokens, then the 256 bytes, no merges): it needs no download, and since a byte is a token, texts are long
(a GSM8K question and its worked answer run to a few hundred tokens; some prompts alone pass 512 and are dropped).
A speed run pads every batch to one length (trainer.pad_to_multiple_of=512) to time the shapes the model benchmark
times. Its 259 ids use the first rows of the 32000-row embedding.
"""

from __future__ import annotations

import argparse
from pathlib import Path

LLAMA2_7B = {
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "vocab_size": 32000,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "tie_word_embeddings": False,
}
SPECIALS = ["<unk>", "<s>", "</s>"]


def byte_tokenizer():
    """A byte-level tokenizer: ids 0-2 <unk> <s> </s>, then one id per byte; "<s>" starts every text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {token: i for i, token in enumerate(SPECIALS + alphabet)}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def write_shape(out: Path, **overrides) -> Path:
    """Writes config.json (LLaMA-2-7B's, with `overrides`) and the byte-level tokenizer into `out`."""
    from transformers import LlamaConfig

    out.mkdir(parents=True, exist_ok=True)
    LlamaConfig(**{**LLAMA2_7B, **overrides}).save_pretrained(out)
    byte_tokenizer().save_pretrained(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="the model folder to write")
    args = parser.parse_args()
    print(write_shape(args.out))


if __name__ == "__main__":
    main()
