"""Is a difference between two rows of a table noise? Rendered under a table whose spec has a `significance` block:

    significance:
      baseline: [lora, goat]              # every other row is compared with each (or one row: baseline: lora)
      groups: {In-domain: [ARC-e, ...]}   # column names whose questions are pooled, each set weighing the same
      test: questions                     # or seeds (below); questions when left out
      pairs: [[goat_k4, lora_r16], ...]   # optional: these pairs too, each in its own row

test: questions, the paired test over the test questions (goat.stats.paired_test), read from the per-question files
that loglik scoring writes. test: seeds, Welch's t-test over the rows' seeds (goat.stats.welch_test), for tables
whose runs keep only their scores (a group's score of a seed: its mean over the group's columns, each at the point
its cell was chosen at, over the seeds every column has).

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
from goat.stats import ROUNDS, PairedTest, WelchTest, paired_test, welch_test
from goat.tables import RESULTS_FILE, cell_variant, run_dir, runs_folder, swept_variant

CHOICE_FIELDS = {"acc": "choice", "acc_norm": "choice_norm"}  # a loglik metric -> the per-question field it counts
GENERATIONS = "generations"  # <run>/generations/step-<step:08d>/<set>.jsonl, as goat.tasks.instruction writes them
LEVEL = 0.05
TESTS = ("questions", "seeds")


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


def seed_scores(spec: dict, root: Path, name: str, row: str, columns: list[str]) -> np.ndarray:
    """(seeds,) the row's score of each seed, its mean over the named columns (each at its cell's chosen point), over
    the seeds every column has; empty while a column has no run."""
    by_name = {column["name"]: column for column in spec["tables"][name]["columns"]}
    unknown = [column for column in columns if column not in by_name]
    if unknown:
        raise ValueError(f"{name}: significance names columns {unknown} the table does not have")
    cells = [leaf_cell(spec, root, name, by_name[column], row) for column in columns]
    if any(not cell.values for cell in cells):
        return np.zeros(0)
    common = sorted(set.intersection(*(set(cell.seeds) for cell in cells)))
    return np.array([np.mean([cell.values[cell.seeds.index(seed)] for cell in cells]) for seed in common])


def pool(test: str, spec: dict, root: Path, name: str, row: str, columns: list[str]):
    """What the test compares for one row and group: (outcomes, sets) of the questions, or the seeds' scores."""
    if test == "seeds":
        return seed_scores(spec, root, name, row, columns)
    return group_outcomes(spec, root, name, row, columns)


def compare(a, b, what: str) -> PairedTest | WelchTest | None:
    """Rows a and b (pool of each): the paired test on the same questions, or Welch's test over the seeds; None if
    either is empty."""
    if isinstance(a, np.ndarray):
        return welch_test(a, b) if len(a) and len(b) else None
    if not len(a[0]) or not len(b[0]):
        return None
    if not np.array_equal(a[1], b[1]):
        raise ValueError(f"{what}: the two rows scored different questions (their test subsets differ)")
    return paired_test(a[0], b[0], a[1])


def score(pooled) -> float:
    """Points of accuracy: over questions, every set weighing the same (the group's average column); over seeds,
    their mean."""
    if isinstance(pooled, np.ndarray):
        return float(pooled.mean())
    values, sets = pooled
    return 100.0 * float(np.mean([values[sets == s].mean() for s in np.unique(sets)]))


def present(pooled) -> bool:
    return bool(len(pooled)) if isinstance(pooled, np.ndarray) else bool(len(pooled[0]))


def shown(test: PairedTest | WelchTest | None) -> list[str]:
    if test is None:
        return ["—", "—"]
    return [f"{test.difference:+.2f} [{test.low:+.2f}, {test.high:+.2f}]", f"{test.p_value:.3g}"]


def legend(test: str, against: str, comparisons: int, counted: str) -> str:
    """What the Δ, interval and p of a table below mean. against: whose score is subtracted ("lora's"); counted:
    what the Bonferroni count counts ("rows against lora", "pairs")."""
    bonferroni = (
        f"With {comparisons} {counted} per group, p < {LEVEL}/{comparisons} = {LEVEL / max(comparisons, 1):.4f} "
        "holds after Bonferroni's correction."
    )
    if test == "seeds":
        return (
            f"Δ: the row's mean over seeds minus {against}, in points, each row at its chosen point (a group of "
            "columns: each seed's mean over them); [95% CI]: Welch's t interval; p: Welch's two-sided t-test "
            f"(Welch-Satterthwaite degrees of freedom; seeds are not paired across rows). {bonferroni}"
        )
    return (
        f"Δ: the row's accuracy minus {against}, in points, each question's correctness averaged over the "
        f"row's seeds at its chosen point, every set of the group weighing the same; [95% CI]: paired bootstrap "
        f"of the questions within each set ({ROUNDS:,} draws); p: two-sided sign-flip randomization test over "
        f"the questions (exact, or {ROUNDS:,} patterns). {bonferroni}"
    )


