"""The domain of every numeric setting (and of a few named choices), stated next to its field, and the one check
that reads them.

A schema field declares its domain with `ranged(default, DOMAIN)`; `domain_errors(values, schema, prefix)` then
walks the dataclass and returns one message per value outside its domain ("trainer.lr=nan must be a finite
number > 0"). None always passes: an optional setting left unset is checked where its default is resolved.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Domain:
    description: str  # completes "must be ...": "a finite number > 0"
    contains: Callable[[Any], bool]
    upper: float | None = None  # the largest value allowed, where there is one (the generated tests go past it)
    values: tuple = ()  # a setting that names one of a few choices: the choices (one_of, subset_of)
    many: bool = False  # a list setting, each of whose items must be one of `values` (subset_of)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


POSITIVE = Domain("a finite number > 0", lambda v: _number(v) and v > 0)
NON_NEGATIVE = Domain("a finite number >= 0", lambda v: _number(v) and v >= 0)
PROBABILITY = Domain("a probability in [0, 1)", lambda v: _number(v) and 0 <= v < 1)
SEED = Domain("an integer in [0, 2**32 - 1]", lambda v: _integer(v) and 0 <= v < 2**32, upper=2**32 - 1)


def at_least(low: int) -> Domain:
    return Domain(f"an integer >= {low}", lambda v: _integer(v) and v >= low)


POSITIVE_INT = at_least(1)
NON_NEGATIVE_INT = at_least(0)


def one_of(*values: str) -> Domain:
    """A setting that names one of `values` (task.scoring: generate | loglik)."""
    return Domain(f"one of {', '.join(values)}", lambda v: v in values, values=values)


def subset_of(*values: str) -> Domain:
    """A list setting each of whose items names one of `values` (task.train_sets); the empty list passes."""
    return Domain(
        f"a list of names among {', '.join(values)}",
        lambda v: not isinstance(v, str) and all(item in values for item in v),
        values=values,
        many=True,
    )


def ranged(default, domain: Domain, **kwargs):
    """A dataclass field whose values must lie in `domain` (None allowed where the default is None); a list default
    is given as its factory (`list`)."""
    if default is list:
        return dataclasses.field(default_factory=list, metadata={"domain": domain}, **kwargs)
    return dataclasses.field(default=default, metadata={"domain": domain}, **kwargs)


def field_domain(schema_field: dataclasses.Field) -> Domain | None:
    return schema_field.metadata.get("domain")


def domain_errors(values: Callable[[str], Any], schema: type, prefix: str) -> list[str]:
    """One message per field of `schema` whose value (read with `values(name)`) is outside its domain."""
    errors = []
    for schema_field in dataclasses.fields(schema):
        domain = field_domain(schema_field)
        if domain is None:
            continue
        value = values(schema_field.name)
        if value is not None and not domain.contains(value):
            errors.append(f"{prefix}.{schema_field.name}={value} must be {domain.description}")
    return errors
