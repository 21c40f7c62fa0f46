"""goat-report: our results beside the paper's, seeds aggregated, missing runs blank (never zero), figures as PNG."""

import json
import statistics

import pytest

from goat.cli import report_main
from goat.report import csv_text, markdown, table_cells
from goat.tables import load_spec


def write_run(root, task, variant, seed, final, status="finished", main="validation/accuracy", **extra):
    run = root / task / variant / f"seed{seed}"
    run.mkdir(parents=True)
    results = {"status": status, "task": task, "method": variant.split("_")[0], "variant": variant, "seed": seed}
    results.update(main_metric=main, final={"step": 10, **final}, model="tiny", **extra)
    (run / "results.json").write_text(json.dumps(results))
    return run


def row_of(text, name):
    return next(line for line in text.splitlines() if line.startswith(f"| {name} |"))


@pytest.fixture(scope="module")
def spec():
    return load_spec()


def test_every_paper_average_matches_its_row(spec):
    """The transcription check: each row's numbers average to the paper's Avg column (rounding: 0.01)."""
    checked = 0
    for name, table in spec["tables"].items():
        for row, values in table["rows"].items():
            assert row in spec["variants"] or row in table.get("not_run", []), (name, row)
            if values:
                assert len(values) == len(table["columns"]), (name, row)
            given = (table.get("paper_average") or {}).get(row)
            if values and given is not None and None not in values:
                assert abs(sum(values) / len(values) - given) <= 0.0101, (name, row)
                checked += 1
    assert checked == 12 + 11 + 11 + 2  # tables 1, 3, 4 and 8


def test_table4_aggregates_seeds_and_leaves_missing_runs_blank(tmp_path, spec):
    runs = tmp_path / "runs"
    write_run(runs, "glue/cola", "goat", 0, {"validation/accuracy": 86.0})
    write_run(runs, "glue/cola", "goat", 1, {"validation/accuracy": 88.0})
    write_run(runs, "glue/mnli", "goat", 0, {"validation_matched/accuracy": 89.0}, main="validation_matched/accuracy")
    write_run(runs, "glue/rte", "lora", 0, {"validation/accuracy": 80.0}, status="interrupted")  # not counted
    text = markdown(spec, runs, "table4")
    goat = row_of(text, "goat")
    assert "87.00 ± 1.41 (n=2) / 86.86 (+0.14)" in goat and "89.00 / 89.55 (-0.55)" in goat
    assert goat.endswith("| 0,1 |")  # the seeds that ran
    assert "— / 89.76 |" in goat  # average blank: 5 of 7 tasks have no run
    lora = row_of(text, "lora")
    assert lora.count("— / ") == 8  # no finished lora run: every cell and the average blank, never zero
    assert "Models of our runs: tiny" in text
    rows = csv_text(spec, runs, "table4").splitlines()
    assert rows[0] == "method,column,ours_mean,ours_std,n,seeds,paper,diff"
    assert "goat,CoLA,87.0,1.4142,2,0 1,86.86,0.14" in rows
    assert "lora,RTE,,,0,,84.47," in rows


def test_complete_row_gets_an_average_and_table8_averages_other_tables(tmp_path, spec):
    runs = tmp_path / "runs"
    for column, value in zip(spec["tables"]["table1"]["columns"], [50, 70, 98, 97, 93, 52, 96], strict=True):
        write_run(runs, column["task"], "goat_s", 0, {"test/accuracy": float(value)}, main="test/accuracy")
    cells = table_cells(spec, runs, "table8")
    ic = cells["goat_s"][2]
    assert ic.values == [pytest.approx(79.42857, abs=1e-4)] and ic.paper == 81.54
    assert cells["goat_s"][0].values == [] and cells["goat"][2].values == []  # NLG runs missing; goat not run
    text = markdown(spec, runs, "table1")
    assert "Avg" in text.splitlines()[4]
    # table1's goat_s is not a row of table1: the runs only count in table 8
    assert "goat_s" not in text


