"""How much does picking the learning rate on the dev set it reports flatter each method of small_sweep?

Reads the committed runs (docs/results/small-sweep-h100/runs-results.tgz, the results.json of every run) and,
for every row and task, compares two ways to pick the rate:

- reported: the rate with the best mean dev accuracy over seeds 0-2, scored on those same seeds (the tables);
- held out: for each seed s, the rate with the best mean over the two other seeds, scored on seed s alone;
  the three held-out scores are averaged.

The difference (reported - held out) is how much choosing on the reported numbers adds. Writes
sweep_seed_holdout.csv (per row and task) and sweep_seed_holdout.json (per row, CoLA + MRPC average) next to the
tarball. Run: python scripts/sweep_seed_holdout.py
"""

from __future__ import annotations

import csv
import json
import re
import tarfile
from collections import defaultdict
from pathlib import Path

FOLDER = Path(__file__).resolve().parent.parent / "docs" / "results" / "small-sweep-h100"
TASKS = {"glue/cola": "CoLA", "glue/mrpc": "MRPC"}
NAME = re.compile(r"^small_sweep/glue/(cola|mrpc)/(.+)_lr([0-9.e-]+)/seed(\d+)/results\.json$")


def load_runs(tarball: Path) -> dict:
    """{(row, task): {lr: {seed: final dev accuracy}}} over the finished runs of the small_sweep folder."""
    runs: dict = defaultdict(lambda: defaultdict(dict))
    with tarfile.open(tarball) as tar:
        for member in tar.getmembers():
            match = NAME.match(member.name)
            if not match:
                continue
            results = json.load(tar.extractfile(member))
            if results.get("status") != "finished":
                continue
            task = TASKS[results["task"]]
            row, lr, seed = match.group(2), match.group(3), int(match.group(4))
            runs[(row, task)][lr][seed] = results["final"]["validation/accuracy"]
    return runs


def write_csv(name: str, rows: list[dict]) -> None:
    """rows (dicts with the same keys) as FOLDER/name, a header line first."""
    with open(FOLDER / name, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def pick(rates: dict, seeds: list[int]) -> str:
    """The rate with the best mean over seeds (ties: the first in sorted order, as a stable rule)."""
    complete = {lr: scores for lr, scores in rates.items() if all(s in scores for s in seeds)}
    return max(sorted(complete, key=float), key=lambda lr: mean(complete[lr][s] for s in seeds))


def main() -> None:
    runs = load_runs(FOLDER / "runs-results.tgz")
    seeds = [0, 1, 2]
    rows = []
    for (row, task), rates in sorted(runs.items()):
        rates = {lr: scores for lr, scores in rates.items() if all(s in scores for s in seeds)}
        best = pick(rates, seeds)
        reported = mean(rates[best][s] for s in seeds)
        held = []
        for s in seeds:
            lr = pick(rates, [t for t in seeds if t != s])
            held.append((s, lr, rates[lr][s]))
        held_out = mean(score for _, _, score in held)
        rows.append(
            {
                "row": row,
                "task": task,
                "rates": " ".join(sorted(rates, key=float)),
                "reported_lr": best,
                "reported": round(reported, 4),
                "held_out_lrs": " ".join(f"seed{s}:{lr}" for s, lr, _ in held),
                "held_out": round(held_out, 4),
                "cost": round(reported - held_out, 4),
            }
        )
    write_csv("sweep_seed_holdout.csv", rows)
    summary = {}
    for row in sorted({r["row"] for r in rows}):
        cells = {r["task"]: r for r in rows if r["row"] == row}
        if set(cells) != set(TASKS.values()):
            continue
        reported = mean(c["reported"] for c in cells.values())
        held_out = mean(c["held_out"] for c in cells.values())
        summary[row] = {
            "reported_avg": round(reported, 2),
            "held_out_avg": round(held_out, 2),
            "cost": round(reported - held_out, 2),
        }
    out = {
        "what": "CoLA + MRPC average dev accuracy of small_sweep's rows: rate chosen on the 3 reported seeds "
        "(reported_avg, the tables) against rate chosen on 2 seeds and scored on the third, averaged over "
        "the 3 held-out seeds (held_out_avg); cost = reported_avg - held_out_avg",
        "source": "docs/results/small-sweep-h100/runs-results.tgz (final validation/accuracy of each results.json)",
        "script": "scripts/sweep_seed_holdout.py",
        "rows": summary,
    }
    if "goat" in summary and "lora" in summary:
        out["goat_minus_lora"] = {
            "reported": round(summary["goat"]["reported_avg"] - summary["lora"]["reported_avg"], 2),
            "held_out": round(summary["goat"]["held_out_avg"] - summary["lora"]["held_out_avg"], 2),
        }
    (FOLDER / "sweep_seed_holdout.json").write_text(json.dumps(out, indent=1) + "\n")
    for row, values in summary.items():
        print(f"{row:14s} {values['reported_avg']:6.2f} {values['held_out_avg']:6.2f} {values['cost']:5.2f}")
    print(out.get("goat_minus_lora"))


if __name__ == "__main__":
    main()
