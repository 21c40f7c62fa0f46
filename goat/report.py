"""goat-report: our finished runs beside the paper's numbers, one Markdown and one CSV table per paper table,
and the paper's figures as PNG.

A cell reads <runs>/<task>/<variant>/seed*/results.json (the layout of goat-grid and goat-train, see
goat/tables.py). Several seeds give mean ± std; a cell without a finished run stays blank, never zero; an
averaged column (Table 8) or the average column is blank unless every cell it averages has a run.
"""

from __future__ import annotations

import csv
import io
import statistics
from pathlib import Path

from goat.figures import render_figure
from goat.results import ORACLE, Cell, finished_runs, leaf_cell, sweep_cells, swept_choice
from goat.significance import significance_markdown
from goat.tables import (
    cell_variant,
    heldout_rows,
    leaf_columns,
    load_spec,
    runs_folder,
    sweep_points,
    sweep_values,
    swept_variant,
)


def table_cells(spec: dict, root: Path, name: str) -> dict[str, list[Cell]]:
    """row -> one Cell per column, with the paper's number attached."""
    table = spec["tables"][name]
    out = {}
    for row, paper in table["rows"].items():
        cells = []
        for index, column in enumerate(table["columns"]):
            leaves = [leaf_cell(spec, root, t, c, row) for t, c in leaf_columns(spec, name, column)]
            if "mean_of" in column:
                complete = all(leaf.values for leaf in leaves)
                cell = Cell(values=[statistics.mean(leaf.mean for leaf in leaves)] if complete else [])
                cell.seeds = sorted(set().union(*(leaf.seeds for leaf in leaves))) if complete else []
            else:
                cell = leaves[0]
            cell.paper = paper[index] if paper else None
            cells.append(cell)
        out[row] = cells
    return out


def average_cell(table: dict, row: str, cells: list[Cell]) -> Cell:
    """The row's average over the columns: ours only when every column has a run; the paper's given or computed."""
    ours = [c.mean for c in cells]
    cell = Cell(values=[statistics.mean(ours)] if ours and None not in ours else [])
    paper = (table.get("paper_average") or {}).get(row)
    papers = [c.paper for c in cells]
    if paper is None and papers and None not in papers:
        paper = round(statistics.mean(papers), 2)
    cell.paper = paper
    return cell


def _with_average(table: dict, cells: dict[str, list[Cell]]) -> tuple[list[str], dict[str, list[Cell]]]:
    names = [c["name"] for c in table["columns"]]
    if table.get("average", True) and len(names) > 1:
        return [*names, "Avg"], {
            row: [*row_cells, average_cell(table, row, row_cells)] for row, row_cells in cells.items()
        }
    return names, cells


def markdown(spec: dict, root: Path, name: str) -> str:
    table = spec["tables"][name]
    names, cells = _with_average(table, table_cells(spec, root, name))
    lines = [f"## {table['title']}", ""]
    if table.get("note"):
        lines += [table["note"], ""]
    with_paper = any(cell.paper is not None for row_cells in cells.values() for cell in row_cells)
    legend = "ours / paper (ours − paper)" if with_paper else "ours (no paper numbers)"
    level = table.get("confidence")
    spread = f"mean ± std [{level:.0%} t interval] over seeds" if level else "mean ± std over seeds"
    lines += [f"Each cell: {legend}; ours is {spread} when several ran; — : no finished run.", ""]
    oracles = {row: [] for row in cells}
    if table.get("sweep"):
        chosen_on = {cell.chosen_on for row_cells in cells.values() for cell in row_cells if cell.chosen_on}
        lines += [selection_legend(spec, name, chosen_on), ""]
        oracles = oracle_cells(spec, root, name)
        names = [*names, *(f"{n} (oracle)" for n in oracle_names(table)), "chosen on"]
    lines += ["| method | " + " | ".join(names) + " | seeds |", "|---|" + "---|" * (len(names) + 1)]
    not_run = set(table.get("not_run", []))
    for row, row_cells in cells.items():
        parts = []
        for cell in row_cells:
            if not with_paper:
                parts.append(cell.ours(level) or "—")
                continue
            paper = "" if cell.paper is None else f"{cell.paper:.2f}"
            diff = "" if cell.diff is None else f" ({cell.diff:+.2f})"
            parts.append(f"{cell.ours() or '—'} / {paper}{diff}")
        parts += [cell.ours() or "—" for cell in oracles[row]]
        if table.get("sweep"):
            parts.append("; ".join(sorted({c.chosen_on for c in row_cells if c.chosen_on})) or "—")
        seeds = sorted(set().union(*(c.seeds for c in row_cells)))
        label = f"{row} (not run)" if row in not_run else row
        lines.append(f"| {label} | " + " | ".join(parts) + f" | {','.join(map(str, seeds))} |")
    if table.get("significance"):
        lines += significance_markdown(spec, root, name)
    if table.get("sweep"):
        lines += sweep_markdown(spec, root, name)
    models = run_models(spec, root, name)
    if models:
        lines += ["", "Models of our runs: " + "; ".join(models)]
    return "\n".join(lines) + "\n"