def test_per_column_variants_and_top_level_keys(tmp_path, spec):
    """Table 6's learning-rate columns read <row>_lr...; Table 7 reads peak memory from results.json itself."""
    runs = tmp_path / "runs"
    write_run(runs, "math/metamathqa", "goat_lr1e-5", 0, {"gsm8k/accuracy": 30.0}, peak_memory_gb=12.5)
    write_run(runs, "math/metamathqa", "goat", 0, {"gsm8k/accuracy": 31.0}, peak_memory_gb=12.0, epoch_hours=0.5)
    assert [c.values for c in table_cells(spec, runs, "table6")["goat"]] == [[30.0], [31.0], []]
    assert [c.values for c in table_cells(spec, runs, "table7")["goat"]] == [[12.0], [0.5], [31.0]]
    assert "full_ft_moe (not run)" in markdown(spec, runs, "table7")


def is_png(path):
    data = path.read_bytes()
    return data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000


def test_report_writes_tables_and_figures_as_png(tmp_path, spec):
    import matplotlib.image

    runs = tmp_path / "runs"
    for variant, slope in (("goat", 0.9), ("lora", 0.95)):
        run = write_run(runs / "small", "glue/sst2", variant, 0, {"validation/accuracy": 80.0})
        load = [[0.3, 0.1, 0.2, 0.4] for _ in range(3)]
        lines = [{"step": s, "train/loss": slope**s, **({"load/l0": load[0], "load/l1": load[1]})} for s in range(1, 9)]
        (run / "metrics.jsonl").write_text("\n".join(json.dumps(line) for line in lines))
    out = tmp_path / "reports"
    assert report_main(["--runs", str(runs), "--out", str(out), "--table", "small", "--table", "small_loss"]) == 0
    assert report_main(["--runs", str(runs), "--out", str(out), "--table", "small_load", "--table", "fig5"]) == 0
    small = (out / "small.md").read_text()
    assert row_of(small, "goat") == "| goat | — | 80.00 | — | — | — | 0 |"  # no paper numbers: ours only
    for name in ("small_loss", "small_load"):
        png = out / "figures" / f"{name}.png"
        assert is_png(png)
        assert matplotlib.image.imread(png).shape[2] in (3, 4)
    assert not (out / "figures" / "fig5.png").exists()  # no runs: no figure, rather than an empty one
    assert report_main(["--runs", str(runs), "--table", "table99"]) == 2


def test_rank_scaling_figure_from_table_averages(tmp_path, spec):
    from goat.figures import render_figure

    runs = tmp_path / "runs"
    for variant, value in (("goat", 80.0), ("goat_r16", 82.0), ("goat_r32", 83.0)):
        for column in spec["tables"]["table1"]["columns"]:
            write_run(runs, column["task"], variant, 0, {"test/accuracy": value}, main="test/accuracy")
    assert is_png(render_figure(spec, runs, "fig5", tmp_path / "fig5.png"))


