"""goat-grid: the runs of a paper table, filtered, printed, and run idempotently (finished skipped, partial resumed)."""

import json
import os
import signal
import sys

import pytest
from conftest import tiny_run_overrides
from omegaconf import OmegaConf

from goat import grid
from goat.cli import compose
from goat.tables import load_spec
from goat.train import train


@pytest.fixture(scope="module")
def spec():
    return load_spec()


def test_table1_expands_to_every_method_and_dataset(spec, tmp_path):
    runs = grid.expand("table1", [0], tmp_path, spec=spec)
    assert len(runs) == 12 * 7
    cars_lora16 = next(r for r in runs if r.task == "vit/cars" and r.variant == "lora_r16")
    assert cars_lora16.overrides == ("method=lora", "method.r=16", "method.lora_alpha=32")
    assert cars_lora16.output_dir == tmp_path / "vit/cars/lora_r16/seed0"
    args = cars_lora16.train_args()
    assert args[0] == "task=vit/cars" and "variant=lora_r16" in args and args[-1] == "resume=auto"
    command = cars_lora16.command(gpus=2)
    assert command[:5] == ["accelerate", "launch", "--num_processes", "2", "--multi_gpu"]
    assert command[5:7] == ["-m", "goat.cli"]
    assert cars_lora16.command()[:3] == [sys.executable, "-m", "goat.cli"]


def test_filters_seeds_and_shared_runs(spec, tmp_path):
    runs = grid.expand("table1", [0, 1, 2], tmp_path, tasks=["vit/c*", "vit/dtd"], methods=["goat", "lora*"], spec=spec)
    assert {r.task for r in runs} == {"vit/cars", "vit/dtd"}
    assert {r.variant for r in runs} == {"goat", "lora", "lora_r16", "lora_r32"}
    assert len(runs) == 2 * 4 * 3
    # Table 8 needs GOAT-s on every task of Tables 1-4 (commonsense/all once for its 8 test sets) and GOAT's own
    # runs, which are the same directories as Table 1's
    table8 = grid.expand("table8", [0], tmp_path, spec=spec)
    assert len(table8) == 2 * (3 + 7 + 7 + 1)
    assert {r.output_dir for r in table8} >= {r.output_dir for r in runs if r.variant == "goat" and r.seed == 0}
    # Table 6's learning-rate columns are variants of their own; its 2e-5 column is Table 2's run
    table6 = {(r.variant, r.overrides[-1]) for r in grid.expand("table6", [0], tmp_path, methods=["goat*"], spec=spec)}
    assert table6 == {("goat_lr1e-5", "trainer.lr=1e-5"), ("goat", "method=goat"), ("goat_lr5e-5", "trainer.lr=5e-5")}
    assert all(r.variant != "full_ft_moe" for r in grid.expand("table7", [0], tmp_path, spec=spec))  # not_run


def test_bad_names_and_filters_fail_with_one_line(spec, tmp_path, capsys):
    with pytest.raises(grid.GridError, match="unknown table or figure 'table9'; choose one of table1"):
        grid.expand("table9", [0], tmp_path, spec=spec)
    with pytest.raises(grid.GridError, match="no run matches"):
        grid.expand("table1", [0], tmp_path, methods=["gaot"], spec=spec)
    with pytest.raises(grid.GridError, match="pass --data DIR"):
        grid.expand("small", [0], tmp_path, data=tmp_path / "missing", spec=spec)
    assert grid.main(["table4", "--methods", "nope", "--runs", str(tmp_path)]) == 2
    assert "goat-grid: table4: no run matches" in capsys.readouterr().err


