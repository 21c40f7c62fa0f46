"""Every numeric setting of the schema, tried outside its domain through goat-train: exit 2, one line naming the
key, in well under a second, before any data or weights load, and an existing run folder left byte for byte."""

import dataclasses
import hashlib
import math
import time

import pytest
import test_bad_inputs
from test_bad_inputs import bad_run

from goat.adapters.config import AdapterConfig
from goat.config import TaskConfig, TrainerConfig
from goat.domains import NON_NEGATIVE, POSITIVE, PROBABILITY, SEED, field_domain
from tests.conftest import tiny_run_overrides

guarded = test_bad_inputs.guarded  # the fixture that fails the test if data or weights load

SCHEMAS = (("trainer", TrainerConfig), ("task", TaskConfig), ("method", AdapterConfig))


def outside(domain, is_int: bool) -> list[str]:
    """Override values outside `domain` (as goat-train's command line would get them)."""
    if domain.many:  # a list of named choices (task.train_sets)
        return ["[bogus]"]
    if domain.values:  # a named choice (task.scoring, task.train_format)
        return ["bogus"]
    if domain is SEED:
        return ["-1", str(2**32)]
    if not is_int and domain is POSITIVE:
        return ["-1.5", "0", "nan", "inf"]
    if not is_int and domain is NON_NEGATIVE:
        return ["-0.1", "nan", "-inf"]
    if domain is PROBABILITY:
        return ["-0.1", "1.0", "nan", "inf"]
    low = int(domain.description.rsplit(" ", 1)[1])  # "an integer >= k"
    return sorted({str(low - 1), "-7"})


def numeric_fields():
    for prefix, schema in SCHEMAS:
        for schema_field in dataclasses.fields(schema):
            domain = field_domain(schema_field)
            if domain is not None:
                is_int = str(schema_field.type).startswith("int")
                yield from ((prefix, schema_field.name, value) for value in outside(domain, is_int))


CASES = list(numeric_fields())


def test_every_numeric_field_of_the_schema_has_a_domain():
    """A new numeric setting without a domain fails here (method.lora_alpha, trainer.lr, ... all have one); task.scoring
    and task.train_format are named choices with a domain too, task.train_sets a list of them."""
    for prefix, schema in SCHEMAS:
        for schema_field in dataclasses.fields(schema):
            if str(schema_field.type).split(" ")[0] in ("int", "float"):
                assert field_domain(schema_field) is not None, f"{prefix}.{schema_field.name}"
    assert len(CASES) == 92  # docs/reliability.md counts them


def snapshot(folder):
    return {p.relative_to(folder): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(tiny_model_dir, keyword_data, tmp_path_factory):
    """A finished tiny run whose folder every bad start below points at."""
    from goat.cli import compose
    from goat.train import train

    out = tmp_path_factory.mktemp("finished") / "run"
    train(compose(tiny_run_overrides(tiny_model_dir, keyword_data, out, "trainer.max_steps=2")))
    return out


@pytest.mark.parametrize("prefix,name,value", CASES, ids=[f"{p}.{n}={v}" for p, n, v in CASES])
def test_value_outside_its_domain_is_one_line_exit_2_and_writes_nothing(
    prefix, name, value, guarded, capsys, tiny_model_dir, keyword_data, finished_run
):
    guarded(data=True)
    before = snapshot(finished_run)
    started = time.perf_counter()
    line = bad_run(capsys, tiny_run_overrides(tiny_model_dir, keyword_data, finished_run, f"{prefix}.{name}={value}"))
    assert time.perf_counter() - started < 10
    assert f"{prefix}.{name}" in line, line
    assert snapshot(finished_run) == before


def test_domains_describe_their_bounds():
    assert POSITIVE.contains(1e-9) and not POSITIVE.contains(0) and not POSITIVE.contains(math.inf)
    assert PROBABILITY.contains(0.0) and not PROBABILITY.contains(1.0)
    assert SEED.contains(2**32 - 1) and not SEED.contains(2**32) and not SEED.contains(True)
