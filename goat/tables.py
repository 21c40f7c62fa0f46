"""The paper's tables and figures as data (goat/paper_results.yaml): where each cell's runs live.

Shared by goat-grid (which runs the cells) and goat-report (which reads them back), so that both agree on
one layout: <runs root>/<table's runs folder>/<task>/<variant>/seed<k>/results.json.
"""

from __future__ import annotations

from pathlib import Path

import yaml

SPEC_FILE = Path(__file__).resolve().parent / "paper_results.yaml"
RESULTS_FILE = "results.json"  # what goat-train writes when a run finished


def load_spec(path: Path | None = None) -> dict:
    return yaml.safe_load(Path(path or SPEC_FILE).read_text())


def cell_variant(row: str, column: dict) -> str:
    """The variant a row runs under a column: Table 6's per-column learning rates add a suffix."""
    return f"{row}_{column['suffix']}" if column.get("suffix") else row


def leaf_columns(spec: dict, table_name: str, column: dict) -> list[tuple[str, dict]]:
    """(table, column) pairs that hold runs: the column itself, or every column of the table it averages."""
    if "mean_of" not in column:
        return [(table_name, column)]
    source = column["mean_of"]
    return [leaf for inner in spec["tables"][source]["columns"] for leaf in leaf_columns(spec, source, inner)]


def runs_folder(spec: dict, name: str, root: Path) -> Path:
    """Where a table's or figure's runs live below the runs root (reproduce-small keeps its own folder)."""
    figure = spec.get("figures", {}).get(name)
    if figure is not None:  # a figure reads the runs of its table, if it names one
        name = figure.get("table", "")
    return Path(root) / spec["tables"].get(name, {}).get("runs", "")


def run_dir(folder: Path, task: str, variant: str, seed: int) -> Path:
    return Path(folder) / task / variant / f"seed{seed}"


def sweep_points(table: dict, row: str) -> list[tuple[str, list[str]]]:
    """(variant suffix, overrides) of each point of a table's sweep for one row (a learning-rate sweep gives
    every method the same number of values; `by_row` shifts them for a row, e.g. full fine-tuning's lower rates).
    Every point holds out the sweep's `heldout` training rows to be chosen on (task.heldout_size, goat.results).
    A table without a sweep has one point: no suffix, no override."""
    sweep = table.get("sweep")
    if not sweep:
        return [("", [])]
    held = f"task.heldout_size={heldout_rows(table)}"
    return [(f"{sweep['suffix']}{value}", [held, f"{sweep['key']}={value}"]) for value in sweep_values(table, row)]


def heldout_rows(table: dict) -> int:
    """The training rows each run of a swept table holds out, to choose the swept value on (sweep.heldout)."""
    problem = sweep_problem(table)
    if problem:
        raise ValueError(problem)
    return table["sweep"]["heldout"]


def sweep_problem(table: dict) -> str | None:
    """Why a table's sweep cannot be run or chosen fairly, or None (no sweep, or a sound one)."""
    sweep = table.get("sweep")
    rows = (sweep or {}).get("heldout")
    if sweep is None or (isinstance(rows, int) and not isinstance(rows, bool) and rows > 0):
        return None
    return (
        f"{table.get('title', 'a swept table')}: sweep.heldout must be a count of training rows to hold out and "
        f"choose the swept value on (task.heldout_size), got {rows!r}"
    )


def sweep_values(table: dict, row: str) -> list[str]:
    """The values a row of a swept table runs at (as written in the spec: "6e-5")."""
    sweep = table["sweep"]
    return (sweep.get("by_row") or {}).get(row, sweep["values"])


def swept_variant(variant: str, suffix: str) -> str:
    return f"{variant}_{suffix}" if suffix else variant
