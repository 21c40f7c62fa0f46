"""The paper's figures from our runs, as PNG (matplotlib, no display needed).

  loss_curves   training loss against step, one line per variant (Fig. 4; reproduce-small's loss figure)
  rank_scaling  a table's average against the total rank, ours solid and the paper's dashed (Fig. 5)
  experts       a table's average against the number of experts, one line per top-k (Fig. 6)
  expert_load   fraction of routed tokens per expert and layer at the last logged step (Fig. 7)
  sweep         a swept table's average against the swept value, one line per row (small_sweep's learning rates)

A figure whose runs are all missing is not drawn (render_figure returns None); a missing point is left out.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from matplotlib.figure import Figure

from goat.results import finished_runs, leaf_cell, sweep_cells
from goat.tables import run_dir, runs_folder, sweep_values


def read_metrics(folder: Path) -> list[dict]:
    """metrics.jsonl of a run; after a resume a step may appear twice: the later line wins."""
    path = Path(folder) / "metrics.jsonl"
    if not path.exists():
        return []
    by_step: dict[tuple[int, bool], dict] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            by_step[(record["step"], "train/loss" in record)] = record
    return [by_step[k] for k in sorted(by_step)]


def first_seed_dir(folder: Path, task: str, variant: str) -> Path | None:
    runs = finished_runs(folder, task, variant)
    return run_dir(folder, task, variant, runs[0].get("seed", 0)) if runs else None


def table_average(spec: dict, root: Path, table_name: str, variant: str) -> float | None:
    """Mean over the table's columns of one variant's seed means; None unless every column has a run."""
    columns = spec["tables"][table_name]["columns"]
    means = [leaf_cell(spec, root, table_name, column, variant).mean for column in columns]
    return None if None in means else statistics.mean(means)


def loss_curves(spec, root, figure, ax) -> bool:
    folder = runs_folder(spec, figure.get("table", ""), root)
    drawn = False
    for variant in figure["variants"]:
        run = first_seed_dir(folder, figure["task"], variant)
        points = (
            [(r["step"], r["train/loss"]) for r in read_metrics(run) if r.get("train/loss") is not None] if run else []
        )
        if points:
            steps, losses = zip(*points, strict=True)
            ax.plot(steps, losses, label=variant, linewidth=1.4 if variant.startswith("goat") else 1.0)
            drawn = True
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    return drawn


def rank_scaling(spec, root, figure, ax) -> bool:
    drawn = False
    ranks = figure["ranks"]
    for (label, variants), color in zip(figure["series"].items(), _colors(), strict=False):
        ours = [(rank, table_average(spec, root, figure["table"], v)) for rank, v in zip(ranks, variants, strict=True)]
        ours = [(x, y) for x, y in ours if y is not None]
        if ours:
            ax.plot(*zip(*ours, strict=True), marker="o", color=color, label=f"{label} (ours)")
            drawn = True
        paper = [(x, y) for x, y in zip(ranks, figure.get("paper", {}).get(label, []), strict=False) if y is not None]
        if paper:
            ax.plot(
                *zip(*paper, strict=True), marker="x", linestyle="--", color=color, alpha=0.6, label=f"{label} (paper)"
            )
    reference = figure.get("reference")
    if reference:
        value = table_average(spec, root, figure["table"], reference)
        if value is not None:
            ax.axhline(value, color="black", label=f"{reference} (ours)")
            drawn = True
        paper = figure.get("paper", {}).get(reference)
        if paper is not None:
            ax.axhline(paper, color="black", linestyle="--", alpha=0.6, label=f"{reference} (paper)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ranks, [str(r) for r in ranks])
    ax.set_xlabel("total rank")
    ax.set_ylabel(f"{figure['table']} average")
    return drawn


def experts(spec, root, figure, ax) -> bool:
    lines: dict[int, list[tuple[int, float]]] = {}
    for point in figure["points"]:
        value = table_average(spec, root, figure["table"], point["variant"])
        if value is not None:
            lines.setdefault(point["top_k"], []).append((point["experts"], value))
    for top_k, points in sorted(lines.items()):
        ax.plot(*zip(*sorted(points), strict=True), marker="o", label=f"top-{top_k}")
    ax.set_xlabel("number of experts E")
    ax.set_ylabel(f"{figure['table']} average")
    return bool(lines)


def expert_load(spec, root, figure, ax) -> bool:
    folder = runs_folder(spec, figure.get("table", ""), root)
    run = first_seed_dir(folder, figure["task"], figure["variant"])
    records = [r for r in read_metrics(run) if any(k.startswith("load/") for k in r)] if run else []
    if not records:
        return False
    last = records[-1]
    names = [k for k in last if k.startswith("load/")]
    grid = [last[k] for k in names]
    image = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0.0)
    ax.figure.colorbar(image, ax=ax, label="fraction of routed tokens")
    ax.set_xlabel("expert")
    ax.set_ylabel(f"layer ({len(names)} adapted modules)")
    ax.set_title(f"step {last['step']}", fontsize=9)
    return True


def sweep(spec, root, figure, ax) -> bool:
    """Mean over the table's columns at each swept value (a point needs a run in every column)."""
    table = spec["tables"][figure["table"]]
    drawn = False
    for index, row in enumerate(figure.get("rows") or table["rows"]):
        by_column = [sweep_cells(spec, root, figure["table"], column, row) for column in table["columns"]]
        points = []
        for value, suffix in zip(sweep_values(table, row), by_column[0], strict=True):
            means = [cells[suffix].mean for cells in by_column]
            if None not in means:
                points.append((float(value), statistics.mean(means)))
        if points:
            style = {"linestyle": "-" if index < 10 else "--", "marker": "o", "label": row}
            if row == "goat":
                style.update(color="black", linewidth=2.2, linestyle="-")
            ax.plot(*zip(*points, strict=True), **style)
            drawn = True
    ax.set_xscale("log")
    ax.set_xlabel(table["sweep"]["key"])
    ax.set_ylabel(f"{figure['table']} average ({table.get('metric', 'accuracy')})")
    return drawn


KINDS = {
    "loss_curves": loss_curves,
    "rank_scaling": rank_scaling,
    "experts": experts,
    "expert_load": expert_load,
    "sweep": sweep,
}


def render_figure(spec: dict, root: Path, name: str, out: Path) -> Path | None:
    """Draws figure `name` of the spec into `out` (PNG); None, and no file, when none of its runs exist."""
    figure = spec["figures"][name]
    fig = Figure(figsize=(7, 4.5), dpi=120)  # no pyplot: no backend to choose, no global figure to close
    ax = fig.subplots()
    if not KINDS[figure["kind"]](spec, Path(root), figure, ax):
        return None
    fig.suptitle(figure["title"], fontsize=10)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, format="png")
    return out


def _colors():
    return ["C0", "C1", "C2", "C3", "C4", "C5", "C6", "C7"]
