"""The committed decoder result re-renders from its committed runs: docs/results.md quotes
docs/results/small-decoder-h200/*.md, and this holds those files to what goat-report makes of the runs in the tarball
beside them (the same tables, intervals and paired tests, to the last digit). A change to the report code that moves
a number fails here until the committed files are rendered again."""

import tarfile
from pathlib import Path

import pytest

from goat.report import report

FOLDER = Path(__file__).resolve().parents[1] / "docs" / "results" / "small-decoder-h200"


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    root = tmp_path_factory.mktemp("decoder")
    with tarfile.open(FOLDER / "runs-small_decoder.tar.xz") as archive:
        archive.extractall(root / "runs", filter="data")
    report(root / "runs", root / "out", ["small_decoder", "small_decoder_norm"])
    return root / "out"


@pytest.mark.parametrize(
    "name", ["small_decoder.md", "small_decoder.csv", "small_decoder_norm.md", "small_decoder_norm.csv"]
)
def test_the_committed_decoder_tables_are_what_the_committed_runs_render(rendered, name):
    assert (rendered / name).read_text() == (FOLDER / name).read_text()


def test_the_verdict_in_results_md_quotes_the_rendered_tests(rendered):
    results = (FOLDER.parents[1] / "results.md").read_text()
    table = (rendered / "small_decoder.md").read_text()
    for line in (
        "| goat | -0.33 [-1.02, +0.32] | 0.362 | -0.09 [-0.87, +0.69] | 0.866 |",
        "| rslora | +1.60 [+0.63, +2.48] | 0.0006 | +0.27 [-0.89, +1.40] | 0.673 |",
    ):
        assert line in table and line in results
