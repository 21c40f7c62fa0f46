"""Console entry points. The training loop arrives with the trainer (goat-train, goat-eval, goat-report)."""

import sys

NOT_YET = (
    "{name}: the trainer is not part of this release yet; use the adapter library "
    "(goat.adapters.apply_adapter) directly, see README.md"
)


def _not_yet(name: str) -> None:
    print(NOT_YET.format(name=name), file=sys.stderr)
    raise SystemExit(2)


def train() -> None:
    _not_yet("goat-train")


def evaluate() -> None:
    _not_yet("goat-eval")


def report() -> None:
    _not_yet("goat-report")
