"""Is a difference between two rows of a table noise? The paired test over the test questions (goat.stats), read from
the per-question files that loglik scoring writes, rendered under a table whose spec has a `significance` block:

    significance:
      baseline: [lora, goat]              # every other row is compared with each (or one row: baseline: lora)
      groups: {In-domain: [ARC-e, ...]}   # column names whose questions are pooled, each set weighing the same

A column's questions are those of its `key` ("arc_e/acc": set arc_e, acc = the option with the largest summed
log-probability, acc_norm = per character) in <run>/generations/step-<final step>/<set>.jsonl, each question's
correctness averaged over the row's seeds at the point its cell was chosen at (a swept table: the learning rate
chosen on held-out rows). The same questions must lie behind every row: the test sets' subsets are drawn with a fixed
seed (goat.tasks.records.EVAL_SUBSET_SEED).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from goat.results import leaf_cell
from goat.stats import ROUNDS, PairedTest, paired_test
from goat.tables import RESULTS_FILE, cell_variant, run_dir, runs_folder, swept_variant

CHOICE_FIELDS = {"acc": "choice", "acc_norm": "choice_norm"}  # a loglik metric -> the per-question field it counts
GENERATIONS = "generations"  # <run>/generations/step-<step:08d>/<set>.jsonl, as goat.tasks.instruction writes them
LEVEL = 0.05


def question_outcomes(spec: dict, root: Path, table_name: str, column: dict, row: str) -> np.ndarray | None:
    """(questions,) the row's correctness on each question of the column's set, averaged over its seeds at its chosen
    point; None while the cell has no finished run. A finished run without its per-question file is an error."""
    cell = leaf_cell(spec, root, table_name, column, row)
    if not cell.values:
        return None
    set_name, metric = column["key"].split("/")
    if metric not in CHOICE_FIELDS:
        raise ValueError(f"{table_name}: significance needs loglik columns (key <set>/acc or acc_norm), got {column}")
    folder = runs_folder(spec, table_name, root)
    variant = swept_variant(cell_variant(row, column), cell.chosen)
    per_seed = []
    for seed in cell.seeds:
        run = run_dir(folder, column["task"], variant, seed)
        step = json.loads((run / RESULTS_FILE).read_text())["final"]["step"]
        path = run / GENERATIONS / f"step-{step:08d}" / f"{set_name}.jsonl"
        if not path.exists():
            raise ValueError(f"{path} is missing: the paired test reads each question's outcome (carry it back too)")
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        per_seed.append([float(r[CHOICE_FIELDS[metric]] == r["gold"]) for r in rows])
    if len({len(outcomes) for outcomes in per_seed}) > 1:
        raise ValueError(f"{table_name}: {row}'s seeds scored different numbers of {set_name} questions")
    return np.mean(per_seed, axis=0)


def group_outcomes(spec: dict, root: Path, name: str, row: str, columns: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(outcomes, set of each question) pooled over the named columns; empty while a column has no run."""
    by_name = {column["name"]: column for column in spec["tables"][name]["columns"]}
    unknown = [column for column in columns if column not in by_name]
    if unknown:
        raise ValueError(f"{name}: significance names columns {unknown} the table does not have")
    parts = [(column, question_outcomes(spec, root, name, by_name[column], row)) for column in columns]
    if any(outcomes is None for _, outcomes in parts):
        return np.zeros(0), np.zeros(0, dtype=str)
    return np.concatenate([o for _, o in parts]), np.concatenate([[c] * len(o) for c, o in parts])


def compare(a: tuple, b: tuple, what: str) -> PairedTest | None:
    """The paired test of rows a and b (group_outcomes of each) on the same questions; None if either is empty."""
    if not len(a[0]) or not len(b[0]):
        return None
    if not np.array_equal(a[1], b[1]):
        raise ValueError(f"{what}: the two rows scored different questions (their test subsets differ)")
    return paired_test(a[0], b[0], a[1])


