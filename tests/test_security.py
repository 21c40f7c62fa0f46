"""Untrusted input never runs as code: checkpoint code (trust_remote_code), pickled weights, config values."""

import ast
import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from goat.cli import compose, train_main
from goat.grid import Run
from goat.models import ModelUnavailableError, load_config, load_model
from tests.conftest import tiny_run_overrides

GOAT = Path(__file__).resolve().parents[1] / "goat"

CUSTOM_CODE = """
from pathlib import Path
Path({marker!r}).write_text("the checkpoint's code ran")
from transformers import BertConfig
class GoatCustomConfig(BertConfig):
    model_type = "goat-custom"
"""


@pytest.fixture()
def model_with_code(tiny_model_dir, tmp_path):
    """A model folder whose config.json points at its own Python file, which leaves a marker when imported."""
    folder = tmp_path / "model-with-code"
    shutil.copytree(tiny_model_dir, folder)
    marker = tmp_path / "marker"
    (folder / "custom.py").write_text(CUSTOM_CODE.format(marker=str(marker)))
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="goat-custom", auto_map={"AutoConfig": "custom.GoatCustomConfig"})
    (folder / "config.json").write_text(json.dumps(config))
    return folder, marker


def test_checkpoint_code_never_runs_unless_the_config_allows_it(model_with_code, keyword_data, tmp_path, capsys):
    folder, marker = model_with_code
    code = train_main(tiny_run_overrides(folder, keyword_data, tmp_path / "run"))
    err = capsys.readouterr().err
    assert code == 2
    assert "ships its own Python code" in err and "model.trust_remote_code=true" in err
    assert not marker.exists()

    cfg = compose(tiny_run_overrides(folder, keyword_data, tmp_path / "run", "model.trust_remote_code=true"))
    assert type(load_config(cfg.model)).__name__ == "GoatCustomConfig"
    assert marker.exists()  # turned on, the checkpoint's code is what builds the config


class Payload:
    """Unpickling this runs code: what a malicious pytorch_model.bin would do."""

    marker = ""

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "pickle ran"))


def _bin_model(tiny_model_dir, folder: Path, state: dict) -> Path:
    shutil.copytree(tiny_model_dir, folder)
    torch.save(state, folder / "pytorch_model.bin")
    return folder


def test_pickled_weights_are_refused_by_default_and_never_unpickled(tiny_model_dir, keyword_data, tmp_path):
    from transformers import AutoConfig, AutoModelForSequenceClassification

    honest = AutoModelForSequenceClassification.from_config(AutoConfig.from_pretrained(tiny_model_dir)).state_dict()
    folder = _bin_model(tiny_model_dir, tmp_path / "bin-model", honest)
    cfg = compose(tiny_run_overrides(folder, keyword_data, tmp_path / "run", "model.from_config=false"))
    with pytest.raises(ModelUnavailableError, match="no .safetensors weights.*model.safetensors_only=false"):
        load_model(cfg.model, 2)
    cfg.model.safetensors_only = False
    model, _ = load_model(cfg.model, 2)  # an honest .bin loads when allowed
    assert torch.equal(
        model.state_dict()["bert.embeddings.word_embeddings.weight"], honest["bert.embeddings.word_embeddings.weight"]
    )

    marker = tmp_path / "pickle-marker"
    Payload.marker = str(marker)
    with open(tmp_path / "probe.pkl", "wb") as handle:  # the payload does run under plain pickle
        pickle.dump(Payload(), handle)
    evil = _bin_model(tiny_model_dir, tmp_path / "evil-model", {"weights": Payload()})
    cfg.model.name_or_path = str(evil)
    with pytest.raises(Exception, match="(?i)weights_only|unpickl|unsupported"):
        load_model(cfg.model, 2)
    assert not marker.exists()  # read with weights_only=True: the payload never ran
    pickle.loads((tmp_path / "probe.pkl").read_bytes())
    assert marker.exists()  # ... and the test's payload is real


def test_nothing_in_goat_runs_a_shell():
    """No shell=True, os.system or os.popen anywhere in the package; every subprocess gets an argument list."""
    for path in GOAT.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = ast.unparse(node.func)
            assert name not in ("os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput"), path
            for keyword in node.keywords:
                assert not (keyword.arg == "shell" and ast.unparse(keyword.value) != "False"), f"{path}: {name}"
            if name.startswith("subprocess.") and node.args:
                assert not isinstance(node.args[0], ast.Constant), f"{path}: {name} with a command string"


def test_config_values_reach_goat_train_as_single_arguments(tmp_path):
    hostile = "trainer.lr=1e-4; touch pwned $(reboot) `id` | cat"
    run = Run("glue/cola", "lora", 0, (hostile,), tmp_path / "run")
    for gpus in (1, 2):
        command = run.command(gpus)
        assert hostile in command and isinstance(command, list)
