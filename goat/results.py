"""A table cell from the finished runs on disk: the seeds' values of one (task, variant), the best point of a
swept cell. goat.report (tables) and goat.figures (plots) both read runs through these; the layout of the runs
and the paper's table specs are goat.tables'.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from goat.tables import RESULTS_FILE, cell_variant, runs_folder, sweep_points, swept_variant


@dataclass
class Cell:
    values: list[float] = field(default_factory=list)  # one per finished seed (or the leaf means, averaged)
    seeds: list[int] = field(default_factory=list)
    paper: float | None = None
    chosen: str = ""  # a swept table's cell: the value whose mean is best (e.g. "lr6e-4")

    @property
    def mean(self) -> float | None:
        return statistics.mean(self.values) if self.values else None

    @property
    def diff(self) -> float | None:
        return None if self.mean is None or self.paper is None else round(self.mean - self.paper, 2)

    def ours(self) -> str:
        if not self.values:
            return ""
        at = f" @ {self.chosen}" if self.chosen else ""
        if len(self.values) == 1:
            return f"{self.values[0]:.2f}{at}"
        return f"{self.mean:.2f} ± {statistics.stdev(self.values):.2f} (n={len(self.values)}){at}"


def finished_runs(folder: Path, task: str, variant: str) -> list[dict]:
    """results.json of every finished seed of one (task, variant), in seed order."""
    found = []
    for path in sorted((Path(folder) / task / variant).glob(f"seed*/{RESULTS_FILE}")):
        results = json.loads(path.read_text())
        if results.get("random_weights"):
            raise ValueError(
                f"{path} was trained from random weights (model.from_config=true): a speed run, not a result; "
                "move it out of the runs folder to render this table"
            )
        if results.get("status") == "finished" and results.get("final"):
            found.append(results)
    return sorted(found, key=lambda r: r.get("seed", 0))


def metric_value(results: dict, key: str | None, metric: str | None) -> float | None:
    """A column's number from one results.json: a key of the final evaluation, or of results.json itself
    (peak_memory_gb, epoch_hours); by default <main eval split>/<metric>."""
    if key is None:
        key = f"{results['main_metric'].split('/')[0]}/{metric or 'accuracy'}"
    value = results["final"].get(key, results.get(key))
    return None if value is None else float(value)


def point_cell(spec: dict, root: Path, table_name: str, column: dict, variant: str) -> Cell:
    cell = Cell()
    folder = runs_folder(spec, table_name, root)
    metric = spec["tables"][table_name].get("metric")
    for results in finished_runs(folder, column["task"], variant):
        value = metric_value(results, column.get("key"), metric)
        if value is not None:
            cell.values.append(value)
            cell.seeds.append(results.get("seed", 0))
    return cell


def sweep_cells(spec: dict, root: Path, table_name: str, column: dict, row: str) -> dict[str, Cell]:
    """A cell at each point of the table's sweep, by suffix ("lr2e-4"); one point "" without a sweep."""
    variant = cell_variant(row, column)
    return {
        suffix: point_cell(spec, root, table_name, column, swept_variant(variant, suffix))
        for suffix, _ in sweep_points(spec["tables"][table_name], row)
    }


def leaf_cell(spec: dict, root: Path, table_name: str, column: dict, row: str) -> Cell:
    """A column's cell; in a swept table, the point with the best mean over the seeds that every point has
    (a lucky single seed must not win against three), blank until every point has one."""
    points = sweep_cells(spec, root, table_name, column, row)
    if len(points) == 1:
        return next(iter(points.values()))
    common = set.intersection(*(set(cell.seeds) for cell in points.values()))
    if not common:
        return Cell()
    restricted = []
    for suffix, cell in points.items():
        kept = [(value, seed) for value, seed in zip(cell.values, cell.seeds, strict=True) if seed in common]
        restricted.append(Cell([v for v, _ in kept], [s for _, s in kept], chosen=suffix))
    return max(restricted, key=lambda cell: cell.mean)