def selection_legend(spec: dict, name: str, chosen_on: set[str]) -> str:
    """Which split chose a swept table's cells and which split they report; `chosen_on`: the cells' labels."""
    table = spec["tables"][name]
    key = table["sweep"]["key"]
    rule = (
        f"the {key} whose mean over the seeds (those every {key} has) is best on {heldout_rows(table)} training rows "
        "held out from the task (task.heldout_size, never trained on)"
    )
    if chosen_on == {ORACLE}:
        lead = (
            f"Chosen on: the reported split itself (oracle) in every cell, as column 'chosen on' says: these runs held "
            f"out no training rows. Runs of this table now hold them out, and a cell is {rule}."
        )
    else:
        lead = f"Chosen on: per method and column, {rule}; column 'chosen on' names it."
    return (
        f"{lead} Reported: the dev/test split's {table.get('metric', 'accuracy')} at the chosen {key}. The oracle "
        f"columns choose on the reported split itself: optimistic, for comparison only. Runs that held out no rows "
        f"can only be chosen that way and say '{ORACLE}'."
    )


def oracle_names(table: dict) -> list[str]:
    """The oracle columns of a swept table: each column's name, and Avg where the table has one."""
    names = [column["name"] for column in table["columns"] if "mean_of" not in column]
    return [*names, "Avg"] if table.get("average", True) and len(names) > 1 else names


def oracle_cells(spec: dict, root: Path, name: str) -> dict[str, list[Cell]]:
    """row -> the oracle cell of each column (the point best on the reported split), and their average."""
    table = spec["tables"][name]
    columns = [column for column in table["columns"] if "mean_of" not in column]
    out = {}
    for row in table["rows"]:
        cells = [swept_choice(spec, root, name, column, row)[1] for column in columns]
        if len(oracle_names(table)) > len(cells):
            means = [cell.mean for cell in cells]
            cells.append(Cell(values=[statistics.mean(means)] if None not in means else []))
        out[row] = cells
    return out


def sweep_markdown(spec: dict, root: Path, name: str) -> list[str]:
    """Every point of a swept table: per column, one row per method and one column per swept value, the reported
    split's scores, then the held-out rows' (where runs held some out); the chosen point is in bold (empty: not a
    value of that row's sweep; — : no finished run)."""
    table = spec["tables"][name]
    sweep = table["sweep"]
    ordered = sorted({value for row in table["rows"] for value in sweep_values(table, row)}, key=float)

    def body(by_row: dict, chosen: dict) -> list[str]:
        lines = ["| method | " + " | ".join(ordered) + " |", "|---|" + "---|" * len(ordered)]
        for row, cells in by_row.items():
            parts = []
            for value in ordered:
                suffix = f"{sweep['suffix']}{value}"
                text = "" if suffix not in cells else (cells[suffix].ours() or "—")
                parts.append(f"**{text}**" if suffix == chosen[row] and text else text)
            lines.append(f"| {row} | " + " | ".join(parts) + " |")
        return lines

    reported, held_out = [], []  # (column name, table lines)
    for column in table["columns"]:
        if "mean_of" in column:
            continue
        points = {row: sweep_cells(spec, root, name, column, row) for row in table["rows"]}
        chosen = {row: leaf_cell(spec, root, name, column, row).chosen for row in table["rows"]}
        held = {
            row: {s: Cell(values=c.selection) if c.selection_mean is not None else Cell() for s, c in cells.items()}
            for row, cells in points.items()
        }
        reported.append((column["name"], body(points, chosen)))
        if any(cell.values for cells in held.values() for cell in cells.values()):
            held_out.append((column["name"], body(held, chosen)))
    # one held-out score chooses every column (a task with one held-out split): its table once, not per column
    shared = len(held_out) > 1 and all(lines == held_out[0][1] for _, lines in held_out)
    lines = []
    for column_name, table_lines in reported:
        lines += ["", f"### {column_name} at each {sweep['key']} (reported split)", "", *table_lines]
        if not shared:
            for held_name, held_lines in held_out:
                if held_name == column_name:
                    caption = f"### {column_name} at each {sweep['key']}: held-out training rows (these choose)"
                    lines += ["", caption, "", *held_lines]
    if shared:
        caption = f"### Held-out training rows at each {sweep['key']} (these choose; one score for every column)"
        lines += ["", caption, "", *held_out[0][1]]
    return lines


