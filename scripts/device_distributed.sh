#!/usr/bin/env bash
# scripts/distributed_check.py on a lent GPU machine (the `device` tool). Carry WHEELS (default scratch/wheels_ds:
# goat's dependencies the machine lacks, hydra-core, omegaconf, datasets, ... but not scattertext, to fit the
# 64 MiB carry; plus DeepSpeed built here, py3-none-any, and its small dependencies: pydantic, hjson, ...).
#   TASK=sst2 (default): carry scratch/sst2-small (16,000 SST-2 training rows + the dev set) and scratch/minilm-fp16.
#   TASK=gsm8k: SmolLM2-135M on GSM8K; carry scratch/math-small (gsm8k_official/), scratch/gguf_wheel and one
#     part of the GGUF file per call (scripts/device_smollm2.sh: the first call keeps its part and exits 3).
# The table lands in $OUT/distributed.md. Extra arguments go to distributed_check.py (--only ddp,fsdp ...).
set -uo pipefail
if [ "${TASK:-sst2}" = gsm8k ]; then
  bash scripts/device_smollm2.sh || exit $?
fi
python3 -m pip install --no-deps --no-index -q "${WHEELS:-scratch/wheels_ds}"/*.whl 2>&1 | tail -2
export PYTHONPATH=$PWD HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import deepspeed, accelerate, transformers; print('deepspeed', deepspeed.__version__, 'accelerate', accelerate.__version__)"
if [ "${TASK:-sst2}" = gsm8k ]; then
  model=/tmp/smollm2-135m data=scratch/math-small
else
  model="$PWD/scratch/minilm-fp16" data=scratch/sst2-small
fi
timeout "${LIMIT:-540}" python3 scripts/distributed_check.py --task "${TASK:-sst2}" --model "$model" --data "$data" \
  --out "${OUT:-/tmp}" "$@"
