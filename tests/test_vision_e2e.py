"""CLIP ViT image classification: the reference's transforms and head, and a run on a tiny CLIP vision tower."""

import random
import re

import numpy as np
import pytest
import torch
from conftest import train_and_losses

from goat.tasks import vision

Image = pytest.importorskip("PIL.Image")


def test_transforms_give_the_crop_size_and_clip_normalisation():
    image = Image.new("RGB", (300, 200), (255, 0, 128))
    for seed in range(5):
        assert vision.random_resized_crop(image, 224, random.Random(seed)).size == (224, 224)
    assert vision.center_crop(vision.resize_shorter(image, 224), 224).size == (224, 224)
    assert vision.resize_shorter(image, 224).size == (336, 224)  # the shorter side to 224, aspect kept
    tensor = vision.to_tensor(vision.center_crop(vision.resize_shorter(image, 224), 224))
    expected = (np.array([1.0, 0.0, 128 / 255], dtype=np.float32) - vision.CLIP_MEAN) / vision.CLIP_STD
    assert tensor.shape == (3, 224, 224)
    torch.testing.assert_close(tensor[:, 100, 100], torch.from_numpy(expected), rtol=0, atol=1e-5)


def test_held_out_split_is_ten_percent_capped_and_fixed():
    train, validation = vision.held_out_split(list(range(1000)))
    assert len(validation) == 100 and sorted(train + validation) == list(range(1000))
    assert vision.held_out_split(list(range(1000)))[1] == validation  # seed 0, as the reference
    assert len(vision.held_out_split(list(range(60000)))[1]) == 5000


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """Two classes told apart by colour, with noise: train/ and test/ in the imagefolder layout."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for split, count in (("train", 60), ("test", 20)):
        for label, colour in enumerate(((200, 40, 40), (40, 40, 200))):
            folder = root / split / f"class{label}"
            folder.mkdir(parents=True)
            for i in range(count // 2):
                pixels = np.clip(np.array(colour) + rng.normal(0, 40, (40, 48, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from transformers import CLIPVisionConfig

    root = tmp_path_factory.mktemp("tiny_clip")
    CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8
    ).save_pretrained(root)
    return root


def vit_run(image_folder, model_dir, out, *extra) -> tuple[dict, list[float]]:
    """A CPU run of vit/eurosat on the synthetic images at 32 px (micro-batches of 16, lr 5e-3); (results, losses)."""
    return train_and_losses(
        [
            "task=vit/eurosat",
            f"task.data_dir={image_folder}",
            "task.image_size=32",
            f"model.name_or_path={model_dir}",
            "model.from_config=true",
            "trainer=cpu",
            "trainer.batch_size=16",
            "trainer.micro_batch_size=16",
            "trainer.eval_batch_size=32",
            "trainer.lr=5e-3",
            "trainer.warmup_steps=0",
            "trainer.log_every_steps=2",
            "trainer.progress=false",
            "logger=none",
            f"output_dir={out}",
            *extra,
        ]
    )


def test_vit_run_learns_with_the_patch_mean_head(image_folder, tiny_clip, tmp_path):
    results, losses = vit_run(image_folder, tiny_clip, tmp_path / "run", "trainer.epochs=5")
    assert losses[-1] < 0.5 * losses[0], losses
    assert results["main_metric"] == "test/accuracy" and results["final"]["test/accuracy"] >= 90
    assert {"test/accuracy", "validation/accuracy"} <= set(results["final"])
    assert results["trainable_parameters"] < 20_000  # adapters + router + the 2-class head, tower frozen


@pytest.fixture(scope="module")
def tiny_full_clip(tmp_path_factory):
    """A tiny CLIP (text and vision towers) and a word-level tokenizer that ends every text with </s>."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import CLIPConfig, PreTrainedTokenizerFast

    root = tmp_path_factory.mktemp("tiny_full_clip")
    words = "a photo of the bad large small cropped close - up itap class0 class1 .".split()
    vocab = {token: i for i, token in enumerate(["<pad>", "<unk>", "<s>", "</s>", *words])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 2), ("</s>", 3)])
    PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    ).save_pretrained(root)
    text = {
        "vocab_size": len(vocab),
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 32,
        "eos_token_id": 3,
        "bos_token_id": 2,
        "pad_token_id": 0,
    }
    vision = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "image_size": 32,
        "patch_size": 8,
    }
    CLIPConfig(text_config=text, vision_config=vision, projection_dim=16).save_pretrained(root)
    return root


def test_zero_shot_head_equals_clip_logits_and_stays_frozen(tiny_full_clip):
    from transformers import AutoTokenizer, CLIPConfig, CLIPModel

    from goat.models import CLIPZeroShotClassifier, class_embeddings

    torch.manual_seed(0)
    clip = CLIPModel(CLIPConfig.from_pretrained(tiny_full_clip)).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_full_clip)
    head = CLIPZeroShotClassifier(
        clip, class_embeddings(clip, tokenizer, ["class0", "class1"], templates=("a photo of a {}.",))
    )
    pixels = torch.randn(3, 3, 32, 32)
    texts = tokenizer(["a photo of a class0.", "a photo of a class1."], padding=True, return_tensors="pt")
    want = clip(pixel_values=pixels, **texts).logits_per_image  # (3 images, 2 classes)
    torch.testing.assert_close(head(pixel_values=pixels).logits, want, rtol=1e-5, atol=1e-5)

    from goat.adapters import apply_adapter, method_config

    adapted = apply_adapter(head, method_config("goat", r=8, svd_cache_dir=None))
    trainable = [name for name, p in adapted.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)  # adapters (and routers) only: the head is frozen


def test_vit_run_with_the_zero_shot_head(image_folder, tiny_full_clip, tmp_path):
    out = tmp_path / "run"
    results, losses = vit_run(image_folder, tiny_full_clip, out, "model.image_head=zero_shot", "trainer.epochs=3")
    assert losses[-1] < 0.7 * losses[0], losses  # the adapters learn to map images onto the frozen class texts
    assert results["final"]["test/accuracy"] >= 80 and (out / "final" / "adapter_model.safetensors").exists()


@pytest.mark.parametrize(
    "layout,message",
    [
        ({"train/class0": 2}, r"has no test split; it must hold train/<class>/\*.jpg and test/<class>/\*.jpg"),
        ({"train": 2, "test": 2}, r"has no class labels \(no class subfolders\)"),
    ],
    ids=["no test split", "no class folders"],
)
def test_a_broken_image_folder_is_one_line_before_the_run_folder(layout, message, tiny_clip, tmp_path, capsys):
    from goat.cli import train_main

    root = tmp_path / "images"
    for folder, count in layout.items():
        (root / folder).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(root / folder / f"{i}.png")
    out = tmp_path / "run"
    overrides = ["task=vit/eurosat", f"task.data_dir={root}", f"model.name_or_path={tiny_clip}", "trainer=cpu"]
    assert train_main([*overrides, "model.from_config=true", "logger=none", f"output_dir={out}"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("goat-train:")]  # no progress bars
    assert len(err) == 1 and re.search(message, err[0]) and f"{root} (task.data_dir)" in err[0], err
    assert not out.exists()