def size(test: PairedTest | WelchTest) -> str:
    if isinstance(test, WelchTest):
        return f"{test.seeds[0]} and {test.seeds[1]} seeds"
    return f"{test.questions:,} questions"


def significance_markdown(spec: dict, root: Path, name: str) -> list[str]:
    """Each row against each baseline per group (difference, interval, p), the spec's pairs, then who wins each
    group, by how much, and whether the test tells it from noise. `baseline` names one row or a list of rows (e.g.
    LoRA, the peer, and GOAT, the subject): one table each."""
    table = spec["tables"][name]
    block = table["significance"]
    test = block.get("test", "questions")
    if test not in TESTS:
        raise ValueError(f"{name}: significance test {test!r} is not one of {', '.join(TESTS)}")
    baselines = block["baseline"] if isinstance(block["baseline"], list) else [block["baseline"]]
    pairs = [tuple(pair) for pair in block.get("pairs", [])]
    groups = block["groups"]
    rows = [row for row in table["rows"] if row not in table.get("not_run", [])]
    unknown = sorted({row for row in baselines + [r for pair in pairs for r in pair] if row not in rows})
    if unknown:
        raise ValueError(f"{name}: significance names rows {unknown} that are not rows of the table")
    if any(len(pair) != 2 for pair in pairs):
        raise ValueError(f"{name}: significance pairs must be [row, row], got {block['pairs']}")
    pooled = {(row, g): pool(test, spec, root, name, row, columns) for row in rows for g, columns in groups.items()}
    how = "paired over the test questions" if test == "questions" else "Welch's t-test over seeds"
    header = ["| row | " + " | ".join(f"{g} Δ [95% CI] | p" for g in groups) + " |", "|---|" + "---|---|" * len(groups)]
    lines = []
    for baseline in baselines:
        lines += ["", f"### Is it noise? Every row against {baseline}, {how}", ""]
        lines += [legend(test, f"{baseline}'s", len(rows) - 1, f"rows against {baseline}"), "", *header]
        for row in rows:
            if row == baseline:
                continue
            cells = [part for g in groups for part in shown(compare(pooled[row, g], pooled[baseline, g], f"{row}"))]
            lines.append(f"| {row} | " + " | ".join(cells) + " |")
    if pairs:
        lines += ["", f"### Is it noise? Chosen pairs, {how}", ""]
        lines += [legend(test, "the second row's", len(pairs), "pairs"), "", *header]
        for a, b in pairs:
            cells = [part for g in groups for part in shown(compare(pooled[a, g], pooled[b, g], f"{a} - {b}"))]
            lines.append(f"| {a} − {b} | " + " | ".join(cells) + " |")
    lines.append("")
    for group, columns in groups.items():
        lines.append(winner_line(group, columns, {row: pooled[row, group] for row in rows}))
    return lines


def winner_line(group: str, columns: list[str], pooled: dict) -> str:
    """Who wins a group (best score), by how much over the runner-up, and the test of the two."""
    ranked = sorted((row for row, o in pooled.items() if present(o)), key=lambda row: -score(pooled[row]))
    if len(ranked) < 2:
        return f"- {group}: fewer than two rows have runs; no winner yet."
    first, second = ranked[:2]
    test = compare(pooled[first], pooled[second], group)
    if test is None:
        return f"- {group}: {first} leads {second}, but one of them has a single seed: no test."
    if test.difference == 0:
        return (
            f"- **{group}** ({', '.join(columns)}; {size(test)}): no single winner: {first} and "
            f"{second} tie at {score(pooled[first]):.2f}."
        )
    kind = "paired test" if isinstance(test, PairedTest) else "Welch test"
    verdict = (
        f"the {kind} tells it from noise (p < {LEVEL})"
        if test.p_value < LEVEL
        else f"within noise: the {kind} cannot tell them apart (p >= {LEVEL})"
    )
    return (
        f"- **{group}** ({', '.join(columns)}; {size(test)}): **{first}** wins with "
        f"{score(pooled[first]):.2f}, ahead of {second} ({score(pooled[second]):.2f}) by {test.difference:+.2f} "
        f"points [95% CI {test.low:+.2f}, {test.high:+.2f}], p = {test.p_value:.3g}: {verdict}."
    )