def test_swept_table_picks_each_cells_best_rate_over_the_seeds_every_rate_has(tmp_path, spec):
    """small_sweep: a cell is the rate with the best mean over common seeds; blank until every rate has a run;
    every rate is listed below, the chosen one in bold; the CSV names the choice; the sweep figure is drawn."""
    root = tmp_path / "runs"
    runs = root / "small_sweep"
    lora = {"6e-5": [70.0, 72.0], "2e-4": [75.0, 77.0], "6e-4": [80.0, 60.0], "2e-3": [69.0, 69.0]}
    for rate, values in lora.items():
        for seed, value in enumerate(values):
            write_run(runs, "glue/cola", f"lora_lr{rate}", seed, {"validation/accuracy": value})
            write_run(runs, "glue/mrpc", f"lora_lr{rate}", seed, {"validation/accuracy": value + 5})
    write_run(runs, "glue/cola", "lora_lr6e-4", 2, {"validation/accuracy": 99.0})  # a third seed at one rate only
    for rate in ("6e-5", "2e-4", "6e-4"):  # goat lacks 2e-3: its cells stay blank
        write_run(runs, "glue/cola", f"goat_lr{rate}", 0, {"validation/accuracy": 90.0})
    text = markdown(spec, root, "small_sweep")
    # 6e-4 would win with its lucky seed 2 (79.7); over the common seeds 0-1 it is 70.0 and 2e-4 wins (76.0)
    assert "Models of our runs: tiny" in text
    best = "| lora | 76.00 ± 1.41 (n=2) @ lr2e-4 | 81.00 ± 1.41 (n=2) @ lr2e-4 | 78.50 |"
    assert row_of(text, "lora").startswith(best)
    assert row_of(text, "goat").startswith("| goat | — | — | — |")
    cola_rates = text[text.index("### CoLA at each trainer.lr") :]
    lora_rates = row_of(cola_rates, "lora")
    assert "| **76.00 ± 1.41 (n=2)** |" in lora_rates and "79.67 ± 19.50 (n=3)" in lora_rates
    assert row_of(cola_rates, "full_ft") == "| full_ft | — | — | — | — | — |  |  |"  # its own, lower rates
    table = csv_text(spec, root, "small_sweep").splitlines()
    # these runs held out no training rows: chosen on the dev set they report, and labelled so
    assert row_of(text, "lora").endswith("| reported split (oracle) | 0,1 |")
    assert table[0].endswith(",chosen,chosen_on,heldout_mean")
    assert "lora,CoLA,76.0,1.4142,2,0 1,,,lr2e-4,reported split (oracle)," in table
    assert "lora,CoLA lr6e-4,79.6667,19.5021,3,0 1 2,,,,," in table
    figure = report_main(["--runs", str(root), "--out", str(tmp_path / "out"), "--table", "small_sweep_lr"])
    assert figure == 0 and is_png(tmp_path / "out" / "figures" / "small_sweep_lr.png")


# A swept table of 2 methods x 3 rates x 2 seeds: (dev accuracy, held-out accuracy) per seed. The rate best on the
# held-out rows differs from the one best on the dev set for both methods.
SWEPT = {
    "lora": {
        "1e-4": [(70.0, 60.0), (72.0, 62.0)],
        "1e-3": [(80.0, 65.0), (78.0, 65.0)],
        "1e-2": [(75.0, 70.0), (77.0, 72.0)],
    },
    "goat": {
        "1e-4": [(66.0, 80.0), (68.0, 82.0)],
        "1e-3": [(74.0, 70.0), (74.0, 70.0)],
        "1e-2": [(60.0, 50.0), (62.0, 50.0)],
    },
}


def swept_spec(heldout: int = 50) -> dict:
    sweep = {"key": "trainer.lr", "suffix": "lr", "values": ["1e-4", "1e-3", "1e-2"], "heldout": heldout}
    table = {"title": "T", "runs": "t", "metric": "accuracy", "sweep": sweep, "rows": dict.fromkeys(SWEPT)}
    table["columns"] = [{"name": "CoLA", "task": "glue/cola"}]
    return {"variants": {row: [f"method={row}"] for row in SWEPT}, "tables": {"t": table}}


def write_swept_runs(root, heldout: int | None = 50) -> None:
    """results.json as goat-train writes it: MCC is CoLA's main metric, the table reads accuracy."""
    for row, rates in SWEPT.items():
        for rate, seeds in rates.items():
            for seed, (dev, held) in enumerate(seeds):
                final = {"validation/accuracy": dev, "validation/matthews_correlation": dev / 2}
                block = None
                if heldout:
                    final |= {"heldout/accuracy": held, "heldout/matthews_correlation": held / 2}
                    block = {"split": "heldout", "rows": heldout, "drawn_from": "train", "seed": 2}
                write_run(
                    root / "t",
                    "glue/cola",
                    f"{row}_lr{rate}",
                    seed,
                    final,
                    main="validation/matthews_correlation",
                    heldout=block,
                )


