"""goat-train -m: Hydra's multirun, with goat's guarantees; and goat-grid's hand-off to Hydra's launchers.

`goat-train -m method=goat,lora trainer.seed=0,1` sweeps with Hydra's sweeper (the basic one: every combination of
the comma-separated values) and runs the jobs with Hydra's launcher: one after another in this process by default,
`hydra/launcher=joblib` in local worker processes, `hydra/launcher=slurm` (goat/configs/hydra/launcher/slurm.yaml)
as SLURM jobs through submitit. Those two are plugins: `pip install 'goat[launchers]'`.

Before any job starts, every job of the sweep is composed and checked as goat-train checks one run (keys, options,
domains), and no two jobs may train into one output_dir. Each job is then one run: its domain check, then
goat.train.train, which never writes over a finished run. Hydra's own files (.hydra/, the job's log) go to
hydra.sweep.dir (multirun/<date>/<time>/<job number>); the run itself goes to its output_dir, as with goat-train.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

# @hydra.main's machinery (Hydra, its search path, the basic sweeper) is internal to hydra-core; pyproject pins 1.3.x
from hydra._internal.callbacks import Callbacks
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra._internal.hydra import Hydra
from hydra._internal.utils import create_config_search_path
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn
from hydra.errors import HydraException
from hydra.types import HydraContext, RunMode
from hydra.version import setbase
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from goat.compose import CONFIG_DIR, OverrideError, compose, one_line, register_schema
from goat.config import (
    CheckpointError,
    ConfigError,
    DataUnavailableError,
    ModelUnavailableError,
    NonFiniteLossError,
    first_domain_error,
    first_line,
)

logger = logging.getLogger("goat")
TASK_NAME = "goat-train"  # Hydra's job name: the job's log is <hydra.sweep.dir>/<job number>/goat-train.log
PLUGINS_HINT = "the joblib and SLURM launchers are plugins: pip install 'goat[launchers]'"


def is_hydra_override(override: str) -> bool:
    """hydra.* and hydra/* overrides set Hydra itself (launcher, sweep folder), not the run."""
    return override.lstrip("+~").startswith(("hydra.", "hydra/"))


def sweep_jobs(overrides: list[str]) -> list[list[str]]:
    """The run overrides of every job, as Hydra's basic sweeper expands them: each comma-separated list is one axis,
    the jobs are their product in command-line order (method=goat,lora trainer.seed=0,1: goat 0, goat 1, lora 0,
    lora 1). Hydra's own overrides are left out."""
    try:
        parsed = OverridesParser.create().parse_overrides([o for o in overrides if not is_hydra_override(o)])
        (jobs,) = BasicSweeper.split_arguments(parsed, max_batch_size=None)
    except HydraException as error:
        raise OverrideError(one_line(error)) from None
    return jobs


def check_jobs(jobs: list[list[str]], hydra_overrides: list[str]) -> None:
    """Every job composes, its values are in their domains, and no two jobs share an output_dir: OverrideError
    naming the job (its number and the overrides that set it apart) otherwise. Cheap (no torch, no model): a
    mistake in job 40 stops the sweep before job 0 trains."""
    searchpath = [o for o in hydra_overrides if o.startswith("hydra.searchpath=")]  # the user's config folders
    shared = set.intersection(*(set(job) for job in jobs)) if len(jobs) > 1 else set()
    folders: dict[str, int] = {}
    for number, job in enumerate(jobs):
        name = f"job {number} ({' '.join(o for o in job if o not in shared)})" if shared else f"job {number}"
        try:
            cfg = compose([*job, *searchpath])
        except OverrideError as error:
            raise OverrideError(f"{name}: {error}") from None
        problem = first_domain_error(cfg)
        if problem:
            raise OverrideError(f"{name}: {problem}")
        folder = os.path.abspath(cfg.output_dir)
        if folder in folders:
            raise OverrideError(
                f"jobs {folders[folder]} and {number} would both train into {cfg.output_dir}: name the runs by what "
                "the sweep varies, e.g. variant='lora_lr${trainer.lr}' (the default output_dir holds the variant) "
                "or output_dir='runs/sweep/lr${trainer.lr}'"
            )
        folders[folder] = number


def run_job(cfg: DictConfig) -> dict:
    """Hydra's task function: one run of a sweep, in this process, a joblib worker or a SLURM job. Returns its
    outcome: status finished or interrupted (SIGTERM: checkpoint saved), refused (a setting, missing data or model,
    or a finished run in output_dir: nothing trained) or failed (a non-finite loss, a broken checkpoint)."""
    from goat.train import train  # lazy: torch; goat.cli imports this module at the top (see goat/cli.py)

    output_dir = str(cfg.output_dir)
    problem = first_domain_error(cfg)  # before torch and the model libraries load
    if problem:
        return _outcome("refused", output_dir, problem)
    try:
        results = train(cfg)
    except (ConfigError, DataUnavailableError, ModelUnavailableError) as error:
        return _outcome("refused", output_dir, first_line(error))
    except (NonFiniteLossError, CheckpointError) as error:
        return _outcome("failed", output_dir, first_line(error))
    return _outcome(results.get("status", "failed"), output_dir, None)


def _outcome(status: str, output_dir: str, error: str | None) -> dict:
    if error:
        logger.error("%s: %s", output_dir, error)
    return {"status": status, "output_dir": output_dir, "error": error}


@contextlib.contextmanager
def hydra_app() -> Iterator[Hydra]:
    """Hydra, as @hydra.main would set it up for goat-train: goat/configs/ as the primary config folder (a user's
    folders come with a hydra.searchpath override), version_base 1.3 (jobs stay in the working directory)."""
    setbase("1.3")
    register_schema()
    hydra = Hydra.create_main_hydra2(task_name=TASK_NAME, config_search_path=create_config_search_path(str(CONFIG_DIR)))
    try:
        yield hydra
    finally:
        GlobalHydra.instance().clear()


def multirun(overrides: list[str]) -> list[dict]:
    """goat-train -m: checks every job (unless another sweeper than the basic one expands the sweep: then each job
    is checked as it starts), sweeps and launches with Hydra; returns each job's outcome and its overrides."""
    hydra_overrides = [o for o in overrides if is_hydra_override(o)]
    if not any(o.startswith("hydra/sweeper=") for o in hydra_overrides):
        check_jobs(sweep_jobs(overrides), hydra_overrides)
    with hydra_app() as hydra, _hydra_errors():
        batches = hydra.multirun(
            config_name="config", task_function=run_job, overrides=[*overrides, "hydra.mode=MULTIRUN"]
        )
    return [_job_outcome(job) for batch in batches for job in batch]


def launch(jobs: list[list[str]], hydra_overrides: list[str]) -> list[dict]:
    """Each job (a complete run's overrides, as goat-grid builds them) handed to Hydra's launcher, with no sweeper
    between: hydra_overrides choose and set it (hydra/launcher=slurm hydra.launcher.partition=gpu). The jobs are
    checked first, as in multirun. Returns each job's outcome, in order."""
    wrong = [o for o in hydra_overrides if not is_hydra_override(o)]
    if wrong:
        raise OverrideError(f"{wrong[0]!r} is not one of Hydra's own overrides (hydra/launcher=..., hydra.launcher.*)")
    check_jobs(jobs, hydra_overrides)
    with hydra_app() as hydra, _hydra_errors():
        cfg = hydra.compose_config(
            "config", [*hydra_overrides, "hydra.mode=MULTIRUN"], run_mode=RunMode.MULTIRUN, with_log_configuration=True
        )
        context = HydraContext(config_loader=hydra.config_loader, callbacks=Callbacks(cfg))
        launcher = Plugins.instance().instantiate_launcher(hydra_context=context, task_function=run_job, config=cfg)
        returns = launcher.launch(jobs, initial_job_idx=0)
    return [_job_outcome(job) for job in returns]


@contextlib.contextmanager
def _hydra_errors() -> Iterator[None]:
    """Hydra's composition errors (a launcher that is not installed, a misspelt hydra.* key) as one line."""
    try:
        yield
    except (HydraException, OmegaConfBaseException) as error:
        line = one_line(error).split(" Config search path:")[0]  # the folders Hydra searched: noise on one line
        raise OverrideError(f"{line} ({PLUGINS_HINT})" if "hydra/launcher" in line else line) from None


def _job_outcome(job: JobReturn) -> dict:
    """The task function's outcome and the job's run overrides; a job that raised re-raises here (Hydra's way)."""
    return {**job.return_value, "overrides": list(job.overrides or [])}
