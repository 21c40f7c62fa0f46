"""Bad input gets one clear error before any weights are loaded (and, for config mistakes, before any data is
read), through goat-train itself: exit code 2, one line on stderr naming what is wrong and how to fix it."""

import json
import re
import shutil
from pathlib import Path

import pytest

import goat.models
import goat.tasks
import goat.train
from goat.cli import train_main
from goat.tasks.base import Task
from tests.conftest import tiny_run_overrides


class Loaded(Exception):
    """Raised by the patched loaders: a check let the run get that far."""


@pytest.fixture()
def guarded(monkeypatch):
    """Any weight load fails the test; `guarded(data=True)` also forbids reading the task's data."""

    def forbid(what):
        def loader(*args, **kwargs):
            raise Loaded(f"{what} loaded before the error")

        return loader

    monkeypatch.setattr(goat.train, "load_model", forbid("model weights"))  # the name train() calls

    def guard(data: bool):
        if data:
            monkeypatch.setattr(goat.train, "load_task", forbid("task data"))

    return guard


def bad_run(capsys, overrides) -> str:
    """goat-train's exit code must be 2 and its stderr one line; returns that line."""
    code = train_main(overrides)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("goat-train:")]
    assert len(lines) == 1, err
    return lines[0]


# (extra overrides, a regular expression the message must match); none of these may read data.
CONFIG_CASES = {
    "unknown task": (["task=glue/colaa"], r"task=glue/colaa is not a config of group 'task'; options: .*glue/cola"),
    "unknown method": (["method=gaot"], r"method=gaot is not a config .*options: .*goat"),
    "unknown model": (["model=bert"], r"model=bert is not a config .*minilm"),
    "typo in a key": (["trainer.lrr=1"], r"unknown key 'trainer.lrr'; valid keys of trainer: .*\blr\b"),
    "typo in a group": (["trainerr.lr=1"], r"unknown key 'trainerr'; valid top-level keys"),
    "not key=value": (["trainer.lr"], r"'trainer.lr' is not an override: write key=value"),
    "wrong type float": (["trainer.lr=fast"], r"trainer.lr: Value 'fast' .* give a value of type float"),
    "wrong type int": (["method.num_experts=two"], r"method.num_experts: Value 'two' .* type integer"),
    "rank not divisible": (["method.r=36"], r"r=36 is not divisible by num_experts=8"),
    "top_k > experts": (["method.top_k=9"], r"top_k must be between 1 and num_experts=8, got 9"),
    "rank > layer dim": (["method.r=64"], r"rank r=64 exceeds min\(in, out\) = 32 of layer"),
    "target matches nothing": (["method.target_modules=[nomatch]"], r"\['nomatch'\] matched no nn.Linear .*query"),
    "head not a module": (["method.modules_to_save=[nohead]"], r"modules_to_save \['nohead'\] are not modules"),
    "dropout out of range": (["method.lora_dropout=1.5"], r"method.lora_dropout=1.5 must be a probability in \[0, 1\)"),
    "unknown scaling": (["method.scaling=foo"], r"scaling must be one of"),
    "unknown scheduler": (["trainer.scheduler=foo"], r"trainer.scheduler='foo' is unknown; valid: cosine"),
    "unknown logger": (["logger.backend=foo"], r"logger.backend='foo' is unknown; valid: wandb, none"),
    "unknown dtype": (["model.dtype=float8"], r"model.dtype='float8' is unknown; valid: float32"),
    "unknown model kind": (["model.kind=foo"], r"model.kind='foo' is unknown; valid: sequence_classification"),
    "negative lr": (["trainer.lr=-1"], r"trainer.lr=-1.0 must be a finite number > 0"),
    "batch not a multiple": (["trainer.batch_size=20"], r"batch_size=20 must be a multiple of .* 8 x 1"),
    "unknown decoding": (["task.decoding=beam"], r"task.decoding='beam' is unknown"),
    "greedy pass@k": (["task.num_samples=5"], r"num_samples=5: use 1, or more with task.decoding=sample"),
    "held-out rows unsupported": (
        ["task.loader=math", "task.heldout_size=10"],
        r"task.heldout_size=10: task.loader=math cannot hold out training rows; use 0, or a loader that can: "
        r"commonsense, glue, packaged, text_files",
    ),
    "commonsense held-out rows without sets": (
        ["task.loader=commonsense", "task.scoring=loglik", "task.heldout_size=10"],
        r"task.heldout_size=10 reads each training row as a question of a known set: name them with task.train_sets=",
    ),
    "train sets of another loader": (
        ["task.train_sets=[boolq]"],
        r"task.train_sets and task.train_format=choice are settings of the commonsense loader, not of "
        r"task.loader=text_files",
    ),
    "missing resume path": (["resume=/no/such/checkpoint"], r"resume='/no/such/checkpoint': expected never, auto"),
    "model offline": (
        ["model.name_or_path=FacebookAI/roberta-large"],
        r"'FacebookAI/roberta-large' is neither a local directory nor",
    ),
}


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_config_mistake_fails_before_data_or_weights(
    case, guarded, capsys, monkeypatch, tiny_model_dir, keyword_data, tmp_path
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    guarded(data=True)
    extra, pattern = CONFIG_CASES[case]
    out = tmp_path / "run"
    line = bad_run(capsys, tiny_run_overrides(tiny_model_dir, keyword_data, out, *extra))
    assert re.search(pattern, line), line
    assert not out.exists()  # nothing written for a run that cannot start


def test_unwritable_output_dir_fails_before_loading(guarded, capsys, tiny_model_dir, keyword_data, tmp_path):
    guarded(data=True)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    line = bad_run(capsys, tiny_run_overrides(tiny_model_dir, keyword_data, blocker / "run"))
    assert f"{blocker} is a file, not a folder" in line
    if Path("/proc/self").is_dir():  # a folder that nobody, not even root, can create files in
        line = bad_run(capsys, tiny_run_overrides(tiny_model_dir, keyword_data, "/proc/goat-run"))
        assert "output_dir=/proc/goat-run cannot be written" in line


def test_data_offline_fails_before_weights(guarded, capsys, monkeypatch, tiny_model_dir, tmp_path):
    """A hub dataset without network: one sentence naming task.data_dir, no weights loaded."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "empty-cache"))
    guarded(data=False)
    overrides = tiny_run_overrides(tiny_model_dir, None, tmp_path / "run")
    overrides = [o for o in overrides if not o.startswith(("task=", "task.data_dir"))] + ["task=glue/cola"]
    line = bad_run(capsys, overrides)
    assert "task.data_dir" in line and "cola" in line.lower(), line


GOOD_ROW = {"text": "alpha beta", "label": 1}
DATA_CASES = {
    "empty file": ("", r"train.jsonl holds no rows"),
    "bad JSON": (json.dumps(GOOD_ROW) + '\n{"text": "beta",\n', r"train.jsonl:2: not valid JSON"),
    "missing label": (json.dumps({"text": "beta"}) + "\n", r"train.jsonl:1: each line needs the keys 'text' and"),
    "not an object": ("[1, 2]\n", r"train.jsonl:1: each line needs the keys"),
    "string label": (json.dumps({"text": "beta", "label": "yes"}) + "\n", r":1: label 'yes' must be a class id"),
    "negative label": (json.dumps({"text": "beta", "label": -1}) + "\n", r":1: label -1 must be a class id"),
    "float label": (json.dumps({"text": "beta", "label": 0.5}) + "\n", r":1: label 0.5 must be a class id"),
    "text not a string": (json.dumps({"text": 3, "label": 0}) + "\n", r":1: text must be a string, got int"),
}


@pytest.mark.parametrize("case", list(DATA_CASES))
def test_malformed_data_file_fails_before_weights(case, guarded, capsys, tiny_model_dir, keyword_data, tmp_path):
    guarded(data=False)
    text, pattern = DATA_CASES[case]
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text(text)
    shutil.copy(keyword_data / "validation.jsonl", data)
    line = bad_run(capsys, tiny_run_overrides(tiny_model_dir, data, tmp_path / "run"))
    assert re.search(pattern, line), line
    assert str(data / "train.jsonl") in line


def test_missing_data_file_and_empty_subset(guarded, capsys, tiny_model_dir, keyword_data, tmp_path):
    guarded(data=False)
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(keyword_data / "train.jsonl", data)
    line = bad_run(capsys, tiny_run_overrides(tiny_model_dir, data, tmp_path / "run"))
    assert "lacks validation.jsonl: task.data_dir must hold train.jsonl and validation.jsonl" in line
    line = bad_run(
        capsys, tiny_run_overrides(tiny_model_dir, keyword_data, tmp_path / "run", "task.max_train_samples=0")
    )
    assert "task.max_train_samples=0 must be an integer >= 1" in line


def test_resume_from_another_model_or_a_finished_run_fails_and_keeps_it(capsys, tiny_model_dir, keyword_data, tmp_path):
    out = tmp_path / "run"
    assert (
        train_main(
            tiny_run_overrides(tiny_model_dir, keyword_data, out, "trainer.max_steps=4", "trainer.save_every_steps=2")
        )
        == 0
    )
    capsys.readouterr()
    results = (out / "results.json").read_bytes()
    other_model = tmp_path / "other-model"
    shutil.copytree(tiny_model_dir, other_model)

    line = bad_run(capsys, tiny_run_overrides(tiny_model_dir, keyword_data, out, "trainer.max_steps=4"))
    assert "already holds a finished run (results.json)" in line
    shutil.move(out / "results.json", tmp_path / "results.json")  # now an unfinished run with checkpoints
    changed = tiny_run_overrides(other_model, keyword_data, out, "trainer.max_steps=8", "resume=auto")
    line = bad_run(capsys, changed)
    assert f"model.name_or_path: '{tiny_model_dir}' -> '{other_model}'" in line
    assert (tmp_path / "results.json").read_bytes() == results
    assert (out / "checkpoints").is_dir() and (out / "final").is_dir()


@pytest.fixture()
def finished_with_checkpoints(tiny_model_dir, keyword_data, tmp_path):
    """Two finished tiny runs, A with checkpoints at steps 2 and 4."""
    from goat.cli import compose
    from goat.train import train

    runs = {}
    for name in ("a", "b"):
        out = tmp_path / name
        extra = ("trainer.max_steps=4", "trainer.save_every_steps=2", "trainer.keep_last=3")
        train(compose(tiny_run_overrides(tiny_model_dir, keyword_data, out, *extra)))
        runs[name] = out
    return runs


def files_of(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_explicit_resume_never_writes_over_a_finished_run(
    finished_with_checkpoints, capsys, tiny_model_dir, keyword_data
):
    a, b = finished_with_checkpoints["a"], finished_with_checkpoints["b"]
    step2 = a / "checkpoints" / "step-00000002"
    before = {a: files_of(a), b: files_of(b)}
    # its own folder, another finished run, and with overwrite=true the folder that holds the checkpoint
    for out, extra in ((a, ()), (b, ()), (a, ("overwrite=true",))):
        overrides = tiny_run_overrides(tiny_model_dir, keyword_data, out, f"resume={step2}", *extra)
        line = bad_run(capsys, [*overrides, "trainer.max_steps=4"])
        assert f"{out} already holds a finished run" in line and "never writes over one" in line, line
    assert files_of(a) == before[a] and files_of(b) == before[b]


def test_resume_from_a_folder_that_is_not_a_checkpoint_is_one_line(capsys, tiny_model_dir, keyword_data, tmp_path):
    folder = tmp_path / "not-a-checkpoint"
    folder.mkdir()
    out = tmp_path / "run"
    line = bad_run(capsys, tiny_run_overrides(tiny_model_dir, keyword_data, out, f"resume={folder}"))
    assert f"resume={folder} is not an intact goat checkpoint" in line and "has no manifest" in line.lower(), line
    assert not out.exists()


TEST_RECORD = {"instruction": "Is it? true or false", "input": "", "output": "true", "answer": "true"}
TRAIN_RECORD = {"instruction": "Is it? true or false", "input": "", "output": "the correct answer is true"}
INSTRUCTION_CASES = {  # (training file text, test file text, what the line must say)
    "empty training set": ("[]", None, r"the training set of commonsense/boolq is empty .*commonsense_170k.json"),
    "bad JSON list": ('[{"instruction": "a",', None, r"commonsense_170k.json:1: not valid JSON"),
    "bad JSONL line": (json.dumps(TRAIN_RECORD) + '\n{"x": \n', None, r"commonsense_170k.json:2: not valid JSON"),
    "record not an object": ("[1]", None, r"commonsense_170k.json: record 1 is a JSON int, not an object"),
    "missing field": (json.dumps([TRAIN_RECORD, {"instruction": "a"}]), None, r"record 2 lacks the field output"),
    "test set lacks answers": (
        json.dumps([TRAIN_RECORD]),
        json.dumps([{"instruction": "q"}]),
        r"boolq/test.json \(task.data_dir\): record 1 lacks the field answer \(it has instruction\)",
    ),
    "not UTF-8": (b"\xff\xfe\x00[", None, r"commonsense_170k.json is not UTF-8 text"),
}


@pytest.mark.parametrize("case", list(INSTRUCTION_CASES))
def test_instruction_data_mistakes_are_one_line_naming_the_file(case, guarded, capsys, tiny_model_dir, tmp_path):
    """Commonsense files in the LLM-Adapters layout, broken one way each; nothing written, no weights loaded."""
    guarded(data=False)
    train_text, test_text, pattern = INSTRUCTION_CASES[case]
    data = tmp_path / "data"
    (data / "boolq").mkdir(parents=True)
    train_file = data / "commonsense_170k.json"
    train_file.write_bytes(train_text) if isinstance(train_text, bytes) else train_file.write_text(train_text)
    (data / "boolq" / "test.json").write_text(test_text or json.dumps([TEST_RECORD]))
    out = tmp_path / "run"
    overrides = [o for o in tiny_run_overrides(tiny_model_dir, data, out) if not o.startswith("task=")]
    causal = ["model.kind=causal_lm", "model.dtype=float32", "method.target_modules=[query,value]"]
    line = bad_run(capsys, ["task=commonsense/boolq", *overrides, *causal])
    assert re.search(pattern, line), line
    assert not out.exists()


def test_a_model_folder_without_config_is_one_line(capsys, keyword_data, tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    line = bad_run(capsys, tiny_run_overrides(folder, keyword_data, tmp_path / "run"))
    assert f"{folder} holds no config.json" in line
    (folder / "config.json").write_text("{")
    assert "cannot be loaded" in bad_run(capsys, tiny_run_overrides(folder, keyword_data, tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_an_unexpected_error_is_one_line_and_a_log_file(monkeypatch, capsys, tmp_path):
    def broken(cfg, callbacks=()):
        raise RuntimeError("something goat did not foresee\nmore detail")

    monkeypatch.setattr(goat.train, "train", broken)
    assert train_main([f"output_dir={tmp_path / 'run'}"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unexpected error: RuntimeError: something goat did not foresee" in err
    log = Path(re.search(r"the traceback is in (\S+);", err).group(1))
    assert "Traceback" in log.read_text() and "more detail" in log.read_text()
    with pytest.raises(RuntimeError):  # --debug: the traceback itself
        train_main([f"output_dir={tmp_path / 'run'}", "--debug"])


class UntrainableTask:
    """A task type that is not a goat.tasks.base.Task: nothing says how to train or score it."""


class BareTask(Task):
    """A Task that never defined its pipeline."""


def load_untrainable(cfg, seed: int):
    return UntrainableTask()


def load_bare(cfg, seed: int):
    return BareTask()


@pytest.mark.parametrize("loader", ["untrainable", "bare"])
def test_a_task_type_without_a_pipeline_is_one_line_before_weights(
    loader, guarded, capsys, monkeypatch, tiny_model_dir, keyword_data, tmp_path
):
    """A new task type is never trained and scored as text classification by default (issue 19)."""
    guarded(data=False)
    monkeypatch.setitem(goat.tasks.LOADERS, loader, f"{__name__}:load_{loader}")
    out = tmp_path / "run"
    line = bad_run(capsys, tiny_run_overrides(tiny_model_dir, keyword_data, out, f"task.loader={loader}"))
    assert f"task.loader={loader} gave a" in line and "task type without a pipeline" in line, line


def test_bf16_autocast_on_a_cpu_is_warned_about_and_names_the_cpu_trainer():
    advice = goat.train.precision_advice("cpu", "bf16")
    assert "trainer.mixed_precision=bf16 on a CPU" in advice and "trainer=cpu" in advice
    assert goat.train.precision_advice("cpu", "no") is None and goat.train.precision_advice("cuda", "bf16") is None
