"""One run under every shipped accelerate config on this machine's GPUs, side by side: loss curves and
throughput against the single-GPU run (and a second seed of it, for the noise floor). Writes a Markdown table.

    python scripts/distributed_check.py --task sst2 --model MINILM_DIR --data DIR/glue/sst2 --out OUT
    python scripts/distributed_check.py --task gsm8k --model SMOLLM2_DIR --data DIR/math --out OUT

sst2: all-MiniLM-L6-v2 on GLUE SST-2; gsm8k: SmolLM2-135M on GSM8K (data: the folder holding
gsm8k_official/). With 2+ GPUs: single, single seed 1, ddp, zero2, zero3, fsdp (2 processes, the same global
batch). With 1 GPU: single, single seed 1, zero2, zero3, fsdp on one process (checks the engines' GPU paths, not
scaling).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


TASKS = {  # overrides, the default global batch, training examples and the description in the table
    "sst2": (
        ["task=glue/sst2", "task.max_eval_samples=872", "trainer.warmup_steps=10"],
        64,
        16000,
        "MiniLM on GLUE SST-2",
    ),
    "gsm8k": (
        [
            "task=math/gsm8k",
            "model=smollm2-135m",
            "task.max_length=384",
            "task.max_eval_samples=64",
            "task.max_new_tokens=96",
            "trainer.lr=2e-4",
            "trainer.warmup_steps=10",
            "trainer.eval_batch_size=64",
        ],
        32,
        4000,
        "SmolLM2-135M on GSM8K",
    ),
}


def run(name: str, config: str | None, processes: int, args, extra: list[str]) -> dict:
    out = Path(args.runs) / name
    task_overrides = TASKS[args.task][0]
    overrides = [
        *task_overrides,
        f"task.data_dir={args.data}",
        f"task.max_train_samples={args.train_samples}",
        f"model.name_or_path={args.model}",
        f"method={args.method}",
        f"trainer.max_steps={args.steps}",
        f"trainer.batch_size={args.batch}",
        f"trainer.micro_batch_size={args.batch // 2}",
        "trainer.log_every_steps=5",
        "trainer.progress=false",
        "logger=none",
        f"output_dir={out}",
        "overwrite=true",
        *extra,
    ]
    if config is None:
        command = [sys.executable, "-m", "goat.cli", *overrides]
    else:
        command = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--config_file",
            f"goat/configs/accelerate/{config}.yaml",
        ]
        command += ["--num_processes", str(processes), "-m", "goat.cli", *overrides]
    start = time.perf_counter()
    done = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}
    )
    wall = time.perf_counter() - start
    if done.returncode != 0:
        return {"name": name, "error": done.stderr[-1500:], "wall": wall}
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    curve = {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}
    speeds = [r["train/tokens_per_s"] for r in rows if "train/tokens_per_s" in r][1:]  # first window: warm-up
    results = json.loads((out / "results.json").read_text())
    return {
        "name": name,
        "processes": processes,
        "curve": curve,
        "tokens_per_s": statistics.median(speeds),
        "accuracy": results["final"][results["main_metric"]],
        "wall": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--task", choices=sorted(TASKS), default="sst2")
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--runs", default="runs-distributed")
    parser.add_argument("--method", default="goat")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, help="global batch (default: the task's)")
    parser.add_argument("--train-samples", type=int, help="training examples (default: the task's)")
    parser.add_argument("--only", help="comma-separated run names to do (default: all)")
    args = parser.parse_args()
    _, batch, samples, described = TASKS[args.task]
    args.batch, args.train_samples = args.batch or batch, args.train_samples or samples
    gpus = torch.cuda.device_count()
    n = 2 if gpus >= 2 else 1
    plan = [("single", None, 1, []), ("single-seed1", None, 1, ["trainer.seed=1"])]
    if n == 2:
        plan.append(("ddp", "ddp", 2, []))
    plan += [("zero2", "zero2", n, []), ("zero3", "zero3", n, []), ("fsdp", "fsdp", n, [])]
    if args.only:
        plan = [p for p in plan if p[0] in args.only.split(",") or p[0] == "single"]
    results = [run(name, config, processes, args, extra) for name, config, processes, extra in plan]
    reference = results[0]
    lines = [
        f"{gpus} x {torch.cuda.get_device_name(0)}; {args.method}, {described}, global batch {args.batch}, "
        f"{args.steps} steps, bf16; {time.strftime('%Y-%m-%d')}",
        "",
        "| run | processes | tokens/s | vs single | max abs loss diff vs single | mean abs diff | accuracy | wall s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['name']} | failed: {r['error'].splitlines()[-1][:150]} |||||| {r['wall']:.0f} |")
            continue
        steps = sorted(set(r["curve"]) & set(reference.get("curve", {})))
        diffs = [abs(r["curve"][s] - reference["curve"][s]) for s in steps] or [float("nan")]
        lines.append(
            f"| {r['name']} | {r['processes']} | {r['tokens_per_s']:,.0f} | "
            f"{r['tokens_per_s'] / reference['tokens_per_s']:.2f}x | {max(diffs):.4f} | {statistics.mean(diffs):.4f} | "
            f"{r['accuracy']:.2f} | {r['wall']:.0f} |"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "distributed.md").write_text("\n".join(lines) + "\n")
    (args.out / "distributed.json").write_text(json.dumps(results, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
