#!/usr/bin/env bash
# scripts/distributed_check.py on a lent GPU machine (the `device` tool). Carry scratch/wheels_ds: goat's
# dependencies the machine lacks (hydra-core, omegaconf, datasets, ...; not scattertext, to fit the 64 MiB
# carry) plus DeepSpeed built here (py3-none-any) and its small dependencies (pydantic, hjson, ...); also
# scratch/sst2-small (the first 16,000 SST-2 training rows and the dev set) and scratch/minilm-fp16.
# The table lands in $OUT/distributed.md.
set -uo pipefail
python3 -m pip install --no-deps --no-index -q scratch/wheels_ds/*.whl 2>&1 | tail -2
export PYTHONPATH=$PWD HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import deepspeed, accelerate, transformers; print('deepspeed', deepspeed.__version__, 'accelerate', accelerate.__version__)"
timeout "${LIMIT:-540}" python3 scripts/distributed_check.py --model "$PWD/scratch/minilm-fp16" \
  --data scratch/sst2-small --out "${OUT:-/tmp}" "$@"
