"""method.dropout_kernel=auto: which dropout kernel a routed layer gets, written down as it ran (config.yaml and the
saved adapter say torch or triton, never auto), and adapters trained with the Triton kernels load without triton."""

import json

import pytest
import torch
from conftest import tiny_bert

import goat.adapters.registry as registry
from goat.adapters import apply_adapter, load_adapter, method_config, save_adapter
from goat.adapters.io import CONFIG_NAME
from goat.adapters.registry import dropout_kernel_for


@pytest.mark.parametrize(
    "method,overrides,device,want",
    [
        ("goat", {}, "cuda", "triton"),  # the measured case: per-expert masks on a GPU
        ("molora", {}, "cuda", "triton"),
        ("goat", {}, "cpu", "torch"),  # the kernels run on CUDA only
        ("goat", {"lora_dropout": 0.0}, "cuda", "torch"),  # no dropout: nothing to fuse
        ("goat", {"dropout_mode": "shared"}, "cuda", "torch"),  # one mask per token: not measured
        ("hydralora", {}, "cuda", "torch"),  # shared A, dense routing: not measured
        ("adamole", {}, "cuda", "triton"),  # one mask per token, the threshold from the kernels: measured
        ("lora", {}, "cuda", "torch"),  # PEFT's own dropout
        ("goat", {"dropout_kernel": "torch"}, "cuda", "torch"),  # an explicit choice stays
        ("goat", {"dropout_kernel": "triton"}, "cpu", "triton"),
    ],
)
def test_auto_takes_the_fused_kernels_only_where_measured_faster(monkeypatch, method, overrides, device, want):
    monkeypatch.setattr(registry, "fused_kernels_importable", lambda: True)
    assert dropout_kernel_for(method_config(method, **overrides), device) == want


def test_auto_without_triton_is_torch_on_a_gpu_too(monkeypatch):
    monkeypatch.setattr(registry, "fused_kernels_importable", lambda: False)
    assert dropout_kernel_for(method_config("goat"), "cuda") == "torch"


def test_apply_adapter_writes_the_chosen_kernel_and_the_layers_use_it(monkeypatch):
    model = apply_adapter(tiny_bert(), method_config("goat", r=8, svd_cache_dir=None))
    assert model.goat_adapter.config.dropout_kernel == "torch"  # parameters on the CPU
    layers = [m for m in model.modules() if hasattr(m, "dropout_kernel")]
    assert layers and {m.dropout_kernel for m in layers} == {"torch"}
    monkeypatch.setattr(registry, "fused_kernels_importable", lambda: True)
    planned = apply_adapter(tiny_bert(), method_config("goat", r=8, svd_cache_dir=None), device_type="cuda")
    assert planned.goat_adapter.config.dropout_kernel == "triton"  # where it will train, not where it is now
    assert {m.dropout_kernel for m in planned.modules() if hasattr(m, "dropout_kernel")} == {"triton"}


def test_an_adapter_trained_with_the_triton_kernels_loads_and_predicts_without_them(tmp_path):
    torch.manual_seed(0)
    trained = apply_adapter(tiny_bert(), method_config("goat", r=8, svd_cache_dir=None)).eval()
    with torch.no_grad():
        for layer in (m for m in trained.modules() if hasattr(m, "dropout_kernel")):
            layer.lora_B.normal_()
    save_adapter(trained, tmp_path)
    config_path = tmp_path / CONFIG_NAME
    saved = json.loads(config_path.read_text())
    saved["adapter"]["dropout_kernel"] = "triton"  # as a GPU run writes it
    config_path.write_text(json.dumps(saved))
    torch.manual_seed(0)
    loaded = load_adapter(tiny_bert(), tmp_path).eval()
    assert loaded.goat_adapter.config.dropout_kernel == "torch"
    ids = torch.randint(0, 100, (2, 6))
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, trained(input_ids=ids).logits)