def reference_choice(rates: dict, by: int) -> tuple[str, list[float]]:
    """A plain loop: the rate whose mean of `by` (0 dev, 1 held-out) over the seeds is best, and its dev scores."""
    best = max(rates, key=lambda rate: statistics.mean(pair[by] for pair in rates[rate]))
    return best, [dev for dev, _ in rates[best]]


def test_swept_table_chooses_on_heldout_rows_reports_dev_there_and_labels_the_oracle(tmp_path):
    spec = swept_spec()
    write_swept_runs(tmp_path)
    text = markdown(spec, tmp_path, "t")
    header = next(line for line in text.splitlines() if line.startswith("| method |"))
    assert header == "| method | CoLA | CoLA (oracle) | chosen on | seeds |"
    assert "Chosen on: per method and column, the trainer.lr whose mean over the seeds" in text
    assert "best on 50 training rows held out" in text and "The oracle columns choose on the reported split" in text
    for row, rates in SWEPT.items():
        chosen, dev = reference_choice(rates, by=1)
        oracle, oracle_dev = reference_choice(rates, by=0)
        assert chosen != oracle  # the data are built so that the two choices differ
        mean, std = statistics.mean(dev), statistics.stdev(dev)
        ours = f"{mean:.2f} ± {std:.2f} (n=2) @ lr{chosen}"
        best = f"{statistics.mean(oracle_dev):.2f} ± {statistics.stdev(oracle_dev):.2f} (n=2) @ lr{oracle}"
        assert row_of(text, row) == f"| {row} | {ours} | {best} | 50 held-out train rows, seed 2 | 0,1 |"
    assert row_of(text, "lora").startswith("| lora | 76.00 ± 1.41 (n=2) @ lr1e-2 | 79.00 ± 1.41 (n=2) @ lr1e-3 |")
    assert row_of(text, "goat").startswith("| goat | 67.00 ± 1.41 (n=2) @ lr1e-4 | 74.00 ± 0.00 (n=2) @ lr1e-3 |")
    held = text[text.index("### CoLA at each trainer.lr: held-out training rows (these choose)") :]
    assert row_of(held, "lora") == "| lora | 61.00 ± 1.41 (n=2) | 65.00 ± 0.00 (n=2) | **71.00 ± 1.41 (n=2)** |"
    dev = text[text.index("### CoLA at each trainer.lr (reported split)") :]
    assert row_of(dev, "lora") == "| lora | 71.00 ± 1.41 (n=2) | 79.00 ± 1.41 (n=2) | **76.00 ± 1.41 (n=2)** |"
    table = csv_text(spec, tmp_path, "t").splitlines()
    assert 'lora,CoLA,76.0,1.4142,2,0 1,,,lr1e-2,"50 held-out train rows, seed 2",71.0' in table
    assert "lora,CoLA oracle,79.0,1.4142,2,0 1,,,lr1e-3,reported split (oracle),65.0" in table
    assert "goat,CoLA lr1e-3,74.0,0.0,2,0 1,,,,,70.0" in table


def test_swept_runs_without_heldout_rows_are_labelled_oracle_and_mixed_runs_refused(tmp_path):
    spec = swept_spec()
    write_swept_runs(tmp_path, heldout=None)  # runs from before task.heldout_size: the dev choice, labelled
    text = markdown(spec, tmp_path, "t")
    assert row_of(text, "lora") == (
        "| lora | 79.00 ± 1.41 (n=2) @ lr1e-3 | 79.00 ± 1.41 (n=2) @ lr1e-3 | reported split (oracle) | 0,1 |"
    )
    assert "held-out training rows (these choose)" not in text
    assert "Chosen on: the reported split itself (oracle) in every cell" in text
    write_run(
        tmp_path / "t",
        "glue/cola",
        "lora_lr1e-3",
        2,
        {"validation/accuracy": 80.0, "heldout/accuracy": 1.0},
        heldout={"split": "heldout", "rows": 50, "drawn_from": "train", "seed": 2},
    )
    with pytest.raises(ValueError, match="lora held out different training rows .50 held-out train rows, seed 2; none"):
        markdown(spec, tmp_path, "t")
    spec["tables"]["t"]["sweep"].pop("heldout")  # a sweep that does not say what chooses is refused
    with pytest.raises(ValueError, match="sweep.heldout must be a count of training rows"):
        markdown(spec, tmp_path, "t")


