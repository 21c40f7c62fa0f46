#!/usr/bin/env bash
# reproduce-small on a lent GPU machine (the `device` tool), which has torch but no hub access and not all of
# goat's dependencies: carry scratch/wheels (hydra-core, omegaconf, antlr4, datasets, scattertext, ... built or
# downloaded here), scratch/data/glue (the GLUE slices) and scratch/minilm-fp16 (all-MiniLM-L6-v2 saved in fp16
# to fit the 64 MiB carry limit; goat loads it back in fp32). Runs go to runs-gpu/; what comes back is a tarball
# of their results.json, metrics.jsonl and config files (no weights) plus the grid's log.
# Usage there: SEEDS=0 LIMIT=540 bash scripts/device_reproduce_small.sh
set -uo pipefail
# TABLE picks another table of the same setting (small_ablation). WHEELS, DATA and MODEL name other folders (e.g. a smaller carry: scratch/c7/wheels, scratch/c7/minilm).
python3 -m pip install --no-deps --no-index -q "${WHEELS:-scratch/wheels}"/*.whl 2>&1 | tail -2
export PYTHONPATH=$PWD HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
timeout "${LIMIT:-540}" python3 -m goat.grid "${TABLE:-small}" --methods "${METHODS:-*}" --seeds "${SEEDS:-0}" --in-process \
  --data "${DATA:-scratch/data}" --runs runs-gpu --set "model.name_or_path=$PWD/${MODEL:-scratch/minilm-fp16}" \
  --set logger=none --set trainer.progress=false 2>&1 | grep -v -e "^Loading weights" -e "LOAD REPORT" \
  | tee "${OUT:-/tmp}/grid-seeds-$(echo "${SEEDS:-0}" | tr , _).log" | grep -E "finished|failed|runs|Error" | tail -60
tar czf "${OUT:-/tmp}/runs-gpu.tgz" --exclude='*.safetensors' --exclude='step-*' --exclude='final' --exclude='*.pt' runs-gpu
ls -la "${OUT:-/tmp}"
