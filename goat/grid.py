"""goat-grid: the runs behind a paper table or figure (goat/paper_results.yaml), run one after another.

Each run is one `goat-train` with the variant's overrides, in <runs>/<task>/<variant>/seed<k>. A finished
run (results.json) is skipped, an interrupted one resumes from its newest checkpoint (resume=auto), so the
same command can be repeated until the grid is complete; a finished run whose config.yaml disagrees with the plan
stops the grid before anything starts (stale_settings). TASKS / METHODS filter with shell patterns
(`vit/*`, `goat*`); --dry-run prints the grid and what each run would do. With --gpus N > 1 each run is
started through `accelerate launch`. With --hydra the unfinished runs go to Hydra's launcher instead (goat.multirun):
`--hydra hydra/launcher=slurm hydra.launcher.partition=gpu` runs a paper table's grid as SLURM jobs.
"""

from __future__ import annotations

import argparse
import fnmatch
import gc
import logging
import math
import multiprocessing
import os
import queue as queues
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, ListConfig, OmegaConf

from goat.compose import OverrideError, compose
from goat.multirun import launch
from goat.tables import (
    RESULTS_FILE,
    cell_variant,
    leaf_columns,
    load_spec,
    run_dir,
    runs_folder,
    sweep_points,
    sweep_problem,
    swept_variant,
)

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"  # tests and CI only; pass --data


class GridError(ValueError):
    pass


@dataclass(frozen=True)
class Run:
    task: str
    variant: str
    seed: int
    overrides: tuple[str, ...]
    output_dir: Path

    def state(self) -> str:
        """finished (results.json), partial (checkpoints or a started run directory) or new."""
        if (self.output_dir / RESULTS_FILE).exists():
            return "finished"
        return "partial" if self.output_dir.exists() else "new"

    def train_args(self) -> list[str]:
        return [
            f"task={self.task}",
            *self.overrides,
            f"variant={self.variant}",
            f"trainer.seed={self.seed}",
            f"output_dir={self.output_dir}",
            "resume=auto",
        ]

    def command(self, gpus: int = 1, accelerate_config: str | None = None) -> list[str]:
        if gpus <= 1:
            return [sys.executable, "-m", "goat.cli", *self.train_args()]
        launch = ["accelerate", "launch", "--num_processes", str(gpus)]
        launch += ["--config_file", accelerate_config] if accelerate_config else ["--multi_gpu"]
        return [*launch, "-m", "goat.cli", *self.train_args()]


def table_grid(spec: dict, name: str) -> list[tuple[str, str, list[str]]]:
    """(task, variant, overrides without the seed) of every runnable cell; averaged columns expand to the
    cells of the table they average, for this table's rows (Table 8: GOAT-s on every task of Tables 1-4), and a
    table with a sweep runs each cell at every value (variant <row>_lr2e-4), holding out sweep.heldout training rows
    to choose on."""
    table = spec["tables"][name]
    if sweep_problem(table):
        raise GridError(sweep_problem(table))
    skipped = set(table.get("not_run", []))
    cells = []
    for row in table["rows"]:
        if row in skipped:
            continue
        if row not in spec["variants"]:
            raise GridError(f"{name}: row {row!r} is not a variant of goat/paper_results.yaml")
        for column in table["columns"]:
            for source, leaf in leaf_columns(spec, name, column):
                extra = spec["tables"][source].get("overrides", [])
                _no_overruled_variant(name, row, spec["variants"][row], [*extra, *leaf.get("overrides", [])])
                overrides = [*spec["variants"][row], *extra, *leaf.get("overrides", [])]
                for suffix, point in sweep_points(spec["tables"][source], row):
                    cells.append((leaf["task"], swept_variant(cell_variant(row, leaf), suffix), [*overrides, *point]))
    return cells


def _no_overruled_variant(table: str, row: str, variant: list[str], later: list[str]) -> None:
    """A table's or column's override comes after the row's variant and would silently replace its setting
    (a table pinning method.r would turn lora_r8 into a rank-32 LoRA): refuse the spec instead."""
    keys = {o.split("=", 1)[0].lstrip("+~") for o in later}
    clash = sorted(k for k in (o.split("=", 1)[0].lstrip("+~") for o in variant) if k in keys and k != "method")
    if clash:
        raise GridError(
            f"{table}: row {row!r} sets {', '.join(clash)}, which the table's or a column's overrides set too and "
            "would overrule; set it in one place (goat/paper_results.yaml)"
        )


