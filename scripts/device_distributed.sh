#!/usr/bin/env bash
# scripts/distributed_check.py on a lent GPU machine (the `device` tool): carry scratch/wheels (goat's
# dependencies the machine lacks), scratch/wheels_ds (DeepSpeed built here, py3-none-any, and its small
# dependencies), scratch/data/glue and scratch/minilm-fp16. The table lands in $OUT/distributed.md.
set -uo pipefail
python3 -m pip install --no-deps --no-index -q scratch/wheels/*.whl scratch/wheels_ds/*.whl 2>&1 | tail -2
export PYTHONPATH=$PWD HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import deepspeed, accelerate, transformers; print('deepspeed', deepspeed.__version__, 'accelerate', accelerate.__version__)"
timeout "${LIMIT:-540}" python3 scripts/distributed_check.py --model "$PWD/scratch/minilm-fp16" \
  --data scratch/data/glue/sst2 --out "${OUT:-/tmp}" "$@"
