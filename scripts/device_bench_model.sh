#!/usr/bin/env bash
# Issue 17's GPU measurements on a lent GPU machine (the `device` tool), one part per call (each fits 10 minutes):
#   PART=train-a   lora, goat, molora: training step at 4x512 and 16x512, eager and compiled (32 blocks)
#   PART=train-b   lora, hydralora, adamole, dora, pissa: the same
#   PART=decode    lora, goat, molora, hydralora, adamole: greedy decoding, batch 8 and 64, fast path and eager
#   PART=decode-b  lora, molora, hydralora, adamole: the fast path alone at batch 8 (what decode did not reach)
#   PART=decode-c  the same at batch 64
#   PART=decode-d  lora, dora, pissa: the fast path at batch 8 and 64
#   PART=decode-e  lora, hydralora, adamole: the fast path at batch 64 (what decode-c did not reach)
#   PART=decode-f  lora, pissa, dora: the fast path, pissa at batch 8 and 64, then dora (what decode-d did not reach)
#   PART=train-c   lora, pissa, hydralora-fused: training with CUDA graphs (what dora-pissa and routed-b left out)
#   PART=dropout   what per-expert dropout costs, 8 blocks at 4x512: lora and goat with and without dropout, goat
#                  with one mask per token (decides whether a fused Triton dropout kernel is worth writing)
#   PART=graphs    lora, goat, molora at 4x512: default and reduce-overhead (CUDA graphs), one step of each profiled
#                  (kernel counts in the json, the busiest kernels in profiles.txt): is goat's extra time launches?
#   PART=fused     the fused Triton dropout kernels (goat's and molora's default on CUDA): first their GPU tests
#                  (tests/test_slot_dropout_triton.py, pytest from $WHEELS if the image lacks it), then lora,
#                  goat, goat-torch, molora, molora-torch at 4x512 and 16x512 with CUDA graphs (reduce-overhead)
#   PART=routed-a  lora, goat, molora at 4x512 and 16x512 with CUDA graphs, after the kernels' GPU tests
#   PART=routed-b  lora, adamole, hydralora: the same, each also with the other dropout path (one mask for all
#                  experts; -fused: the router and AdaMoLE's threshold from the kernels' loads of x, adamole's
#                  default on CUDA since 2026-12-03; -torch: torch ops, hydralora's default)
#   PART=tiles     the fused kernels' launch settings (benchmarks/slot_dropout_tiles.py): each kernel at the 7B
#                  shapes under every candidate tile, beside a compiled LoRA down-projection; $OUT/tiles/
#   PART=recipe    goat-train's math recipe on the LLaMA-2-7B shape (scripts/shape_model.py, random weights),
#                  micro-batch 4 padded to 512 tokens (the benchmark's 4x512), 40 steps + a short generation
#                  evaluation, once per compile mode in MODES (default: reduce-overhead, then default)
#   PART=profile   where a goat-train step of the recipe spends its time (scripts/profile_train.py): the recipe's
#                  run with CUDA graphs (MODES, default reduce-overhead), 2 steps, 1 under torch.profiler, then
#                  the model benchmark's step beside the trainer's on the same model (compare_stages)
# Every part includes lora, so its "x LoRA" ratios come from the same run. Results: $OUT/<part>/model_speed.{md,json}
# (recipe: $OUT/recipe-<mode>/{results.json,metrics.jsonl,config.yaml}).
# The machine has torch, transformers, peft and accelerate; the recipe part also needs goat's other dependencies
# as wheels for Python 3.12 in $WHEELS (hydra-core, omegaconf, antlr4-python3-runtime 4.9.3, datasets and what it
# needs), made here with `pip download --no-deps --only-binary=:all: --python-version 3.12 ... -d scratch/wheels_ds`,
# and GSM8K in $DATA (default scratch/data/math, a copy of ../shared/data/math/gsm8k_official).
# Usage there: PART=train-a bash scripts/device_bench_model.sh
set -uo pipefail
OUT=${OUT:-/tmp}
PART=${PART:?name the part: PART=train-a | train-b | train-c | decode | decode-b | decode-c | decode-d | decode-e | decode-f | dropout | graphs | fused | routed-a | routed-b | tiles | recipe | profile}
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
bench() { python3 benchmarks/model_speed.py --out "$OUT/$PART" --budget "${BUDGET:-540}" "$@"; }
# the fused Triton kernels' GPU tests (pytest from $WHEELS if the image lacks it): the timing runs only after they pass
kernel_tests() {
  python3 -c "import pytest" 2>/dev/null || python3 -m pip install --no-deps --no-index -q "${WHEELS:-scratch/wheels_ds}"/*.whl
  python3 -m pytest tests/test_slot_dropout_triton.py -p no:cacheprovider -q -x -W ignore > /tmp/kernel-tests.log 2>&1
  local status=$?
  grep -E "passed|failed|error" /tmp/kernel-tests.log | tail -5
  [ $status -eq 0 ] || tail -40 /tmp/kernel-tests.log
  return $status
}
case "$PART" in
  train-a) bench --methods lora,goat,molora --decode-batches '' ;;
  train-b) bench --methods lora,hydralora,adamole,dora,pissa --decode-batches '' ;;
  decode)  bench --methods lora,goat,molora,hydralora,adamole --shapes '' ;;
  decode-b) bench --methods lora,molora,hydralora,adamole --shapes '' --decode-batches 8 --decode-paths fast ;;
  decode-c) bench --methods lora,molora,hydralora,adamole --shapes '' --decode-batches 64 --decode-paths fast ;;
  decode-d) bench --methods lora,dora,pissa --shapes '' --decode-batches 8,64 --decode-paths fast ;;
  decode-e) bench --methods lora,hydralora,adamole --shapes '' --decode-batches 64 --decode-paths fast ;;
  decode-f) bench --methods lora,pissa,dora --shapes '' --decode-batches 8,64 --decode-paths fast ;;
  train-c)
    kernel_tests || exit 1
    bench --methods lora,pissa,hydralora-fused --modes reduce-overhead --decode-batches '' ;;
  dropout) bench --methods lora,lora-nodrop,goat,goat-shared,goat-nodrop --layers 8 --shapes 4x512 --decode-batches '' ;;
  graphs)  bench --methods lora,goat,molora --modes default,reduce-overhead --shapes 4x512 --decode-batches '' \
             --svd-cache /tmp/svd --profile ;;
  fused)
    kernel_tests || exit 1
    # goat (the fused kernels, dropout_kernel=auto on CUDA) first: --budget skips what would not fit
    bench --methods lora,goat,goat-torch,molora,molora-torch --modes reduce-overhead --decode-batches '' \
      --svd-cache /tmp/svd ;;
  routed-a)
    kernel_tests || exit 1
    bench --methods lora,goat,molora --modes reduce-overhead --decode-batches '' --svd-cache /tmp/svd ;;
  routed-b)
    kernel_tests || exit 1
    bench --methods lora,adamole,adamole-torch,hydralora,hydralora-fused --modes reduce-overhead --decode-batches '' ;;
  tiles)
    timeout "${BUDGET:-540}" python3 benchmarks/slot_dropout_tiles.py --out "$OUT/tiles" 2>&1 | tail -40 ;;
  profile)
    wheels=$(ls "${WHEELS:-scratch/wheels_ds}"/*.whl 2>/dev/null)
    [ -n "$wheels" ] && python3 -m pip install --no-deps --no-index -q $wheels 2>&1 | tail -2
    python3 scripts/shape_model.py --out /tmp/llama2-7b-shape
    for mode in ${MODES:-reduce-overhead}; do
      echo "[$(date +%T) +${SECONDS}s] profile $mode"; mkdir -p "$OUT/profile-$mode"
      TORCH_LOGS=${TORCH_LOGS:-perf_hints,recompiles} timeout "${RUN_BUDGET:-480}" python3 \
        scripts/profile_train.py --out "$OUT/profile-$mode" --skip 2 --steps 1 -- task=math/gsm8k \
        task.data_dir="${DATA:-scratch/data/math}" model.name_or_path=/tmp/llama2-7b-shape model.from_config=true \
        method=goat method.r=32 method.lora_alpha=64 method.svd_cache_dir=/tmp/svd trainer.max_steps=4 \
        trainer.batch_size=4 trainer.micro_batch_size=4 trainer.log_every_steps=1 trainer.compile="$mode" \
        trainer.pad_to_multiple_of=512 task.max_eval_samples=4 task.max_new_tokens=4 trainer.progress=false \
        logger=none output_dir="/tmp/profile-$mode" > "$OUT/profile-$mode.log" 2>&1
      echo "exit $?"; grep -v "^V\|^I\|DEBUG" "$OUT/profile-$mode.log" | tail -25 | cut -c1-300
      cp "/tmp/profile-$mode/metrics.jsonl" "$OUT/profile-$mode/" 2>/dev/null
    done
    ;;
  recipe)
    wheels=$(ls "${WHEELS:-scratch/wheels_ds}"/*.whl 2>/dev/null)
    [ -n "$wheels" ] && python3 -m pip install --no-deps --no-index -q $wheels 2>&1 | tail -2
    echo "[$(date +%T) +${SECONDS}s] wheels installed"
    python3 scripts/shape_model.py --out /tmp/llama2-7b-shape
    # one goat-train per compile mode (MODES, CUDA graphs first: the mode the benchmark finds fastest), each
    # given its share of BUDGET; the adapter and checkpoints stay in /tmp (hundreds of MB), the logs come back
    modes=(${MODES:-reduce-overhead default})
    for mode in "${modes[@]}"; do
      run=/tmp/recipe-$mode
      # the log streams into $OUT as it is written: a call stopped by its time limit still brings back how far it got
      mkdir -p "$OUT/recipe-$mode"
      timeout "$(( ${BUDGET:-540} / ${#modes[@]} ))" python3 -m goat.cli task=math/gsm8k \
        task.data_dir="${DATA:-scratch/data/math}" model.name_or_path=/tmp/llama2-7b-shape model.from_config=true \
        method=goat method.r=32 method.lora_alpha=64 trainer.max_steps=40 trainer.batch_size=4 \
        trainer.micro_batch_size=4 trainer.log_every_steps=5 trainer.compile="$mode" trainer.pad_to_multiple_of=512 \
        task.max_eval_samples=64 task.max_new_tokens=64 trainer.eval_batch_size=64 trainer.progress=false \
        logger=none output_dir="$run" 2>&1 | while IFS= read -r line; do printf '[%s +%4ds] %s\n' "$(date +%T)" \
        "$SECONDS" "$line"; done > "$OUT/recipe-$mode/goat-train.log"
      tail -15 "$OUT/recipe-$mode/goat-train.log"
      cp "$run"/{results.json,metrics.jsonl,config.yaml} "$OUT/recipe-$mode/" 2>/dev/null
      python3 - "$run" <<'PYTHON'
# the trained steps' time once compiled (the log windows after the first, which holds the compilation), beside the
# model benchmark's 4x512 step (every batch here is padded to 4 x 512: the same shapes); peak memory; and what one
# MetaMathQA epoch (395,000 examples, micro-batch 4: the paper's Table 7 says 36 h 59 min for GOAT on one A100)
# would take at that step time (an upper bound: real examples are shorter than 512 tokens)
import json, statistics, sys
from pathlib import Path
run = Path(sys.argv[1])
rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
logged = [row for row in rows if "train/step_s" in row][1:]
first = next((row for row in rows if "compile/first_step_s" in row), {})
results = json.loads((run / "results.json").read_text()) if (run / "results.json").exists() else {}
if logged:
    step_s = statistics.median(row["train/step_s"] for row in logged)
    real = statistics.median(row["train/tokens_per_s"] for row in logged)
    print(f"{run.name}: {1000 * step_s:.1f} ms a step, {4 * 512 / step_s:.0f} padded tokens/s ({real:.0f} real), "
          f"median of {len(logged)} logs after the first; first step {first.get('compile/first_step_s')} s, "
          f"graphs {logged[-1].get('compile/graphs')}; peak GiB by phase {results.get('memory_peaks_gb')}; MetaMathQA epoch "
          f"at this step time: {395_000 / 4 * step_s / 3600:.1f} h")
PYTHON
    done
    ;;
  *) echo "unknown PART=$PART"; exit 2 ;;
esac