def test_dry_run_prints_the_grid_and_runs_nothing(tmp_path, capsys):
    assert grid.main(["fig7", "--runs", str(tmp_path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("1 runs") and "train" in out and "vit/cars" in out and "goat.cli task=vit/cars" in out
    assert not any(tmp_path.iterdir())


def tiny_table_spec(model_dir, data_dir, variants: dict, extra: list[str]) -> dict:
    """A one-column table "t" over the tiny BERT keyword task, one row per variant."""
    common = [a for a in tiny_run_overrides(model_dir, data_dir, "x") if not a.startswith(("output_dir", "task="))]
    common = [a for a in common if not a.startswith("method")] + extra
    table = {"title": "t", "columns": [{"name": "kw", "task": "text_files"}], "rows": dict.fromkeys(variants)}
    return {"variants": variants, "tables": {"t": {**table, "overrides": common}}}


def test_grid_is_idempotent_and_resumes_a_half_finished_run(tiny_model_dir, keyword_data, tmp_path, monkeypatch):
    """An interrupted run resumes from its checkpoint, a new one trains, and a second pass starts nothing."""
    variants = {"goat": ["method=goat", "method.r=32", "method.lora_alpha=64"], "lora": ["method=lora"]}
    common = ["trainer.max_steps=8", "trainer.log_every_steps=1"]
    spec = tiny_table_spec(tiny_model_dir, keyword_data, variants, common)
    runs = grid.expand("t", [0], tmp_path, spec=spec)
    goat_run, lora_run = runs
    assert [r.state() for r in runs] == ["new", "new"]

    def stop_at_3(trainer, step):
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    assert train(compose(goat_run.train_args()), callbacks=[stop_at_3])["status"] == "interrupted"
    assert goat_run.state() == "partial" and "resume" in grid.describe(runs)

    log = []
    assert grid.execute(runs, log=log.append) == []
    assert [r.state() for r in runs] == ["finished", "finished"]
    logged = [json.loads(line) for line in (goat_run.output_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in logged if "train/loss" in r]
    assert steps == list(range(1, 9))  # steps 1-3 before the stop, 4-8 after: resumed, not restarted
    results = json.loads((goat_run.output_dir / "results.json").read_text())
    assert results["variant"] == "goat" and results["steps"] == 8

    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished run was started again")

    monkeypatch.setattr(grid.subprocess, "Popen", must_not_run)
    again = []
    assert grid.execute(runs, log=again.append) == []
    assert again == ["2 of 2 runs already finished; 0 to go"]
    assert lora_run.state() == "finished"


def test_sigterm_stops_the_grid_and_a_failed_run_does_not(spec, tmp_path, monkeypatch):
    """A failed run is logged and the grid goes on; an interrupted one (SIGTERM: checkpoint saved) ends the grid."""
    runs = grid.expand(
        "table4", [0], tmp_path, methods=["goat"], tasks=["glue/cola", "glue/sst2", "glue/mrpc"], spec=spec
    )
    started = []
    outcomes = iter(["failed", "interrupted", "finished"])

    def fake_run(run):
        started.append(run.task)
        return next(outcomes)

    monkeypatch.setattr(grid, "run_in_process", fake_run)
    log = []
    assert grid.execute(runs, in_process=True, log=log.append) == runs[:2]
    assert started == ["glue/cola", "glue/sst2"]  # mrpc never started
    assert "failed after" in log[2] and "stopped by SIGTERM" in log[4]


def test_in_process_run_with_a_bad_config_fails_without_stopping(tmp_path):
    run = grid.Run("offline/rotten_tomatoes", "goat", 0, ("method=goat", "method.top_k=99"), tmp_path / "bad")
    assert grid.run_in_process(run) == "failed"
    assert run.state() == "new"


def test_parallel_workers_finish_the_grid_and_retry_a_failed_run_once(tiny_model_dir, keyword_data, tmp_path):
    """--workers: runs train at once in spawned processes; a run that fails goes back to the queue once, for a
    fresh worker, and is reported failed; the others finish with the same results as a serial run."""
    variants = {"lora": ["method=lora"], "broken": ["method=goat", "method.top_k=99"]}
    spec = tiny_table_spec(tiny_model_dir, keyword_data, variants, ["trainer.max_steps=4"])
    spec["tables"]["t"]["sweep"] = {"key": "trainer.lr", "suffix": "lr", "values": ["1e-3", "1e-2"], "heldout": 32}
    spec["tables"]["t"]["sweep"]["by_row"] = {"broken": ["1"]}
    runs = grid.expand("t", [0, 1], tmp_path, spec=spec)
    assert [(r.variant, r.seed) for r in runs] == [
        ("lora_lr1e-3", 0),
        ("lora_lr1e-3", 1),
        ("lora_lr1e-2", 0),
        ("lora_lr1e-2", 1),
        ("broken_lr1", 0),
        ("broken_lr1", 1),
    ]
    assert "trainer.lr=1e-2" in runs[2].overrides and "task.heldout_size=32" in runs[2].overrides
    log = []
    failed = grid.execute_parallel(runs, workers=2, log=log.append)
    assert [(r.variant, r.seed) for r in failed] == [("broken_lr1", 0), ("broken_lr1", 1)]
    assert sum("back in the queue" in line for line in log) == 2  # each broken run tried twice, then given up
    assert sum(": failed in" in line for line in log) == 4
    finished = [r for r in runs if r.state() == "finished"]
    assert len(finished) == 4
    results = json.loads((runs[2].output_dir / "results.json").read_text())
    assert results["steps"] == 4 and results["variant"] == "lora_lr1e-2" and results["seed"] == 0
    assert results["heldout"]["rows"] == 32 and "heldout/accuracy" in results["final"]  # what goat-report chooses on
    # seed-major order: every seed-0 run started before any seed-1 run (the log's first two lines are seed 0)
    assert log[0].startswith("0 of 6 runs already finished; 6 to go, 2 workers")


def test_small_sweep_gives_every_method_the_same_rates_and_one_more_past_a_peak_at_the_top(spec, tmp_path):
    runs = grid.expand("small_sweep", [0], tmp_path, spec=spec)
    rates = {}
    for run in runs:
        row, rate = run.variant.rsplit("_lr", 1)
        assert f"trainer.lr={rate}" == run.overrides[-1]  # the swept value comes after the table's settings
        rates.setdefault(row, set()).add(rate)
    grid_rates = {"6e-5", "2e-4", "6e-4", "2e-3"}
    assert len(rates) == 13 and rates["goat"] == rates["lora"] == rates["rslora"] == grid_rates
    # rows whose best rate was the top of the grid ran one rate higher too
    assert rates["molora"] == rates["hydralora"] == rates["goat_noms"] == grid_rates | {"6e-3"}
    assert rates["full_ft"] == rates["full_ft_moe"] == {"6e-6", "2e-5", "6e-5", "2e-4", "6e-4"}
    assert len(runs) == 2 * sum(len(values) for values in rates.values()) == 2 * (13 * 4 + 5)
    assert all("method.r=32" in run.overrides for run in runs)  # the rank that ran, pinned (GLUE configs set it)
    assert all("task.heldout_size=500" in run.overrides for run in runs)  # the rows that choose each cell's rate


def test_a_sweep_that_holds_out_no_rows_is_refused(spec, tmp_path, capsys):
    """A swept value is chosen on held-out training rows: a sweep without sweep.heldout cannot run."""
    spec = {**spec, "tables": {**spec["tables"], "small_sweep": dict(spec["tables"]["small_sweep"])}}
    spec["tables"]["small_sweep"]["sweep"] = {
        k: v for k, v in spec["tables"]["small_sweep"]["sweep"].items() if k != "heldout"
    }
    with pytest.raises(grid.GridError, match="sweep.heldout must be a count of training rows .* got None"):
        grid.expand("small_sweep", [0], tmp_path, spec=spec)


def test_small_sweep_rank_shares_small_sweeps_runs_and_keeps_each_rows_rank(spec, tmp_path):
    """The k=2 and r=32 rows are small_sweep's own runs (same directories, same overrides); the new rows keep
    their k or rank (a table override may not turn lora_r8 into a rank-32 LoRA)."""
    sweep = {run.output_dir: run.overrides for run in grid.expand("small_sweep", [0], tmp_path, spec=spec)}
    rank = grid.expand("small_sweep_rank", [0], tmp_path, spec=spec)
    for run in rank:
        row = run.variant.rsplit("_lr", 1)[0]
        if row in ("goat", "molora", "lora"):
            # small_sweep pins the rank that the GLUE task configs set; here the task config sets it
            pinned = {"method.r=32", "method.lora_alpha=64"}
            assert [o for o in sweep[run.output_dir] if o not in pinned] == list(run.overrides)
        else:
            assert run.output_dir not in sweep
    overrides = {run.variant: run.overrides for run in rank}
    assert "method.top_k=4" in overrides["goat_k4_lr6e-4"] and "method.top_k=8" in overrides["molora_k8_lr2e-3"]
    assert "method.r=8" in overrides["lora_r8_lr6e-3"] and "method.r=32" not in overrides["lora_r8_lr6e-3"]
    assert "method.r=16" in overrides["lora_r16_lr2e-4"]


def test_a_table_override_may_not_overrule_its_rows_variant(tmp_path):
    """Table and column overrides come after the row's: pinning method.r in a table would silently make a
    rank-32 LoRA of lora_r8, so such a spec is refused with one line naming the row and the key."""
    spec = {
        "variants": {"lora_r8": ["method=lora", "method.r=8", "method.lora_alpha=16"], "lora": ["method=lora"]},
        "tables": {
            "t": {
                "title": "t",
                "columns": [{"name": "kw", "task": "text_files", "overrides": ["method.lora_alpha=64"]}],
                "rows": {"lora": None, "lora_r8": None},
                "overrides": ["method.r=32"],
            }
        },
    }
    with pytest.raises(grid.GridError, match=r"row 'lora_r8' sets method\.lora_alpha, method\.r, which the table"):
        grid.expand("t", [0], tmp_path, spec=spec)
    del spec["tables"]["t"]["rows"]["lora_r8"]
    assert len(grid.expand("t", [0], tmp_path, spec=spec)) == 1


def test_finished_runs_of_other_settings_stop_the_grid_before_it_starts(
    tiny_model_dir, keyword_data, tmp_path, monkeypatch, capsys
):
    """A finished run is skipped by its results.json alone; if the spec changed since (a rate, held-out rows), the
    grid would mix old results into the new table. Its config.yaml is compared with what the grid plans now."""
    variants = {"lora": ["method=lora", "method.lora_dropout=5e-2", "method.target_modules=[query,value]"]}
    spec = tiny_table_spec(tiny_model_dir, keyword_data, variants, ["trainer.max_steps=8"])
    run = grid.expand("t", [0], tmp_path, spec=spec)[0]
    run.output_dir.mkdir(parents=True)
    (run.output_dir / "results.json").write_text("{}")
    saved = compose(run.train_args())
    (run.output_dir / "config.yaml").write_text(OmegaConf.to_yaml(saved))
    assert grid.stale_settings(run) == []  # what it ran is what is planned: 5e-2 planned is 0.05 saved
    assert grid.stale_runs_error([run]) is None
    saved.trainer.max_steps, saved.trainer.seed = 6, 1
    saved.task.data_dir = "/elsewhere"  # a location may differ between machines: not a setting
    (run.output_dir / "config.yaml").write_text(OmegaConf.to_yaml(saved))
    assert grid.stale_settings(run) == ["trainer.max_steps: 6 there, 8 planned", "trainer.seed: 1 there, 0 planned"]
    monkeypatch.setattr(grid, "load_spec", lambda: spec)
    assert grid.main(["t", "--runs", str(tmp_path), "--dry-run"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("goat-grid: 1 finished runs were trained with other settings") and "\n" not in error
    assert "trainer.max_steps: 6 there, 8 planned" in error and "new --runs folder" in error
    assert json.loads((run.output_dir / "results.json").read_text()) == {}  # nothing touched
