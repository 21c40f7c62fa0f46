"""goat-train -m (Hydra's sweeper and launchers) and goat-grid --hydra: every job checked before any trains, each
run in its own folder, a finished run never written over; joblib and SLURM through Hydra's own plugins."""

import json
import os
import pickle
import stat

import pytest
import yaml
from conftest import tiny_run_overrides
from test_grid import tiny_table_spec

from goat import grid
from goat.cli import train_main
from goat.compose import OverrideError
from goat.multirun import launch, multirun, sweep_jobs


def sweep_overrides(model_dir, data_dir, *extra):
    """The tiny BERT keyword run (conftest) for 2 steps, without its output_dir: each job takes the default one,
    runs/<task>/<variant>/seed<k>, relative to the working directory."""
    fixed = tiny_run_overrides(model_dir, data_dir, "unused", "trainer.max_steps=2", "trainer.log_every_steps=1")
    return [o for o in fixed if not o.startswith(("output_dir=", "method"))] + list(extra)


def test_the_basic_sweeper_expands_a_2x2_sweep_in_command_line_order():
    jobs = sweep_jobs(["method=goat,lora", "trainer.seed=0,1", "logger=none", "hydra/launcher=joblib"])
    assert jobs == [
        ["method=goat", "trainer.seed=0", "logger=none"],
        ["method=goat", "trainer.seed=1", "logger=none"],
        ["method=lora", "trainer.seed=0", "logger=none"],
        ["method=lora", "trainer.seed=1", "logger=none"],
    ]


def test_goat_train_m_runs_a_2x2_sweep_each_job_in_its_own_run_folder(
    tiny_model_dir, keyword_data, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    argv = ["-m", *sweep_overrides(tiny_model_dir, keyword_data, "method=goat,lora", "trainer.seed=0,1")]
    argv.append(f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert train_main(argv) == 0
    out = capsys.readouterr().out
    assert "4 jobs: 4 finished" in out and "method=lora trainer.seed=1" in out

    runs = {(m, s): tmp_path / "runs" / "text_files" / m / f"seed{s}" for m in ("goat", "lora") for s in (0, 1)}
    assert sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / "runs").glob("*/*/*")) == sorted(
        p.relative_to(tmp_path).as_posix() for p in runs.values()
    )
    for (method, seed), folder in runs.items():
        results = json.loads((folder / "results.json").read_text())
        assert results["status"] == "finished" and results["steps"] == 2 and results["method"] == method
        config = yaml.safe_load((folder / "config.yaml").read_text())
        assert config["method"]["method"] == method and config["trainer"]["seed"] == seed
        assert config["output_dir"] == f"runs/text_files/{method}/seed{seed}"
    # Hydra's own files: one job folder per job, holding the job's overrides
    jobs = [yaml.safe_load((tmp_path / "sweep" / str(n) / ".hydra" / "overrides.yaml").read_text()) for n in range(4)]
    assert [(j[-2], j[-1]) for j in jobs] == [(f"method={m}", f"trainer.seed={s}") for m, s in runs]

    # the same sweep again: every job refuses its folder, nothing is written over
    before = {key: (folder / "results.json").read_bytes() for key, folder in runs.items()}
    assert train_main([*argv[:-1], f"hydra.sweep.dir={tmp_path / 'again'}"]) == 1
    out = capsys.readouterr().out
    assert "4 jobs: 4 refused" in out and "already holds a finished run" in out
    assert before == {key: (folder / "results.json").read_bytes() for key, folder in runs.items()}


@pytest.mark.parametrize(
    ("sweep", "message"),
    [
        (["method=goat,lora", "trainer.lr=-1"], r"^job 0 \(method=goat\): trainer.lr=-1"),
        (["method=goat,lorra"], r"^job 1 \(method=lorra\): method=lorra is not a config of group 'method'"),
        (["method=goat", "trainer.lr=1e-3,1e-2"], r"^jobs 0 and 1 would both train into runs/text_files/goat/seed0: "),
        (["method=goat", "trainer.seed=0,1", "output_dir=runs/x"], "^jobs 0 and 1 would both train into runs/x: "),
    ],
)
def test_a_bad_job_stops_the_sweep_before_any_job_trains(
    tiny_model_dir, keyword_data, tmp_path, monkeypatch, sweep, message
):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(OverrideError, match=message):
        multirun([*sweep_overrides(tiny_model_dir, keyword_data), *sweep])
    assert not any(tmp_path.iterdir())  # no run folder, no Hydra sweep folder


def test_the_swept_key_in_the_variant_gives_each_job_its_folder(tiny_model_dir, keyword_data, tmp_path, monkeypatch):
    """The way out that the collision message names: interpolations in an override reach each job's config."""
    from goat.multirun import check_jobs

    monkeypatch.chdir(tmp_path)
    base = sweep_overrides(tiny_model_dir, keyword_data, "method=goat")
    check_jobs(sweep_jobs([*base, "trainer.lr=1e-3,1e-2", "variant=goat_lr${trainer.lr}"]), [])


