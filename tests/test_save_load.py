"""Adapter-only checkpoints: save -> load onto a fresh base model gives identical outputs (issue 2, test 6)."""

import copy
import json

import pytest
import torch
from conftest import tiny_bert
from peft import PeftModel
from safetensors.torch import load_file

from goat.adapters import METHODS, apply_adapter, load_adapter, method_config, save_adapter


def trained_copy(proto, method):
    """A copy of `proto` adapted with `method` and moved by two optimiser steps, so nothing is at its init."""
    model = apply_adapter(copy.deepcopy(proto), method_config(method, r=8, svd_cache_dir=None))
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.randint(0, 100, (4, 7))
    model.train()
    for _ in range(2):
        model(input_ids=ids, labels=torch.tensor([0, 1, 2, 1])).loss.backward()
        optimiser.step()
        optimiser.zero_grad()
    return model.eval()


@pytest.mark.parametrize("method", sorted(METHODS))
def test_save_then_load_on_fresh_base_reproduces_outputs(method, tmp_path):
    proto = tiny_bert()
    model = trained_copy(proto, method)
    save_adapter(model, tmp_path)
    assert (tmp_path / "adapter_config.json").exists() and (tmp_path / "adapter_model.safetensors").exists()
    loaded = load_adapter(copy.deepcopy(proto), tmp_path).eval()
    ids = torch.randint(0, 100, (3, 9))
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[2, 6:] = 0
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask).logits
        got = loaded(input_ids=ids, attention_mask=mask).logits
    if method in ("pissa", "milora"):
        # saved as a rank-2r LoRA on the original W0 (PEFT's conversion): W0 + s[B, B0][A; -A0] equals
        # (W0 - s B0 A0) + s B A up to float32 rounding
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    else:
        assert torch.equal(got, want)


@pytest.mark.parametrize("method", ["lora", "rslora", "dora", "pissa"])
def test_peft_methods_load_with_peft_itself(method, tmp_path):
    proto = tiny_bert()
    model = trained_copy(proto, method)
    save_adapter(model, tmp_path)
    loaded = PeftModel.from_pretrained(copy.deepcopy(proto), str(tmp_path)).eval()
    ids = torch.randint(0, 100, (2, 5))
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits, rtol=1e-5, atol=1e-6)


def test_goat_checkpoint_stores_low_rank_residual_not_base_weights(tmp_path):
    proto = tiny_bert()
    model = trained_copy(proto, "goat")
    save_adapter(model, tmp_path)
    tensors = load_file(str(tmp_path / "adapter_model.safetensors"))
    assert not any(name.endswith("base_layer.weight") for name in tensors)
    residual_A = tensors["bert.encoder.layer.0.attention.self.query.residual_A"]
    residual_B = tensors["bert.encoder.layer.0.attention.self.query.residual_B"]
    assert residual_A.shape == (8, 32) and residual_B.shape == (32, 8)  # (r, n) and (m, r)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["adapter"]["method"] == "goat" and config["heads"] == ["classifier"]
    adapter_bytes = sum(t.numel() * t.element_size() for t in tensors.values())
    base_bytes = sum(p.numel() * p.element_size() for p in proto.parameters())
    assert adapter_bytes < 0.6 * base_bytes


def test_load_rejects_a_checkpoint_for_another_model(tmp_path):
    model = trained_copy(tiny_bert(), "goat")
    save_adapter(model, tmp_path)
    from transformers import BertConfig, BertForSequenceClassification

    other = BertForSequenceClassification(
        BertConfig(
            vocab_size=100,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            num_labels=3,
        )
    )
    with pytest.raises(ValueError, match="saved for another model"):
        load_adapter(other, tmp_path)
