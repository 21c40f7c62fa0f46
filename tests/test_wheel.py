"""The wheel is the package: built from the checkout and installed away from it, goat-train finds its configs,
the paper's tables and a user's own config folder, and trains, with no file of the source tree in sight."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import tiny_run_overrides

ROOT = Path(__file__).resolve().parents[1]
# The console script goat-train of the wheel installed in SITE, run with an isolated sys.path (-I: no PYTHONPATH,
# no working directory) that puts SITE before the environment's site-packages, where an editable goat may point
# back at a checkout. It says which goat it imported.
LAUNCH = """
import sys
from importlib.metadata import distributions
site = sys.argv.pop(1)
sys.path.insert(0, site)
(dist,) = distributions(name="goat", path=[site])
(script,) = [e for e in dist.entry_points if e.name == "goat-train"]
main = script.load()
import goat
print("goat imported from", goat.__file__, file=sys.stderr)
sys.argv[0] = "goat-train"
sys.exit(main())
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The wheel of a copy of the checkout (the build leaves no build/ in the repo), installed into a folder."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "goat", source / "goat", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", root, source], check=True, cwd=root)
    (wheel,) = root.glob("goat-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", root / "site", wheel], check=True, cwd=root)
    return root / "site"


def goat_train(site: Path, cwd: Path, *args) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, "-I", "-c", LAUNCH, site, *map(str, args)], cwd=cwd, capture_output=True, text=True
    )
    assert f"goat imported from {site / 'goat' / '__init__.py'}" in done.stderr, done.stderr[-2000:]
    return done


def test_wheel_ships_configs_and_tables(site):
    assert (site / "goat" / "configs" / "config.yaml").is_file()
    assert (site / "goat" / "configs" / "task" / "glue" / "cola.yaml").is_file()
    assert (site / "goat" / "paper_results.yaml").is_file()
    shipped = {p.relative_to(ROOT / "goat").as_posix() for p in (ROOT / "goat").rglob("*.yaml")}
    assert shipped == {p.relative_to(site / "goat").as_posix() for p in (site / "goat").rglob("*.yaml")}


def test_installed_goat_train_composes_and_trains(site, tmp_path, tiny_model_dir, keyword_data):
    shown = goat_train(site, tmp_path, "--cfg", "trainer.lr=3e-4")
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "method:" in shown.stdout and "lr: 0.0003" in shown.stdout

    out = tmp_path / "run"
    run = goat_train(site, tmp_path, *tiny_run_overrides(tiny_model_dir, keyword_data, out, "trainer.max_steps=2"))
    assert run.returncode == 0, run.stderr[-2000:]
    assert (out / "results.json").is_file() and (out / "config.yaml").is_file()


def test_installed_goat_train_finds_a_users_config_folder(site, tmp_path):
    method = tmp_path / "myconf" / "method"
    method.mkdir(parents=True)
    shipped = (site / "goat" / "configs" / "method" / "goat.yaml").read_text()
    assert shipped.startswith("# @package method\n")
    (method / "mygoat.yaml").write_text(shipped + "r: 24\n")

    shown = goat_train(site, tmp_path, "--config-dir", tmp_path / "myconf", "method=mygoat", "--cfg")
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "r: 24" in shown.stdout and "method: goat" in shown.stdout

    wrong = goat_train(site, tmp_path, "--config-dir", tmp_path / "myconf", "method=mygoat2", "--cfg")
    assert wrong.returncode == 2
    assert "method=mygoat2 is not a config of group 'method'; options: " in wrong.stderr
    assert "mygoat" in wrong.stderr.split("options: ")[1] and "lora" in wrong.stderr
