"""docs/*.md point only at files that exist: every docs/results/... path, every scripts/... and tests/... file."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted((ROOT / "docs").glob("*.md"))
PATH = re.compile(r"(?<![\w/.])((?:docs/)?results/[\w.+-]+(?:/[\w.+-]+)*/?|(?:scripts|tests)/[\w.-]+\.(?:py|sh))")


def mentioned(doc: Path) -> list[str]:
    return sorted({m.group(1).rstrip(".") for m in PATH.finditer(doc.read_text())})


@pytest.mark.parametrize("doc", DOCS, ids=[d.name for d in DOCS])
def test_every_file_a_doc_names_is_committed(doc):
    missing = []
    for path in mentioned(doc):
        base = ROOT / "docs" if path.startswith("results/") else ROOT
        if not (base / path).exists():
            missing.append(path)
    assert not missing, f"{doc.name} names files that do not exist: {missing}"