def figure_grid(spec: dict, name: str) -> list[tuple[str, str, list[str]]]:
    figure = spec["figures"][name]
    if figure["kind"] == "sweep":  # drawn from its table's runs
        return table_grid(spec, figure["table"])
    if figure["kind"] in ("loss_curves", "expert_load"):
        variants = figure.get("variants") or [figure["variant"]]
        tasks = [figure["task"]]
    else:  # rank_scaling, experts: every task of a table
        tasks = [c["task"] for c in spec["tables"][figure["table"]]["columns"]]
        if figure["kind"] == "rank_scaling":
            variants = [v for series in figure["series"].values() for v in series] + [figure["reference"]]
        else:
            variants = [point["variant"] for point in figure["points"]]
    table = spec["tables"].get(figure.get("table", ""), {})
    extra = table.get("overrides", [])

    def column_overrides(task: str) -> list[str]:  # the table's per-column settings (data folder, train file)
        return next((c.get("overrides", []) for c in table.get("columns", []) if c.get("task") == task), [])

    return [(task, v, [*spec["variants"][v], *extra, *column_overrides(task)]) for task in tasks for v in variants]


def expand(
    name: str,
    seeds: list[int],
    root: Path = Path("runs"),
    tasks: list[str] | None = None,
    methods: list[str] | None = None,
    data: Path = DEFAULT_DATA,
    spec: dict | None = None,
    extra: list[str] | tuple[str, ...] = (),
) -> list[Run]:
    """The runs of a table or figure, deduplicated, in table order, filtered by task and variant patterns;
    `extra` overrides are added to every run (a larger reproduce-small on a GPU: keep those in their own --runs)."""
    spec = spec or load_spec()
    if name in spec["tables"]:
        cells = table_grid(spec, name)
    elif name in spec.get("figures", {}):
        cells = figure_grid(spec, name)
    else:
        known = [*spec["tables"], *spec.get("figures", {})]
        raise GridError(f"unknown table or figure {name!r}; choose one of {', '.join(known)}")
    base = runs_folder(spec, name, root)
    runs, seen = [], {}
    for task, variant, overrides in cells:
        if tasks and not any(fnmatch.fnmatch(task, p) for p in tasks):
            continue
        if methods and not any(fnmatch.fnmatch(variant, p) for p in methods):
            continue
        if any("{data}" in o for o in overrides) and not Path(data).is_dir():
            raise GridError(
                f"{name}: {task} reads its data from {data}, which does not exist: pass --data DIR (make: DATA=DIR), "
                "the folder with glue/sst2, glue/cola, ... (goat's tests use ../shared/data)"
            )
        overrides = tuple(o.replace("{data}", str(data)) for o in [*overrides, *extra])
        previous = seen.setdefault((task, variant), overrides)
        if previous != overrides:
            raise GridError(f"{name}: {task} {variant} is defined twice with different overrides")
        for seed in seeds:
            run = Run(task, variant, seed, overrides, run_dir(base, task, variant, seed))
            if run not in runs:
                runs.append(run)
    if not runs:
        raise GridError(f"{name}: no run matches TASKS={tasks} METHODS={methods}")
    return runs


LOCATION_KEYS = ("data_dir", "name_or_path", "output_dir")  # where things are, not what ran: may differ by machine
_ABSENT = object()


def stale_settings(run: Run) -> list[str]:
    """What a finished run's config.yaml says that the grid no longer plans: each of the run's key=value overrides
    (and its seed) that the saved config does not hold, as "key: <saved> there, <planned> planned". Group choices
    (method=goat) and locations (LOCATION_KEYS) are not compared; a run without config.yaml has nothing to compare."""
    path = run.output_dir / "config.yaml"
    if not path.exists():
        return []
    try:
        saved = OmegaConf.load(path)
    except Exception as error:  # noqa: BLE001 - any unreadable file is a finding, not a crash of the grid
        return [f"{path.name} cannot be read ({type(error).__name__})"]
    parsed = OverridesParser.create().parse_overrides([*run.overrides, f"trainer.seed={run.seed}"])
    last = {override.key_or_group: override for override in parsed}  # a key set twice: the later one wins
    differences = []
    for override in last.values():
        key = override.key_or_group
        if override.is_delete() or key.rsplit(".", 1)[-1] in LOCATION_KEYS:
            continue
        planned = override.value()
        there = OmegaConf.select(saved, key, default=_ABSENT)
        if isinstance(there, DictConfig | ListConfig):
            if isinstance(there, DictConfig) and not isinstance(planned, dict):
                continue  # a config group's choice (method=goat): its settings are compared key by key instead
            there = OmegaConf.to_container(there)
        if there is _ABSENT:
            differences.append(f"{key}: absent there, {planned} planned")
        elif not _same(there, planned):
            differences.append(f"{key}: {there} there, {planned} planned")
    return differences


