"""Committed results re-render from their committed runs: docs/results.md quotes the tables in docs/results/<folder>/,
and this holds those files to what goat-report makes of the runs in the tarball beside them (the same tables,
intervals and tests, to the last digit). A change to the report code that moves a number fails here until the
committed files are rendered again."""

import tarfile
from pathlib import Path

import pytest

from goat.report import report

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"
# folder -> (the tarball of its runs' results.json and config.yaml, the runs root inside it, the tables rendered)
COMMITTED = {
    "small-decoder-h200": ("runs-small_decoder.tar.xz", ".", ["small_decoder", "small_decoder_norm"]),
    "small-sweep-heldout-h200": ("runs.tgz", ".", ["small_sweep", "small_sweep_rank"]),
    "small-sweep-h100": ("runs-results.tgz", ".", ["small_sweep", "small_sweep_rank", "small_sweep_ablation"]),
    "small-h100": ("runs-results.tgz", "runs-gpu", ["small", "small_ablation"]),
    "small-cpu": ("runs.tar.gz", ".", ["small"]),
}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """folder -> the directory goat-report wrote its tables to."""
    out = {}
    for folder, (tarball, inside, tables) in COMMITTED.items():
        root = tmp_path_factory.mktemp(folder)
        with tarfile.open(RESULTS / folder / tarball) as archive:
            archive.extractall(root / "runs", filter="data")
        report(root / "runs" / inside, root / "out", tables)
        out[folder] = root / "out"
    return out


@pytest.mark.parametrize(
    "folder,name",
    [
        (folder, f"{table}.{kind}")
        for folder, (_, _, tables) in COMMITTED.items()
        for table in tables
        for kind in ("md", "csv")
    ],
)
def test_the_committed_tables_are_what_the_committed_runs_render(rendered, folder, name):
    assert (rendered[folder] / name).read_text() == (RESULTS / folder / name).read_text()


def test_the_verdict_in_results_md_quotes_the_rendered_tests(rendered):
    results = (RESULTS.parent / "results.md").read_text()
    table = (rendered["small-decoder-h200"] / "small_decoder.md").read_text()
    for line in (
        "| goat | -0.33 [-1.02, +0.32] | 0.362 | -0.09 [-0.87, +0.69] | 0.866 |",
        "| rslora | +1.60 [+0.63, +2.48] | 0.0006 | +0.27 [-0.89, +1.40] | 0.673 |",
    ):
        assert line in table and line in results