def csv_text(spec: dict, root: Path, name: str) -> str:
    """One line per (method, column); a swept table adds what chose each cell and its held-out mean, an oracle line
    per column ("CoLA oracle") and a line per point ("CoLA lr2e-4")."""
    table = spec["tables"][name]
    names, cells = _with_average(table, table_cells(spec, root, name))
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    header = ["method", "column", "ours_mean", "ours_std", "n", "seeds", "paper", "diff"]
    level = table.get("confidence")
    header += ["ci_low", "ci_high"] if level else []
    writer.writerow([*header, "chosen", "chosen_on", "heldout_mean"] if table.get("sweep") else header)
    rows = {row: list(zip(names, row_cells, strict=True)) for row, row_cells in cells.items()}
    if table.get("sweep"):
        oracles = oracle_cells(spec, root, name)
        for row in rows:
            rows[row] += [
                (f"{column} oracle", cell) for column, cell in zip(oracle_names(table), oracles[row], strict=True)
            ]
            for column in table["columns"]:
                if "mean_of" not in column:
                    points = sweep_cells(spec, root, name, column, row).items()
                    rows[row] += [(f"{column['name']} {suffix}", cell) for suffix, cell in points]
    for row, row_cells in rows.items():
        for column, cell in row_cells:
            std = statistics.stdev(cell.values) if len(cell.values) > 1 else None
            held = cell.selection_mean
            writer.writerow(
                [
                    row,
                    column,
                    "" if cell.mean is None else round(cell.mean, 4),
                    "" if std is None else round(std, 4),
                    len(cell.values),
                    " ".join(map(str, cell.seeds)),
                    "" if cell.paper is None else cell.paper,
                    "" if cell.diff is None else cell.diff,
                ]
                + ([round(v, 4) for v in cell.interval(level)] if cell.interval(level) else ["", ""] if level else [])
                + ([cell.chosen, cell.chosen_on, "" if held is None else round(held, 4)] if table.get("sweep") else [])
            )
    return buffer.getvalue()


def run_models(spec: dict, root: Path, name: str) -> list[str]:
    """The models of a table's finished runs (MiniLM stand-in runs must say so next to RoBERTa numbers)."""
    models = set()
    table = spec["tables"][name]
    for column in table["columns"]:
        for source, leaf in leaf_columns(spec, name, column):
            folder = runs_folder(spec, source, root)
            for row in table["rows"]:
                for suffix, _ in sweep_points(spec["tables"][source], row):
                    variant = swept_variant(cell_variant(row, leaf), suffix)
                    for results in finished_runs(folder, leaf["task"], variant):
                        note = results.get("model_note")
                        models.add(f"{results.get('model')}" + (f" ({note})" if note else ""))
    return sorted(models)


def report(runs_dir: Path, out_dir: Path, names: list[str] | None = None, spec: dict | None = None) -> list[Path]:
    """Writes <out>/<table>.md and .csv for each table, and <out>/figures/<figure>.png for each figure that has
    runs (all by default, or the named tables and figures); returns the files written."""
    spec = spec or load_spec()
    figures = spec.get("figures", {})
    known = [*spec["tables"], *figures]
    unknown = [name for name in names or [] if name not in known]
    if unknown:
        raise ValueError(f"unknown table or figure {unknown[0]!r}; choose among {', '.join(known)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name in names or known:
        if name in spec["tables"]:
            for suffix, render in (("md", markdown), ("csv", csv_text)):
                path = out_dir / f"{name}.{suffix}"
                path.write_text(render(spec, runs_dir, name))
                written.append(path)
        else:
            path = render_figure(spec, Path(runs_dir), name, out_dir / "figures" / f"{name}.png")
            if path is not None:
                written.append(path)
    return written