def _same(there, planned) -> bool:
    if isinstance(there, bool) or isinstance(planned, bool):
        return there == planned
    if isinstance(there, int | float) and isinstance(planned, int | float):
        return math.isclose(there, planned, rel_tol=1e-9)  # 2e-4 planned, 0.0002 saved
    return there == planned or str(there) == str(planned)


def stale_runs_error(runs: list[Run]) -> str | None:
    """One message about the finished runs whose settings the grid no longer plans (None: there are none). The grid
    would skip them as finished and a table would mix them with runs of the new settings."""
    stale = [(run, found) for run in runs if run.state() == "finished" and (found := stale_settings(run))]
    if not stale:
        return None
    run, found = stale[0]
    return (
        f"{len(stale)} finished runs were trained with other settings than the grid plans now (e.g. {run.output_dir}: "
        f"{'; '.join(found[:3])}); they would be skipped as finished and mixed into the table. Use a new --runs "
        "folder, or move those runs away"
    )


def describe(runs: list[Run], gpus: int = 1, accelerate_config: str | None = None) -> str:
    """The grid as a table: what each run would do, and its command."""
    action = {"finished": "skip (finished)", "partial": "resume", "new": "train"}
    lines = [f"{len(runs)} runs"]
    for run in runs:
        command = " ".join(shlex.quote(a) for a in run.command(gpus, accelerate_config))
        lines.append(f"  {action[run.state()]:<16} {run.task:<28} {run.variant:<22} seed {run.seed}\n      {command}")
    return "\n".join(lines)


def run_in_process(run: Run) -> str:
    """One run in this Python process (no interpreter start and imports per run: small grids go 2-3x faster);
    returns its status: finished, interrupted (SIGTERM: checkpoint saved) or failed."""
    from goat.train import train  # lazy: torch, transformers, peft: 9 s; goat-grid --help, --dry-run: 0.5 s

    try:
        return train(compose(run.train_args())).get("status", "failed")
    except Exception:  # noqa: BLE001 - one broken run must not stop the grid; the traceback is logged
        logging.getLogger(__name__).exception("%s %s seed %d failed", run.task, run.variant, run.seed)
        return "failed"


def run_subprocess(run: Run, gpus: int, accelerate_config: str | None, stop: dict) -> str:
    """One run as its own goat-train process; a SIGTERM to the grid is passed on to it (it saves and exits 0)."""
    child = subprocess.Popen(run.command(gpus, accelerate_config), env={**os.environ, "PYTHONUNBUFFERED": "1"})
    stop["child"] = child
    try:
        code = child.wait()
    finally:
        stop["child"] = None
    if run.state() == "finished":
        return "finished"
    return "interrupted" if code == 0 or stop["requested"] else "failed"


def execute(
    runs: list[Run], gpus: int = 1, accelerate_config: str | None = None, log=print, in_process: bool = False
) -> list[Run]:
    """Trains every run that is not finished, one after another; returns the runs that failed or were stopped.

    A run that fails is logged and the grid goes on. SIGTERM (a job scheduler, `timeout`) stops the grid: the
    run in progress saves a checkpoint, no further run starts, and the same command later resumes it."""
    stop = {"requested": False, "child": None}

    def request_stop(signum, frame):
        stop["requested"] = True
        if stop["child"] is not None:
            stop["child"].send_signal(signal.SIGTERM)

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, request_stop) if main_thread else None
    failed = []
    todo = [run for run in runs if run.state() != "finished"]
    log(f"{len(runs) - len(todo)} of {len(runs)} runs already finished; {len(todo)} to go")
    try:
        for index, run in enumerate(todo, 1):
            log(f"[{index}/{len(todo)}] {run.state()}: {run.task} {run.variant} seed {run.seed} -> {run.output_dir}")
            start = time.perf_counter()
            if in_process:
                status = run_in_process(run)
            else:
                status = run_subprocess(run, gpus, accelerate_config, stop)
            seconds = time.perf_counter() - start
            if status == "finished":
                log(f"    finished in {seconds:.0f} s")
                if stop["requested"]:
                    log("    SIGTERM: no further run starts; rerun the command to continue the grid")
                    break
                continue
            failed.append(run)
            if status == "interrupted" or stop["requested"]:
                log(f"    stopped by SIGTERM after {seconds:.0f} s (checkpoint saved); rerun the command to resume")
                break
            log(f"    failed after {seconds:.0f} s; the grid goes on, rerun to retry it")
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    return failed


