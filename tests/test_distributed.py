"""Data-parallel training on real processes: torchrun on the CPU (gloo), the same code path as DDP on GPUs.

With the same global batch and dropout off, 2 processes must train exactly what 1 process trains (the
all-reduce mean of 2 micro-batch gradients equals their accumulated mean), with no unused-parameter error
for the routed experts, the SVD initialisation split over the processes, and evaluation sharded and gathered.
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from goat.compose import CONFIG_DIR
from tests.conftest import tiny_run_overrides
from tests.test_instruction_e2e import data_and_model  # noqa: F401 - a fixture

ROOT = Path(__file__).resolve().parents[1]
ACCELERATE_CONFIGS = sorted((CONFIG_DIR / "accelerate").glob("*.yaml"))
# Dropout off: each process draws its own masks, so with dropout the runs agree only up to noise.
NO_DROPOUT = [
    "+model.config_overrides.hidden_dropout_prob=0.0",
    "+model.config_overrides.attention_probs_dropout_prob=0.0",
    "method.lora_dropout=0.0",
]


def launch(processes: int, overrides: list[str], home: Path, extra_env=None, ok=True) -> subprocess.CompletedProcess:
    """goat-train in 1 process, or in `processes` processes through torchrun (CPU, gloo); `home` holds its
    own SVD cache, so that each run decomposes for itself."""
    if processes == 1:
        command = [sys.executable, "-m", "goat.cli", *overrides]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes)]
        command += ["--standalone", "-m", "goat.cli", *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "HOME": str(home), **(extra_env or {})}
    child = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = child.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)  # torchrun and its workers: nothing left behind
        stdout, stderr = child.communicate()
        pytest.fail(f"timed out: {stderr[-3000:]}")
    assert (child.returncode == 0) == ok, stderr[-3000:]
    return subprocess.CompletedProcess(command, child.returncode, stdout, stderr)


def losses(run_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [row["train/loss"] for row in rows if "train/loss" in row]


def run_pair(method: str, tiny_model_dir, keyword_data, tmp_path, *extra):
    outs = {}
    for processes in (1, 2):
        out = tmp_path / f"{method}-{processes}"
        overrides = tiny_run_overrides(tiny_model_dir, keyword_data, out, f"method={method}", *NO_DROPOUT, *extra)
        steps = ["trainer.max_steps=12", "trainer.log_every_steps=1"]
        outs[processes] = (out, launch(processes, [*overrides, *steps], tmp_path / f"home-{processes}"))
    return outs


@pytest.mark.parametrize("method", ["goat", "lora"])
def test_two_processes_train_exactly_what_one_process_trains(method, tiny_model_dir, keyword_data, tmp_path):
    outs = run_pair(method, tiny_model_dir, keyword_data, tmp_path)
    (one, _), (two, log) = outs[1], outs[2]
    assert losses(two) == pytest.approx(losses(one), abs=1e-6) and len(losses(one)) == 12
    want, got = (
        load_file(str(one / "final" / "adapter_model.safetensors")),
        load_file(str(two / "final" / "adapter_model.safetensors")),
    )
    assert want.keys() == got.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=1e-6)
    first, second = (json.loads((d / "results.json").read_text()) for d in (one, two))
    assert second["final"] == pytest.approx(first["final"])  # the sharded, gathered evaluation: same scores
    assert log.stdout.count("majority-class baseline") == 1  # the results table is printed once, not once per process
    if method == "goat":  # the 13 SVDs of the tiny model, split 7 + 6 over the two processes
        shares = sorted(
            int(line.split("SVD init: ")[1].split()[0]) for line in log.stderr.splitlines() if "SVD" in line
        )
        assert shares == [6, 7], log.stderr[-2000:]


@pytest.mark.slow  # a minute on 2 cores: make test-slow
def test_compiled_blocks_under_ddp_train_what_one_compiled_process_trains(tiny_model_dir, keyword_data, tmp_path):
    """trainer.compile (aot_eager on the CPU: the traced graphs with eager kernels) under DDP's gradient hooks."""
    compiled = ["trainer.compile=default", "trainer.compile_backend=aot_eager", "trainer.pad_to_multiple_of=8"]
    outs = run_pair("goat", tiny_model_dir, keyword_data, tmp_path, *compiled)
    assert losses(outs[2][0]) == pytest.approx(losses(outs[1][0]), abs=1e-6) and len(losses(outs[1][0])) == 12
    compiles = [json.loads(line) for line in (outs[2][0] / "metrics.jsonl").read_text().splitlines()]
    assert any(row.get("compile/graphs", 0) >= 1 for row in compiles)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["molora", "adamole", "hydralora", "full_ft_moe", "dora", "pissa"])
def test_every_routed_and_peft_method_runs_under_ddp_without_unused_parameters(
    method, tiny_model_dir, keyword_data, tmp_path
):
    outs = run_pair(method, tiny_model_dir, keyword_data, tmp_path)
    assert losses(outs[2][0]) == pytest.approx(losses(outs[1][0]), abs=1e-5)