def score(outcomes: tuple) -> float:
    """Points of accuracy, every set weighing the same (the group's average column)."""
    values, sets = outcomes
    return 100.0 * float(np.mean([values[sets == s].mean() for s in np.unique(sets)]))


def shown(test: PairedTest | None) -> list[str]:
    if test is None:
        return ["—", "—"]
    return [f"{test.difference:+.2f} [{test.low:+.2f}, {test.high:+.2f}]", f"{test.p_value:.3g}"]


def significance_markdown(spec: dict, root: Path, name: str) -> list[str]:
    """Each row against each baseline per group (difference, interval, p), then who wins each group, by how much,
    and whether the paired test tells it from noise. `baseline` names one row or a list of rows (e.g. LoRA, the
    peer, and GOAT, the subject): one table each."""
    table = spec["tables"][name]
    block = table["significance"]
    baselines = block["baseline"] if isinstance(block["baseline"], list) else [block["baseline"]]
    groups = block["groups"]
    rows = [row for row in table["rows"] if row not in table.get("not_run", [])]
    unknown = [baseline for baseline in baselines if baseline not in rows]
    if unknown:
        raise ValueError(f"{name}: significance baseline {unknown} is not a row of the table")
    pooled = {(row, g): group_outcomes(spec, root, name, row, columns) for row in rows for g, columns in groups.items()}
    others = len(rows) - 1
    lines = []
    for baseline in baselines:
        lines += [
            "",
            f"### Is it noise? Every row against {baseline}, paired over the test questions",
            "",
            f"Δ: the row's accuracy minus {baseline}'s, in points, each question's correctness averaged over the "
            f"row's seeds at its chosen point, every set of the group weighing the same; [95% CI]: paired bootstrap "
            f"of the questions within each set ({ROUNDS:,} draws); p: two-sided sign-flip randomization test over "
            f"the questions (exact, or {ROUNDS:,} patterns). With {others} rows against {baseline} per group, "
            f"p < {LEVEL}/{others} = {LEVEL / max(others, 1):.4f} holds after Bonferroni's correction.",
            "",
            "| row | " + " | ".join(f"{g} Δ [95% CI] | p" for g in groups) + " |",
            "|---|" + "---|---|" * len(groups),
        ]
        for row in rows:
            if row == baseline:
                continue
            cells = [part for g in groups for part in shown(compare(pooled[row, g], pooled[baseline, g], f"{row}"))]
            lines.append(f"| {row} | " + " | ".join(cells) + " |")
    lines.append("")
    for group, columns in groups.items():
        lines.append(winner_line(group, columns, {row: pooled[row, group] for row in rows}))
    return lines


def winner_line(group: str, columns: list[str], pooled: dict[str, tuple]) -> str:
    """Who wins a group (best score), by how much over the runner-up, and the paired test of the two."""
    ranked = sorted((row for row, o in pooled.items() if len(o[0])), key=lambda row: -score(pooled[row]))
    if len(ranked) < 2:
        return f"- {group}: fewer than two rows have runs; no winner yet."
    first, second = ranked[:2]
    test = compare(pooled[first], pooled[second], group)
    if test.difference == 0:
        return (
            f"- **{group}** ({', '.join(columns)}; {test.questions:,} questions): no single winner: {first} and "
            f"{second} tie at {score(pooled[first]):.2f}."
        )
    verdict = (
        f"the paired test tells it from noise (p < {LEVEL})"
        if test.p_value < LEVEL
        else f"within noise: the paired test cannot tell them apart (p >= {LEVEL})"
    )
    return (
        f"- **{group}** ({', '.join(columns)}; {test.questions:,} questions): **{first}** wins with "
        f"{score(pooled[first]):.2f}, ahead of {second} ({score(pooled[second]):.2f}) by {test.difference:+.2f} "
        f"points [95% CI {test.low:+.2f}, {test.high:+.2f}], p = {test.p_value:.3g}: {verdict}."
    )