def _worker(device: str | None, todo, done) -> None:
    """A worker of execute_parallel: trains runs from `todo` in this process until the queue's end, a stop, or a
    failed run (after which its CUDA context may be broken: a fresh worker takes over)."""
    if device is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = device  # before torch starts CUDA in this fresh (spawned) process
    stop = {"requested": False}
    # between runs a SIGTERM only asks to stop; during one, the trainer's own handler saves a checkpoint
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.update(requested=True))
    while not stop["requested"]:
        run = todo.get()
        if run is None:
            break
        start = time.perf_counter()
        status = run_in_process(run)
        done.put((run, status, time.perf_counter() - start))
        if status != "finished":
            break
        _release_cuda_memory()  # the next run starts from an empty cache, not this one's peak


def _release_cuda_memory() -> None:
    import torch  # lazy: as run_in_process's goat.train (this module's top loads no torch)

    gc.collect()
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def visible_gpus() -> list[str | None]:
    import torch  # lazy: as run_in_process's goat.train (this module's top loads no torch)

    return [str(i) for i in range(torch.cuda.device_count())] or [None]


def execute_parallel(runs: list[Run], workers: int, log=print) -> list[Run]:
    """Trains the unfinished runs with `workers` processes, each taking the next run from one queue and training
    it in-process; workers are spread over the visible GPUs. A small model leaves a GPU mostly idle (its steps
    are bound by kernel launches), so several runs at once finish a grid several times sooner.

    Runs go seed by seed (every seed-0 run before any seed-1 run), so a grid cut short leaves whole seeds. A
    failed run ends its worker (a CUDA error can leave the process unusable) and goes back to the queue once,
    for a fresh worker (many runs on one GPU can fail for memory that a moment later is free). SIGTERM stops
    every worker (the runs in progress save a checkpoint) and no further run starts. Returns the runs that did
    not finish."""
    todo = sorted((run for run in runs if run.state() != "finished"), key=lambda run: run.seed)
    log(f"{len(runs) - len(todo)} of {len(runs)} runs already finished; {len(todo)} to go, {workers} workers")
    context = multiprocessing.get_context("spawn")  # a fresh process: no CUDA state or threads inherited
    pending, done = context.Queue(), context.Queue()
    for run in todo:
        pending.put(run)
    gpus = visible_gpus()
    count = min(workers, len(todo))
    processes, stop, retried = [], {"requested": False}, set()
    expected, reported, ended = len(todo), 0, False

    def start_worker() -> None:
        process = context.Process(target=_worker, args=(gpus[len(processes) % len(gpus)], pending, done))
        processes.append(process)
        process.start()

    def request_stop(signum, frame):
        stop["requested"] = True
        for process in processes:
            if process.is_alive():
                os.kill(process.pid, signal.SIGTERM)

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, request_stop) if main_thread else None
    try:
        for _ in range(count):
            start_worker()
        while any(p.is_alive() for p in processes) or not done.empty():
            if not ended and (stop["requested"] or reported == expected):
                ended = True  # every run is done (or the grid stops): an end marker for each worker
                for _ in processes:
                    pending.put(None)
            try:
                run, status, seconds = done.get(timeout=1)
            except queues.Empty:
                continue
            reported += 1
            what = {"finished": "finished", "interrupted": "stopped by SIGTERM (checkpoint saved)"}.get(status, status)
            log(f"[{reported}/{expected}] {run.task} {run.variant} seed {run.seed}: {what} in {seconds:.0f} s")
            if status == "failed" and not stop["requested"]:
                if run not in retried:
                    retried.add(run)
                    expected += 1
                    pending.put(run)
                    log("    back in the queue for one more try")
                start_worker()  # in place of the worker that ended
        for process in processes:
            process.join()
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    failed = [run for run in todo if run.state() != "finished"]
    if stop["requested"] and failed:
        log("SIGTERM: the grid stopped; rerun the command to continue it")
    return failed


