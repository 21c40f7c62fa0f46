"""goat-train's configuration: the configs shipped in the package (goat/configs/), a user's folders of their own
(`hydra.searchpath=[file://DIR]`), and the overrides, composed with Hydra's compose API.

Every override is checked against the structured schema (goat/config.py) first, so a mistake gets one line naming
the valid keys or options. A shipped config wins over a user's config of the same name, as with Hydra's own
--config-dir. goat.cli (one run) and goat.multirun (Hydra's sweeps and launchers) both compose through here.
"""

from __future__ import annotations

import dataclasses
import sys
from importlib.resources import files
from pathlib import Path

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException, ValidationError

from goat.config import MethodConfig, RunConfig, first_domain_error, resolve_method

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
GROUPS = ("task", "method", "model", "trainer", "logger")


class OverrideError(ValueError):
    pass


def search_path(overrides: list[str]) -> list[str]:
    """The entries of a `hydra.searchpath=[...]` override (the last one, as Hydra reads it), or []."""
    entries: list[str] = []
    for override in overrides:
        if override.split("=", 1)[0] == "hydra.searchpath":
            entries = list(OverridesParser.create().parse_override(override).value())
    return entries


def config_dirs(overrides: list[str]) -> list[Path]:
    """The shipped configs, then the user's folders of a hydra.searchpath override (file://, pkg:// or a path)."""
    dirs = [CONFIG_DIR]
    for entry in search_path(overrides):
        if entry.startswith("pkg://"):
            dirs.append(Path(str(files(entry.removeprefix("pkg://")))))
        else:
            dirs.append(Path(entry.removeprefix("file://")))
    return dirs


def available_options(group: str, dirs: list[Path] | None = None) -> list[str]:
    """The configs of a group in every config folder (the shipped one by default), by name."""
    names = set()
    for root in (folder / group for folder in dirs or [CONFIG_DIR]):
        names.update(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml"))
    return sorted(names)


def check_overrides(overrides: list[str]) -> None:
    """Unknown keys and unknown group options, with the valid ones listed, before Hydra composes anything."""
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
    check_overrides(overrides)
    register_schema()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = hydra_compose(config_name="config", overrides=overrides)
    except (HydraException, OmegaConfBaseException) as error:
        raise OverrideError(one_line(error)) from None
    problem = first_domain_error(cfg)  # a typo costs a second, not the model's load time
    if problem:
        raise OverrideError(problem)
    resolve_method(cfg)
    return cfg


def register_schema() -> None:
    """RunConfig as `run_schema`, the first entry of config.yaml's defaults: every composed config is typed."""
    ConfigStore.instance().store(name="run_schema", node=RunConfig)


def one_line(error: Exception) -> str:
    """Hydra's message, or for a value of the wrong type the key, the value and the type it needs."""
    cause = error.__cause__
    if isinstance(cause, ValidationError) and getattr(cause, "full_key", None):
        message = str(cause.msg).splitlines()[0]
        wanted = message.rsplit("converted to ", 1)[1].lower() if "converted to " in message else None
        return f"{cause.full_key}: {message}" + (f"; give a value of type {wanted}" if wanted else "")
    return " ".join(str(error).split())
