"""A table cell from the finished runs on disk: the seeds' values of one (task, variant), and the point a swept
cell chooses. goat.report (tables) and goat.figures (plots) both read runs through these; the layout of the runs
and the paper's table specs are goat.tables'.

A swept cell is chosen on the training rows its runs held out (task.heldout_size: results.json's "heldout" block and
"heldout/<metric>" scores) and reports the dev/test score at that point; the point best on the reported split itself
is kept beside it as the oracle, labelled. Runs that held out nothing (older runs) can only be chosen the oracle way,
and say so; runs of one cell that held out different rows trained on different data and are refused.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field, replace
from pathlib import Path

from goat.stats import t_interval
from goat.tables import RESULTS_FILE, cell_variant, runs_folder, sweep_points, swept_variant

ORACLE = "reported split (oracle)"  # what a swept cell was chosen on when it was chosen on the split it reports


@dataclass
class Cell:
    values: list[float] = field(default_factory=list)  # one per finished seed (or the leaf means, averaged)
    seeds: list[int] = field(default_factory=list)
    paper: float | None = None
    chosen: str = ""  # a swept table's cell: the value it was chosen at (e.g. "lr6e-4")
    chosen_on: str = ""  # a swept table's cell: what chose it, the held-out rows (heldout_label) or ORACLE
    selection: list[float | None] = field(default_factory=list)  # the held-out score of each seed, beside values
    heldout: set[str] = field(default_factory=set)  # heldout_label of each run's held-out rows ("": none)

    @property
    def mean(self) -> float | None:
        return statistics.mean(self.values) if self.values else None

    @property
    def selection_mean(self) -> float | None:
        """The mean held-out score over the seeds; None unless every seed has one."""
        if not self.selection or None in self.selection:
            return None
        return statistics.mean(self.selection)

    @property
    def diff(self) -> float | None:
        return None if self.mean is None or self.paper is None else round(self.mean - self.paper, 2)

    def on_seeds(self, seeds: set[int], chosen: str) -> Cell:
        """This cell restricted to `seeds`, as the point `chosen` of a sweep."""
        keep = [i for i, seed in enumerate(self.seeds) if seed in seeds]
        return Cell(
            [self.values[i] for i in keep],
            [self.seeds[i] for i in keep],
            chosen=chosen,
            selection=[self.selection[i] for i in keep],
            heldout=self.heldout,
        )

    def interval(self, level: float | None) -> tuple[float, float] | None:
        """The t interval of the mean over seeds at `level` (goat.stats.t_interval); None without a level or with
        fewer than two seeds."""
        return t_interval(self.values, level) if level else None

    def ours(self, level: float | None = None) -> str:
        """mean ± std (n=seeds), with the t interval [low, high] when a level is given (a table's `confidence`)."""
        if not self.values:
            return ""
        at = f" @ {self.chosen}" if self.chosen else ""
        if len(self.values) == 1:
            return f"{self.values[0]:.2f}{at}"
        interval = self.interval(level)
        shown = f" [{interval[0]:.2f}, {interval[1]:.2f}]" if interval else ""
        return f"{self.mean:.2f} ± {statistics.stdev(self.values):.2f}{shown} (n={len(self.values)}){at}"


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


def heldout_label(results: dict) -> str:
    """What a run held out to choose on, as the report names it ("500 held-out training rows, seed 2"); "": nothing."""
    held = results.get("heldout")
    return f"{held['rows']} held-out {held['drawn_from']} rows, seed {held['seed']}" if held else ""


def heldout_value(results: dict, key: str | None, metric: str | None) -> float | None:
    """The column's metric on the run's held-out training rows ("heldout/accuracy"); None if it held none out."""
    held = results.get("heldout")
    if not held:
        return None
    name = key.split("/", 1)[-1] if key else metric or "accuracy"
    return float(results["final"][f"{held['split']}/{name}"])


def point_cell(spec: dict, root: Path, table_name: str, column: dict, variant: str) -> Cell:
    cell = Cell()
    folder = runs_folder(spec, table_name, root)
    metric = spec["tables"][table_name].get("metric")
    for results in finished_runs(folder, column["task"], variant):
        value = metric_value(results, column.get("key"), metric)
        if value is not None:
            cell.values.append(value)
            cell.seeds.append(results.get("seed", 0))
            cell.selection.append(heldout_value(results, column.get("key"), metric))
            cell.heldout.add(heldout_label(results))
    return cell


def sweep_cells(spec: dict, root: Path, table_name: str, column: dict, row: str) -> dict[str, Cell]:
    """A cell at each point of the table's sweep, by suffix ("lr2e-4"); one point "" without a sweep."""
    variant = cell_variant(row, column)
    return {
        suffix: point_cell(spec, root, table_name, column, swept_variant(variant, suffix))
        for suffix, _ in sweep_points(spec["tables"][table_name], row)
    }


def swept_choice(spec: dict, root: Path, table_name: str, column: dict, row: str) -> tuple[Cell, Cell]:
    """(chosen, oracle): a column's cell, and in a swept table the point best on the reported split itself.

    Both compare means over the seeds that every point has (a lucky single seed must not win against three) and
    stay blank until every point has one. The chosen point has the best mean held-out score (the training rows its
    runs never trained on) and reports its dev/test score there; runs without held-out rows are chosen like the
    oracle, labelled ORACLE. Points whose runs held out different rows are refused: they trained on different data.
    """
    points = sweep_cells(spec, root, table_name, column, row)
    if len(points) == 1:  # nothing to choose: a table without a sweep, or a row swept at one value (by_row)
        suffix, cell = next(iter(points.items()))
        cell = replace(cell, chosen=suffix)
        return cell, cell
    held = set().union(*(cell.heldout for cell in points.values()))
    if len(held) > 1:
        kinds = "; ".join(sorted(label or "none held out" for label in held))
        raise ValueError(
            f"{table_name}: the {column['task']} runs of {row} held out different training rows ({kinds}), so they "
            "trained on different data: keep each setting's runs in their own --runs folder"
        )
    common = set.intersection(*(set(cell.seeds) for cell in points.values()))
    if not common:
        return Cell(), Cell()
    restricted = [cell.on_seeds(common, suffix) for suffix, cell in points.items()]
    oracle = replace(max(restricted, key=lambda cell: cell.mean), chosen_on=ORACLE)
    label = held.pop()
    if not label:
        return replace(oracle), oracle
    return replace(max(restricted, key=lambda cell: cell.selection_mean), chosen_on=label), oracle


def leaf_cell(spec: dict, root: Path, table_name: str, column: dict, row: str) -> Cell:
    """A column's cell; in a swept table, the point chosen on held-out rows (swept_choice)."""
    return swept_choice(spec, root, table_name, column, row)[0]