def execute_hydra(runs: list[Run], hydra_overrides: list[str], log=print) -> list[Run]:
    """Hands every unfinished run to Hydra's launcher at once (the basic one without overrides: one after another
    in this process; hydra/launcher=joblib or slurm: in parallel). Each is checked before any starts and keeps
    resume=auto, so a partial run resumes and the same command later picks up what did not finish. Returns the
    runs that did not finish; OverrideError for a wrong setting or launcher."""
    todo = [run for run in runs if run.state() != "finished"]
    log(f"{len(runs) - len(todo)} of {len(runs)} runs already finished; {len(todo)} to go, through Hydra's launcher")
    if not todo:
        return []
    outcomes = launch([run.train_args() for run in todo], hydra_overrides)
    for run, outcome in zip(todo, outcomes, strict=True):
        why = f": {outcome['error']}" if outcome["error"] else ""
        log(f"  {run.task} {run.variant} seed {run.seed}: {outcome['status']}{why}")
    return [run for run in todo if run.state() != "finished"]


def _split(text: str | None) -> list[str] | None:
    return [part for part in (text or "").replace(",", " ").split() if part] or None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="goat-grid", description=__doc__.splitlines()[0])
    parser.add_argument("name", help="a table (table1 ... table8, small) or figure (fig4 ... fig7) name")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds (default 0, as the paper)")
    parser.add_argument("--tasks", help="task patterns, e.g. 'vit/*,glue/cola'")
    parser.add_argument("--methods", help="variant patterns, e.g. 'goat*,lora'")
    parser.add_argument("--runs", default="runs", help="root directory of the runs (default runs)")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="folder that {data} in the table stands for")
    parser.add_argument("--gpus", type=int, default=1, help="processes per run; > 1 uses accelerate launch")
    parser.add_argument("--accelerate-config", help="accelerate config file for --gpus > 1")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="an override added to every run (repeatable)"
    )
    parser.add_argument(
        "--in-process", action="store_true", help="train every run in this process (one GPU or CPU; faster small grids)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="train this many runs at once, in-process, spread over the visible GPUs (small models on a GPU)",
    )
    parser.add_argument(
        "--hydra",
        nargs="*",
        metavar="OVERRIDE",
        help="hand the unfinished runs to Hydra's launcher, with Hydra's own overrides (last on the line): none for "
        "the basic launcher, hydra/launcher=joblib, hydra/launcher=slurm hydra.launcher.partition=NAME",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the grid and exit")
    args = parser.parse_args(argv)
    try:
        seeds = [int(s) for s in _split(args.seeds) or ["0"]]
    except ValueError:
        parser.error(f"--seeds must be integers separated by commas, got {args.seeds!r}")
    try:
        runs = expand(
            args.name,
            seeds,
            Path(args.runs),
            _split(args.tasks),
            _split(args.methods),
            Path(args.data),
            extra=args.set,
        )
    except GridError as error:
        print(f"goat-grid: {error}", file=sys.stderr)
        return 2
    stale = stale_runs_error(runs)
    if stale:
        print(f"goat-grid: {stale}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(describe(runs, args.gpus, args.accelerate_config))
        return 0
    if (args.in_process or args.workers > 1) and args.gpus > 1:
        parser.error("--in-process and --workers run each run on one device; drop them for --gpus > 1")
    if args.workers < 1:
        parser.error(f"--workers must be at least 1, got {args.workers}")
    if args.hydra is not None and (args.gpus > 1 or args.workers > 1 or args.in_process):
        parser.error("--hydra hands each run to Hydra's launcher: drop --gpus, --workers and --in-process")
    if args.hydra is not None:
        try:
            failed = execute_hydra(runs, args.hydra)
        except OverrideError as error:
            print(f"goat-grid: {error}", file=sys.stderr)
            return 2
    elif args.workers > 1:
        failed = execute_parallel(runs, args.workers)
    else:
        failed = execute(runs, args.gpus, args.accelerate_config, in_process=args.in_process)
    if failed:
        print(f"{len(failed)} runs failed: " + ", ".join(f"{r.task}/{r.variant}/seed{r.seed}" for r in failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