def test_a_run_on_random_weights_is_refused_with_its_path(tmp_path, spec, capsys):
    """model.from_config=true runs (speed runs of a 7B-shaped model, tiny tests) never enter a results table."""
    runs = tmp_path / "runs"
    write_run(runs, "glue/cola", "goat", 0, {"validation/accuracy": 86.0})
    bad = write_run(runs, "glue/cola", "lora", 0, {"validation/accuracy": 99.0}, random_weights=True)
    with pytest.raises(ValueError, match="random weights"):
        markdown(spec, runs, "table4")
    assert report_main(["--runs", str(runs), "--out", str(tmp_path / "out"), "--table", "table4"]) == 2
    message = capsys.readouterr().err
    assert message.startswith("goat-report:") and str(bad / "results.json") in message


def test_a_swept_table_tests_its_rows_over_seeds_with_welch(tmp_path):
    """significance with test: seeds: each row against the baseline and the named pairs, Welch's t-test over the
    seeds at each row's chosen rate (a group of columns: each seed's mean over them), and the winner line."""
    from scipy import stats as scipy_stats

    spec = swept_spec()
    table = spec["tables"]["t"]
    table["columns"].append({"name": "MRPC", "task": "glue/mrpc"})
    groups = {"CoLA": ["CoLA"], "Both": ["CoLA", "MRPC"]}
    table["significance"] = {"baseline": "lora", "test": "seeds", "groups": groups, "pairs": [["goat", "lora"]]}
    write_swept_runs(tmp_path)
    for row, rates in SWEPT.items():  # MRPC: 5 points above CoLA at every rate and seed, the same held-out scores
        for rate, seeds in rates.items():
            for seed, (dev, held) in enumerate(seeds):
                block = {"split": "heldout", "rows": 50, "drawn_from": "train", "seed": 2}
                final = {"validation/accuracy": dev + 5, "heldout/accuracy": held}
                write_run(tmp_path / "t", "glue/mrpc", f"{row}_lr{rate}", seed, final, heldout=block)
    text = markdown(spec, tmp_path, "t")
    goat, lora = [66.0, 68.0], [75.0, 77.0]  # each at its rate chosen on the held-out rows (lr1e-4, lr1e-2)
    want = scipy_stats.ttest_ind(goat, lora, equal_var=False)
    low, high = want.confidence_interval(0.95)
    cell = f"{-9:+.2f} [{low:+.2f}, {high:+.2f}] | {want.pvalue:.3g}"
    section = text[text.index("### Is it noise? Every row against lora, Welch's t-test over seeds") :]
    assert row_of(section, "goat") == f"| goat | {cell} | {cell} |"  # the group mean moves both rows by 2.5
    assert "| lora |" not in section.split("### Is it noise? Chosen pairs")[0]
    pairs = text[text.index("### Is it noise? Chosen pairs, Welch's t-test over seeds") :]
    assert f"| goat − lora | {cell} | {cell} |" in pairs and "With 1 pairs per group" in pairs
    winner = next(line for line in text.splitlines() if line.startswith("- **Both**"))
    assert winner == (
        f"- **Both** (CoLA, MRPC; 2 and 2 seeds): **lora** wins with 78.50, ahead of goat (69.50) by +9.00 points "
        f"[95% CI {-high:+.2f}, {-low:+.2f}], p = {want.pvalue:.3g}: "
        + ("the Welch test tells it from noise (p < 0.05)." if want.pvalue < 0.05 else
           "within noise: the Welch test cannot tell them apart (p >= 0.05).")
    )  # fmt: skip
    table["significance"]["test"] = "bootstrap"
    with pytest.raises(ValueError, match="significance test 'bootstrap' is not one of questions, seeds"):
        markdown(spec, tmp_path, "t")