def test_a_launcher_that_is_not_installed_is_one_line_naming_the_extra(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    message = r"^In 'hydra/config': Could not find 'hydra/launcher/nope' Available options in 'hydra/launcher': .*slurm"
    with pytest.raises(OverrideError, match=message + r" \(.*pip install 'goat\[launchers\]'\)$"):
        multirun(["method=goat", "trainer=cpu", "hydra/launcher=nope"])
    assert not any(tmp_path.iterdir())


def test_cfg_and_multirun_together_are_one_line(capsys):
    assert train_main(["-m", "--cfg", "method=goat,lora"]) == 2
    assert capsys.readouterr().err == "goat-train: --cfg prints one run's config: drop -m\n"


def test_joblib_launcher_runs_the_jobs_in_worker_processes(tiny_model_dir, keyword_data, tmp_path, monkeypatch, capfd):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher", reason="pip install -e '.[test]' brings it")
    monkeypatch.chdir(tmp_path)
    overrides = sweep_overrides(tiny_model_dir, keyword_data, "method=lora", "trainer.seed=0,1")
    outcomes = multirun([*overrides, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "hydra.sweep.dir=sweep"])
    assert [(o["status"], o["output_dir"]) for o in outcomes] == [
        ("finished", "runs/text_files/lora/seed0"),
        ("finished", "runs/text_files/lora/seed1"),
    ]
    assert "Joblib.Parallel(n_jobs=2,backend=loky" in capfd.readouterr().out  # Hydra's joblib launcher ran them
    assert all((tmp_path / o["output_dir"] / "results.json").exists() for o in outcomes)


def fake_slurm(bin_dir, record):
    """`srun` (submitit looks for it to know it is on a cluster) and an `sbatch` that keeps the job script it is
    given and refuses it: the submission stops where a cluster would take over."""
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\ncp "$1" {record}\necho "sbatch: error: no cluster here" >&2\nexit 1\n')
    for tool in ("srun", "sbatch"):
        (bin_dir / tool).chmod((bin_dir / tool).stat().st_mode | stat.S_IEXEC)


def test_slurm_launcher_submits_one_array_job_with_goats_resources(tiny_model_dir, keyword_data, tmp_path, monkeypatch):
    """hydra/launcher=slurm (goat/configs/hydra/launcher/slurm.yaml): the job script sbatch would get, and the
    pickled jobs that the SLURM tasks would run (each a complete run's overrides)."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install -e '.[test]' brings it")
    from submitit.core.utils import FailedJobError

    fake_slurm(tmp_path / "bin", tmp_path / "job.sh")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.chdir(tmp_path)
    overrides = sweep_overrides(tiny_model_dir, keyword_data, "method=goat", "trainer.seed=0,1")
    slurm = ["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.sweep.dir=sweep"]
    with pytest.raises(FailedJobError, match="no cluster here"):
        multirun([*overrides, *slurm])
    script = (tmp_path / "job.sh").read_text()
    for line in ("--partition=gpu", "--gpus-per-node=1", "--ntasks-per-node=1", "--cpus-per-task=4", "--mem=32GB"):
        assert f"#SBATCH {line}\n" in script
    assert "#SBATCH --time=1440\n" in script and "#SBATCH --array=0-1%2\n" in script  # one array job, two tasks
    assert f"srun --unbuffered --output {tmp_path}/sweep/.submitit/%A_%a/%A_%a_%t_log.out" in script
    assert script.rstrip().endswith(f"-u -m submitit.core._submit {tmp_path}/sweep/.submitit/%j")

    jobs = []
    for path in (tmp_path / "sweep" / ".submitit").glob("*.pkl"):
        with open(path, "rb") as handle:
            jobs.append(pickle.load(handle).args[0])  # (overrides, job dir key, job number, ...) of the launcher
    assert sorted(job[-2:] for job in jobs) == [["method=goat", "trainer.seed=0"], ["method=goat", "trainer.seed=1"]]
    assert not (tmp_path / "runs").exists()


def test_goat_grid_hands_unfinished_runs_to_hydras_launcher(tiny_model_dir, keyword_data, tmp_path, monkeypatch):
    """goat-grid --hydra: the table's runs (their own folders, resume=auto) through Hydra's basic launcher; a
    second pass launches nothing."""
    variants = {"goat": ["method=goat", "method.r=32", "method.lora_alpha=64"], "lora": ["method=lora"]}
    spec = tiny_table_spec(tiny_model_dir, keyword_data, variants, ["trainer.max_steps=2"])
    runs = grid.expand("t", [0], tmp_path / "runs", spec=spec)
    sweep = [f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    log = []
    assert grid.execute_hydra(runs, sweep, log=log.append) == []
    assert [r.state() for r in runs] == ["finished", "finished"]
    assert log[0] == "0 of 2 runs already finished; 2 to go, through Hydra's launcher"
    assert log[1:] == ["  text_files goat seed 0: finished", "  text_files lora seed 0: finished"]
    results = json.loads((runs[0].output_dir / "results.json").read_text())
    assert results["variant"] == "goat" and results["steps"] == 2
    overrides = yaml.safe_load((tmp_path / "sweep" / "1" / ".hydra" / "overrides.yaml").read_text())
    assert overrides == list(runs[1].train_args())

    def must_not_launch(*args):
        raise AssertionError("a finished run was handed to the launcher again")

    monkeypatch.setattr(grid, "launch", must_not_launch)
    again = []
    assert grid.execute_hydra(runs, sweep, log=again.append) == []
    assert again == ["2 of 2 runs already finished; 0 to go, through Hydra's launcher"]


def test_grid_hydra_overrides_must_be_hydras_own_and_exclude_goats_runners(tmp_path, capsys):
    with pytest.raises(OverrideError, match="'trainer.lr=1' is not one of Hydra's own overrides"):
        launch([["method=goat"]], ["trainer.lr=1"])
    with pytest.raises(SystemExit):
        grid.main(["fig7", "--runs", str(tmp_path), "--workers", "2", "--hydra"])
    assert "--hydra hands each run to Hydra's launcher: drop --gpus, --workers" in capsys.readouterr().err
