"""Welch's t-tests behind docs/results.md's p-values for small_sweep and small_sweep_rank.

Reads the committed runs (docs/results/small-sweep-h100/runs-results.tgz), takes each row at its reported rate
(the best mean dev accuracy over seeds 0-2, per task, as in the tables) and compares the 3 seeds of two rows
with Welch's unequal-variance t-test (scipy.stats.ttest_ind, equal_var=False, two-sided). Writes
sweep_welch.csv next to the tarball. Run: python scripts/sweep_welch.py
"""

from __future__ import annotations

from scipy.stats import ttest_ind
from sweep_seed_holdout import FOLDER, load_runs, mean, pick, write_csv

PAIRS = [  # (a, b): the comparisons docs/results.md quotes
    ("goat", "lora"),
    ("goat", "lora_r8"),
    ("goat_k4", "goat"),
    ("goat_k4", "lora_r16"),
    ("goat_k4", "lora"),
    ("goat_k8", "lora"),
    ("goat", "molora"),
    ("goat_k4", "molora_k4"),
    ("goat_k8", "molora_k8"),
]


def main() -> None:
    runs = load_runs(FOLDER / "runs-results.tgz")
    seeds = [0, 1, 2]
    rows = []
    for a, b in PAIRS:
        for task in ("CoLA", "MRPC"):
            scores = {}
            for name in (a, b):
                rates = runs[(name, task)]
                lr = pick(rates, seeds)
                scores[name] = (lr, [rates[lr][s] for s in seeds])
            result = ttest_ind(scores[a][1], scores[b][1], equal_var=False)
            rows.append(
                {
                    "a": a,
                    "b": b,
                    "task": task,
                    "a_lr": scores[a][0],
                    "b_lr": scores[b][0],
                    "a_mean": round(mean(scores[a][1]), 2),
                    "b_mean": round(mean(scores[b][1]), 2),
                    "diff": round(mean(scores[a][1]) - mean(scores[b][1]), 2),
                    "welch_p": round(float(result.pvalue), 3),
                }
            )
    write_csv("sweep_welch.csv", rows)
    for row in rows:
        print(row)


if __name__ == "__main__":
    main()
