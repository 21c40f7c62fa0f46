"""benchmarks/model_speed.py end to end on the CPU (--tiny): each method's training and decoding rows, the outputs."""

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "model_speed.py"
METHODS = ["lora", "goat", "molora", "hydralora", "adamole", "goat-official"]
EAGER_ONLY = {"goat-official"}

# A stand-in with the official layer's constructor and contract (base + routed LoRA, `layer_loss` kept after each
# forward), written for this test: it checks the benchmark's import-and-wrap plumbing, not the official code.
STAND_IN_LAYER = '''
from torch import nn


class LinearGOATLayer(nn.Module):
    def __init__(self, base_layer, adapter_name, lora_rank=0, lora_alpha=1, lora_dropout=0.0, init_lora_weights=True,
                 num_experts=8, top_k=2, init_type=None, init_cof=1.0):
        super().__init__()
        self.base_layer = base_layer
        self.lora_A = nn.Linear(base_layer.in_features, lora_rank, bias=False)
        self.lora_B = nn.Linear(lora_rank, base_layer.out_features, bias=False)
        self.lora_gating = nn.Linear(base_layer.in_features, num_experts, bias=False)
        self.layer_loss = None

    def forward(self, x):
        self.layer_loss = self.lora_gating(x).softmax(-1).mean(0).pow(2).sum()
        return self.base_layer(x) + self.lora_B(self.lora_A(x))
'''