def launch_env(path: Path):
    """accelerate's own launch validation of a shipped config: (parsed args, the environment it would set)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import prepare_deepspeed_cmd_env, prepare_multi_gpu_env, prepare_simple_launcher_cmd_env

    args = launch_command_parser().parse_args(["--config_file", str(path), "-m", "goat.cli", "task=glue/cola"])
    args, defaults, _ = _validate_launch_command(args)
    if args.use_deepspeed:
        args.deepspeed_fields_from_accelerate_config = list(defaults.deepspeed_config)
        return args, prepare_deepspeed_cmd_env(args)[1]
    if args.multi_gpu or args.use_fsdp:
        return args, prepare_multi_gpu_env(args)
    command, env = prepare_simple_launcher_cmd_env(args)
    assert command[-3:] == ["-m", "goat.cli", "task=glue/cola"]
    return args, env


@pytest.mark.parametrize("path", ACCELERATE_CONFIGS, ids=lambda p: p.name)
def test_accelerate_configs_parse_and_build_a_launch(path):
    args, env = launch_env(path)
    assert args.mixed_precision == "bf16" and env["ACCELERATE_MIXED_PRECISION"] == "bf16"
    assert args.num_processes == (1 if path.name == "single_gpu.yaml" else 2)
    if path.name.startswith("zero"):
        assert env["ACCELERATE_USE_DEEPSPEED"] == "true"
        assert env["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == path.stem[-1]
        assert env["ACCELERATE_DEEPSPEED_ZERO3_INIT"] == "false"  # whole weights for the SVD initialisation
    if path.name == "fsdp.yaml":
        assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_VERSION"] == "2"
        assert env["FSDP_CPU_RAM_EFFICIENT_LOADING"] == "false"  # whole weights for the SVD initialisation


def test_shipped_accelerate_configs():
    assert {p.name for p in ACCELERATE_CONFIGS} == {
        "single_gpu.yaml",
        "ddp.yaml",
        "zero2.yaml",
        "zero3.yaml",
        "fsdp.yaml",
    }


def test_processes_without_a_data_parallel_engine_are_refused(tiny_model_dir, keyword_data, tmp_path):
    """torchrun without trainer=cpu on a machine without GPUs: each process would train alone, unsynchronised."""
    out = tmp_path / "run"
    overrides = tiny_run_overrides(tiny_model_dir, keyword_data, out, "trainer.cpu=false")
    done = launch(2, overrides, tmp_path / "home", ok=False)
    assert "2 processes were launched, and Accelerate sees 1" in done.stderr
    assert not (out / "results.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_zero_trains_what_one_process_trains_and_resumes_exactly(
    stage, tiny_model_dir, keyword_data, tmp_path
):
    """ZeRO-2/3 from the shipped config, on 2 CPU processes (DeepSpeed over gloo): the same loss curve and
    adapter as one plain process, and a resume from a mid-run checkpoint (each process's optimizer part)
    finishes on the uninterrupted run's adapter."""
    pytest.importorskip("deepspeed")
    _, env = launch_env(CONFIG_DIR / "accelerate" / f"zero{stage}.yaml")
    env = {k: v for k, v in env.items() if k.startswith("ACCELERATE")} | {"ACCELERATE_MIXED_PRECISION": "no"}
    common = [*NO_DROPOUT, "trainer.max_steps=12", "trainer.log_every_steps=1", "trainer.save_every_steps=6"]
    plain = tmp_path / "plain"
    launch(1, tiny_run_overrides(tiny_model_dir, keyword_data, plain, *common), tmp_path / "home-plain")
    zero = tmp_path / "zero"
    overrides = tiny_run_overrides(tiny_model_dir, keyword_data, zero, *common, "trainer.cpu=false")
    launch(2, overrides, tmp_path / "home-zero", env)
    tolerance = 1e-6 if stage == 2 else 1e-5  # ZeRO-3 reduces in another order
    assert losses(zero) == pytest.approx(losses(plain), abs=tolerance)
    adapters = {d: load_file(str(d / "final" / "adapter_model.safetensors")) for d in (plain, zero)}
    for key, value in adapters[plain].items():
        torch.testing.assert_close(adapters[zero][key], value, rtol=0, atol=tolerance)
    checkpoint = zero / "checkpoints" / "step-00000006"
    assert len(list((checkpoint / "engine").rglob("*optim_states.pt"))) == 2  # one part per process
    resumed = tmp_path / "resumed"
    overrides = tiny_run_overrides(tiny_model_dir, keyword_data, resumed, *common, "trainer.cpu=false")
    launch(2, [*overrides, f"resume={checkpoint}"], tmp_path / "home-zero", env)
    final = load_file(str(resumed / "final" / "adapter_model.safetensors"))
    for key, value in adapters[zero].items():
        torch.testing.assert_close(final[key], value, rtol=0, atol=0)


def fsdp_env() -> dict:
    _, env = launch_env(CONFIG_DIR / "accelerate" / "fsdp.yaml")
    keep = {k: v for k, v in env.items() if k.startswith(("ACCELERATE", "FSDP"))}
    return keep | {"ACCELERATE_MIXED_PRECISION": "no"}


@pytest.mark.parametrize("method", ["goat", pytest.param("lora", marks=pytest.mark.slow)])
def test_fsdp_trains_what_one_process_trains_and_resumes_exactly(method, tiny_model_dir, keyword_data, tmp_path):
    """FSDP2 from the shipped config, on 2 CPU processes (gloo): the same loss curve and adapter as one plain
    process; the checkpoint holds the whole trainable weights and optimizer state, and a resume from it
    finishes on the uninterrupted run's adapter."""
    common = [*NO_DROPOUT, f"method={method}", "trainer.max_steps=12", "trainer.log_every_steps=1"]
    common.append("trainer.save_every_steps=6")
    plain = tmp_path / "plain"
    launch(1, tiny_run_overrides(tiny_model_dir, keyword_data, plain, *common), tmp_path / "home-plain")
    sharded = tmp_path / "fsdp"
    log = launch(
        2, tiny_run_overrides(tiny_model_dir, keyword_data, sharded, *common), tmp_path / "home-fsdp", fsdp_env()
    )
    assert losses(sharded) == pytest.approx(losses(plain), abs=1e-5) and len(losses(plain)) == 12
    adapters = {d: load_file(str(d / "final" / "adapter_model.safetensors")) for d in (plain, sharded)}
    assert adapters[sharded].keys() == adapters[plain].keys()
    for key, value in adapters[plain].items():
        torch.testing.assert_close(adapters[sharded][key], value, rtol=0, atol=1e-5)
    first, second = (json.loads((d / "results.json").read_text()) for d in (plain, sharded))
    assert second["final"] == pytest.approx(first["final"], abs=1e-4)
    assert log.stdout.count("majority-class baseline") == 1
    checkpoint = sharded / "checkpoints" / "step-00000006"
    state = torch.load(checkpoint / "state.pt", weights_only=True)
    saved = load_file(str(checkpoint / "trainable.safetensors"))
    assert set(state["optimizer"]["state"]) == set(saved)  # whole, keyed by parameter name
    resumed = tmp_path / "resumed"
    overrides = tiny_run_overrides(tiny_model_dir, keyword_data, resumed, *common, f"resume={checkpoint}")
    launch(2, overrides, tmp_path / "home-fsdp", fsdp_env())
    final = load_file(str(resumed / "final" / "adapter_model.safetensors"))
    for key, value in adapters[sharded].items():
        torch.testing.assert_close(final[key], value, rtol=0, atol=0)


def test_fsdp_version_1_is_refused_before_training(tiny_model_dir, keyword_data, tmp_path):
    out = tmp_path / "run"
    done = launch(
        2,
        tiny_run_overrides(tiny_model_dir, keyword_data, out),
        tmp_path / "home",
        fsdp_env() | {"FSDP_VERSION": "1"},
        ok=False,
    )
    assert "FSDP version 1 is not supported: set fsdp_version: 2" in done.stderr
    assert not (out / "checkpoints").exists()


def test_fsdp_generation_keeps_uneven_shards_in_step(data_and_model, tmp_path):  # noqa: F811 - the fixture
    """Generation under FSDP: 5 test prompts over 2 processes, one per batch, is 3 generate() calls on one
    process and 2 on the other; every forward pass gathers weights from both, so the short shard is padded
    (or the run would hang). The gathered completions equal one plain process's."""
    root, model_dir, _ = data_and_model
    overrides = [
        "task=commonsense/boolq",
        f"task.data_dir={root}",
        "task.train_file=mix.json",
        "task.max_length=96",
        "task.max_new_tokens=6",
        "task.max_eval_samples=5",
        f"model.name_or_path={model_dir}",
        "model.from_config=true",
        "model.dtype=float32",
        "method=goat",
        "method.r=16",
        "method.lora_alpha=32",
        "method.lora_dropout=0.0",
        "method.target_modules=null",
        "trainer=cpu",
        "trainer.max_steps=2",
        "trainer.batch_size=8",
        "trainer.micro_batch_size=4",
        "trainer.eval_batch_size=1",
        "trainer.progress=false",
        "logger=none",
    ]
    outs = {1: tmp_path / "plain", 2: tmp_path / "fsdp"}
    for processes, out in outs.items():
        env = fsdp_env() if processes == 2 else None
        launch(processes, [*overrides, f"output_dir={out}"], tmp_path / f"home-{processes}", env)
    rows = {
        n: [
            json.loads(line)
            for line in (out / "generations" / "step-00000002" / "boolq.jsonl").read_text().splitlines()
        ]
        for n, out in outs.items()
    }
    assert [r["index"] for r in rows[2]] == [0, 1, 2, 3, 4]
    assert [r["completion"] for r in rows[2]] == [r["completion"] for r in rows[1]]