def load_script():
    if "model_speed" not in sys.modules:  # registered before it runs: its dataclasses look their module up
        spec = importlib.util.spec_from_file_location("model_speed", SCRIPT)
        sys.modules["model_speed"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules["model_speed"])
    return sys.modules["model_speed"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One --tiny run of the script in a fresh process: (results json, markdown, stdout, output folder)."""
    tmp = tmp_path_factory.mktemp("model_speed")
    layer = tmp / "layer.py"
    layer.write_text(STAND_IN_LAYER)
    out = tmp / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--out", str(out), "--methods", ",".join(METHODS),
         "--official-layer", str(layer), "--profile"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "model_speed.json").read_text()), (out / "model_speed.md").read_text(), done.stdout, out


def finite_positive(value) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


def test_every_method_has_a_finite_training_row_with_consistent_tokens_per_second(tiny_run):
    results, *_ = tiny_run
    rows = {r["method"]: r for r in results["train"]}
    assert sorted(rows) == sorted(METHODS) and len(results["train"]) == len(METHODS)  # --tiny: eager, one shape
    for method, row in rows.items():
        assert (row["mode"], row["shape"]) == ("eager", "2x16"), method
        assert finite_positive(row["step_ms"]) and finite_positive(row["tokens_per_s"]), row
        assert row["tokens_per_s"] == pytest.approx(2 * 16 / (row["step_ms"] / 1e3)), method
        assert row["peak_gib"] is None and row["syncs"] is None  # CUDA only
        assert row["trainable"] > 0 and row["init_s"] >= 0, row
    # the stand-in wraps the same 14 projections with goat's shapes: r x n + m x r + E x n each
    assert rows["goat-official"]["trainable"] == rows["goat"]["trainable"]
    assert results["skipped"] == []


def test_every_method_has_decoding_rows_and_only_eager_only_methods_lack_the_fast_path(tiny_run):
    results, *_ = tiny_run
    rows = {r["method"]: r for r in results["decode"]}
    assert sorted(rows) == sorted(METHODS)
    for method, row in rows.items():
        assert row["batch"] == 2 and row["fast_compiled"] is False, row
        assert finite_positive(row["eager"]["ms_per_token"]), row
        assert len(row["eager"]["seconds_n"]) == 3 and len(row["eager"]["seconds_1"]) == 3
        if method in EAGER_ONLY:
            assert row["fast"] == {}, method
        else:
            assert finite_positive(row["fast"]["ms_per_token"]), row
            assert len(row["fast"]["warmups_s"]) >= 2


def test_markdown_has_both_tables_with_a_line_per_method(tiny_run):
    results, markdown, stdout, _ = tiny_run
    training, decoding = markdown.split("### Greedy decoding")
    assert "### Training step, micro-batch 2x16" in training
    for method in METHODS:
        assert f"| {method} | eager |" in training, method
        assert f"| {method} | 2 |" in decoding, method
    assert "| lora | eager | " in training and "| 1.00 | 1.00 |" in training  # lora against itself
    assert results["env"]["device"] == "cpu" and results["env"]["torch"]
    assert markdown in stdout  # the tables are printed as they are written


def test_profile_counts_each_rows_operations_and_writes_its_busiest(tiny_run):
    results, *_, out = tiny_run
    calls = {r["method"]: r["kernels"] for r in results["train"]}
    assert all(isinstance(n, int) and n > 0 for n in calls.values()), calls
    assert calls["goat"] > calls["lora"]  # routing adds operations to every adapted layer
    profiles = (out / "profiles.txt").read_text()
    assert profiles.count("## ") == len(METHODS)
    assert f"## goat eager 2x16: {calls['goat']} operator calls" in profiles


def test_missing_official_layer_gives_a_row_that_says_why(tmp_path):
    script = load_script()
    args = script.parse_args(["--tiny", "--out", str(tmp_path), "--official-layer", str(tmp_path / "absent.py")])
    run = script.Run(args, script.torch.device("cpu"), {"train": [], "decode": [], "skipped": []})
    adapted = script.adapt(run, "goat-official")
    assert adapted.model is None and "absent.py is not a file" in adapted.note


def test_unknown_method_is_refused_with_the_choices(tmp_path, capsys):
    script = load_script()
    with pytest.raises(SystemExit):
        script.parse_args(["--out", str(tmp_path), "--methods", "lora,gaot"])
    err = capsys.readouterr().err
    assert "unknown methods ['gaot']" in err and "hydralora" in err


def test_decode_paths_out_of_their_domain_are_refused(tmp_path, capsys):
    script = load_script()
    for bad in ("", "fast,compiled"):
        with pytest.raises(SystemExit):
            script.parse_args(["--out", str(tmp_path), "--decode-paths", bad])
        assert "--decode-paths takes eager and/or fast" in capsys.readouterr().err


def test_decode_paths_fast_times_only_the_fast_path(tmp_path):
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--out", str(out), "--methods", "lora,goat", "--shapes", "",
         "--decode-paths", "fast"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads((out / "model_speed.json").read_text())["decode"]
    assert [row["method"] for row in rows] == ["lora", "goat"]
    for row in rows:
        assert row["eager"] == {} and finite_positive(row["fast"]["ms_per_token"]), row


def test_a_decoding_run_names_a_method_skipped_for_time_by_its_decoding(tmp_path):
    """With --shapes '' a method's eager pass is only its decoding: the skip list must not say "eager"."""
    script = load_script()
    for shapes, skipped in (("", "goat decoding"), ("2x16", "goat eager")):
        args = script.parse_args(["--tiny", "--out", str(tmp_path), "--shapes", shapes, "--budget", "0"])
        run = script.Run(args, script.torch.device("cpu"), {"train": [], "decode": [], "skipped": []})
        script.run_method(run, "goat")
        assert run.results == {"train": [], "decode": [], "skipped": [skipped]}


def test_out_of_memory_at_one_shape_is_a_row_and_the_next_shape_still_runs(tmp_path, monkeypatch):
    """The official layer runs out of memory at 16x512 on an H200: the run writes that and goes on."""
    script = load_script()
    args = script.parse_args(["--tiny", "--out", str(tmp_path), "--shapes", "4x8,2x8", "--steps", "1"])
    env = {"device": "cpu", "torch": "", "transformers": "", "peft": "", "cuda": None, "date": "", "argv": []}
    results = {"env": env, "layers": 2, "settings": {}, "train": [], "decode": [], "skipped": []}
    run = script.Run(args, script.torch.device("cpu"), results)
    adapted = script.adapt(run, "lora")
    real_step = script.train_step

    def step(run, adapted, batch, optimizer):
        if batch["input_ids"].shape[0] == 4:
            raise script.torch.OutOfMemoryError("CUDA out of memory (simulated)")
        real_step(run, adapted, batch, optimizer)

    monkeypatch.setattr(script, "train_step", step)
    script.measure_training(run, "lora", "eager", adapted)
    first, second = run.results["train"]
    assert first == {"method": "lora", "mode": "eager", "note": "out of memory at 4x8 (n/a GiB allocated at the peak)"}
    assert second["shape"] == "2x8" and finite_positive(second["step_ms"])
    assert "lora: out of memory at 4x8" in (tmp_path / "model_speed.md").read_text()
