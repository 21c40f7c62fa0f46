"""The run's schema: structured configs (dataclasses) that Hydra validates every override against.

`goat/configs/` holds the YAML defaults per group (task, method, model, trainer, logger); this file holds their
types. A key that is not here, or a value of the wrong type, fails at once with the valid keys listed.
The method section's schema is AdapterConfig itself, with its defaults; goat/configs/method/<name>.yaml changes a
few per method, and `resolve_method` writes out the derived numbers, so a composed config shows what runs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import OmegaConf

from goat.adapters.config import AUTO, MODEL_RESOLVED, AdapterConfig, preset
from goat.domains import (
    NON_NEGATIVE,
    NON_NEGATIVE_INT,
    POSITIVE,
    POSITIVE_INT,
    PROBABILITY,
    SEED,
    domain_errors,
    one_of,
    ranged,
    subset_of,
)

SCORINGS = ("generate", "loglik")  # task.scoring
TRAIN_FORMATS = ("instruction", "choice")  # task.train_format
# The commonsense sets by task name -> their folder in the LLM-Adapters layout (goat.tasks.commonsense reads them).
# Owned here, with the schema, so that task.train_sets is checked against them before torch is imported.
COMMONSENSE_SETS = {
    "boolq": "boolq",
    "piqa": "piqa",
    "siqa": "social_i_qa",
    "hellaswag": "hellaswag",
    "winogrande": "winogrande",
    "arc_e": "ARC-Easy",
    "arc_c": "ARC-Challenge",
    "obqa": "openbookqa",
}


class ConfigError(ValueError):
    """A run configuration that cannot work; the message says which key and what to do."""


# The other errors a run ends with live here too, beside ConfigError, so that goat-train and goat-train -m catch them
# without importing the modules that raise them (those load torch: goat.cli stays light, tests/test_import_graph.py).
class DataUnavailableError(RuntimeError, ValueError):
    """The task's data cannot be used as given: missing, unreachable, malformed or empty. The message is one line
    that names the file (with its line or record) and the setting pointing at it; goat-train prints it, exit 2."""


class ModelUnavailableError(RuntimeError):
    """The model or tokenizer could not be found locally nor fetched from the hub."""


class NonFiniteLossError(RuntimeError):
    """A NaN or inf loss or gradient with trainer.on_nonfinite=stop."""


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be written or is not intact."""


def first_line(error: BaseException) -> str:
    """The first line of an exception's message, for one-line errors that quote a library's own words."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else "(no message)"


@dataclass
class TaskConfig:
    name: str = "???"  # glue/cola, offline/...; also the run directory's first level
    loader: str = "???"  # the key of goat.tasks.LOADERS: glue, ...
    dataset: str = ""  # hub dataset path (glue: nyu-mll/glue)
    subset: str = ""  # hub config name (glue: cola)
    data_dir: str | None = None  # local files instead of the hub (format: the loader's docstring)
    prefix: str = ""  # instruction prefix of every input text (spec §6, GLUE)
    max_length: int = ranged(128, POSITIVE_INT)  # tokens
    max_train_samples: int | None = ranged(None, POSITIVE_INT)  # a seeded random subset (spec: shuffled with the seed)
    max_eval_samples: int | None = ranged(None, POSITIVE_INT)
    # Training rows held out (never trained on) and scored after each epoch as the split "heldout", to choose a swept
    # setting on (goat-report); drawn with the fixed goat.tasks.records.HELDOUT_SEED, the same rows for every method,
    # learning rate and seed, before max_train_samples. 0: none. The loaders in goat.tasks.HELDOUT_LOADERS (commonsense:
    # with task.scoring=loglik, the held-out rows scored like a test set).
    heldout_size: int = ranged(0, NON_NEGATIVE_INT)
    # Instruction tasks (commonsense, math): the training file (relative to data_dir), the test sets scored
    # after each epoch (data_dir/<set>/test.json), and the generation budget per answer.
    train_file: str | None = None
    eval_sets: list[str] = field(default_factory=list)
    # commonsense: train on the union of these sets' train splits (data_dir/<set folder>/train.json, concatenated)
    # instead of train_file; [] : train_file. Sets trained on are the in-domain ones, the other eval_sets transfer.
    train_sets: list[str] = ranged(list, subset_of(*COMMONSENSE_SETS))
    # commonsense: how a training record is written. instruction: the Alpaca prompt and the LLM-Adapters output ("the
    # correct answer is answer2"); choice: what task.scoring=loglik scores, the context of the gold option ("Question:
    # ...\nAnswer:") and " " + its text (goat.tasks.choices): the model learns exactly what it is scored on.
    train_format: str = ranged("instruction", one_of(*TRAIN_FORMATS))
    max_new_tokens: int = ranged(32, POSITIVE_INT)
    num_samples: int = ranged(1, POSITIVE_INT)  # generation tasks: completions per prompt; > 1 (sampling): pass@k
    decoding: str = "greedy"  # generation tasks: greedy | paper (what the reference ran) | sample (its sampling values)
    # commonsense: generate (answer labels by generation: the paper's protocol, its LLaMA-2-7B tables) | loglik (the
    # log-likelihood of each option's text: acc and acc_norm, the choice for small models; docs/evaluation.md)
    scoring: str = ranged("generate", one_of(*SCORINGS))
    image_size: int = ranged(224, POSITIVE_INT)  # image tasks: crop side in pixels


@dataclass
class ModelConfig:
    name_or_path: str = "???"  # hub id or local dir; "package:<module>/<subdir>" for a model a package ships
    kind: str = "sequence_classification"  # | causal_lm
    dtype: str = "float32"  # weights as loaded: float32 | bfloat16 | float16
    tokenizer: str | None = None  # default: name_or_path
    # Build from the checkpoint's config with random weights (tests, and models no one can download);
    # config_overrides change the config first (tiny test models: num_hidden_layers=2, ...).
    from_config: bool = False
    config_overrides: dict[str, Any] = field(default_factory=dict)
    image_head: str = "patch_mean"  # CLIP: patch_mean (new linear head, trained; the reference) | zero_shot (frozen)
    pretrained_label: str = ""  # printed with results, e.g. "not RoBERTa-large: all-MiniLM-L6-v2"
    # Python code shipped with a checkpoint (auto_map in config.json) runs only when this is turned on.
    trust_remote_code: bool = False
    # Weights only from .safetensors files; false also accepts pytorch_model.bin (read with weights_only=True).
    safetensors_only: bool = True


@dataclass
class TrainerConfig:
    epochs: float = ranged(10.0, POSITIVE)
    # optimizer steps; overrides epochs when set. 0: no training, one evaluation of the model as loaded (the
    # adapter at its initialisation: LoRA's is the base model)
    max_steps: int | None = ranged(None, NON_NEGATIVE_INT)
    batch_size: int = ranged(256, POSITIVE_INT)  # total batch per optimizer step (all devices x accumulation)
    micro_batch_size: int = ranged(32, POSITIVE_INT)  # per device and forward; accumulation = batch / (micro x devices)
    eval_batch_size: int = ranged(64, POSITIVE_INT)
    lr: float = ranged(1e-4, POSITIVE)
    weight_decay: float = ranged(0.0, NON_NEGATIVE)
    warmup_ratio: float = ranged(0.03, PROBABILITY)  # of the total steps (the reference scripts)
    warmup_steps: int | None = ranged(None, NON_NEGATIVE_INT)  # overrides warmup_ratio (the paper says 100)
    scheduler: str = "cosine"  # cosine | linear | constant
    max_grad_norm: float | None = ranged(1.0, POSITIVE)  # null: no clipping
    mixed_precision: str = "bf16"  # no | fp16 | bf16 (CPU: bf16 autocast, or no)
    eval_every_steps: int | None = ranged(None, POSITIVE_INT)  # besides the end of every epoch
    save_every_steps: int | None = ranged(None, POSITIVE_INT)  # besides the end of training
    keep_last: int = ranged(2, POSITIVE_INT)  # step checkpoints kept in the run directory
    # A NaN or inf loss or gradient: stop (end the run with the step and the router statistics logged; the
    # last checkpoint stays) or skip (drop that optimizer step, count it in train/skipped_steps, go on).
    on_nonfinite: str = "stop"
    log_every_steps: int = ranged(10, POSITIVE_INT)
    seed: int = ranged(0, SEED)
    num_workers: int = ranged(0, NON_NEGATIVE_INT)
    cpu: bool = False  # train on the CPU even when a GPU is present
    # torch.compile of each transformer block (goat.compile): none | default | reduce-overhead (CUDA graphs) |
    # max-autotune. The first step pays the compile time (logged as compile/first_step_s).
    compile: str = "none"
    compile_backend: str = "inductor"  # inductor; aot_eager traces the graphs but runs eager kernels (tests)
    # Training batches are padded to a multiple of this many tokens: with compilation, each distinct length
    # is a compiled graph (and a CUDA graph under reduce-overhead), so 64 bounds them to max_length / 64.
    pad_to_multiple_of: int = ranged(1, POSITIVE_INT)
    progress: bool = True


@dataclass
class LoggerConfig:
    backend: str = "wandb"  # wandb | none (metrics.jsonl and results.json are always written)
    project: str = "goat"
    mode: str = "offline"  # offline (no account needed) | online
    run_name: str | None = None


def _method_schema() -> type:
    """AdapterConfig's fields with AdapterConfig's defaults and OmegaConf-friendly types. init_coef and
    segment_count default to None only until `resolve_method` writes out 1 / num_experts and num_experts."""
    fields = [(f.name, _resolve(f.type), field(default=f.default)) for f in dataclasses.fields(AdapterConfig)]
    return dataclasses.make_dataclass("MethodConfig", fields)


def _resolve(type_name: str) -> Any:
    """The annotation strings of AdapterConfig (from __future__ annotations) as types OmegaConf reads."""
    table = {
        "int": int,
        "float": float,
        "str": str,
        "bool": bool,
        "float | None": Optional[float],  # noqa: UP045 (OmegaConf reads typing.Optional)
        "int | None": Optional[int],  # noqa: UP045
        "str | None": Optional[str],  # noqa: UP045 (svd_cache_dir: null turns the cache off)
        "list[str] | str": Any,  # a list of module names, or "auto"
    }
    return table[type_name]


MethodConfig = _method_schema()


@dataclass
class RunConfig:
    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: Any = field(default_factory=MethodConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    # The row name of this run in goat-report's tables: the method, or a variant such as lora_r16 that the
    # reproduction grid (goat/paper_results.yaml) sets together with its overrides.
    variant: str = "${method.method}"
    output_dir: str = "runs/${task.name}/${variant}/seed${trainer.seed}"
    resume: str = "never"  # never | auto (newest checkpoint in output_dir) | a checkpoint directory
    overwrite: bool = False  # allow training into an output_dir that already holds a finished run


def adapter_config(method_cfg) -> AdapterConfig:
    """The AdapterConfig of a run config's method section (plain Python values)."""
    return AdapterConfig.from_dict(OmegaConf.to_container(method_cfg, resolve=True))


def resolve_method(cfg) -> None:
    """Writes the method's derived numbers into `cfg.method` in place: init_coef (None: 1 / num_experts) and
    segment_count (None: num_experts), and `auto` for a target_modules, modules_to_save or model_id given as null.
    Needs every method value inside its domain (first_domain_error)."""
    resolved = adapter_config(cfg.method).resolved()
    for name in ("init_coef", "segment_count", *MODEL_RESOLVED):
        cfg.method[name] = getattr(resolved, name)


def record_adapter(cfg, adapter: AdapterConfig) -> None:
    """Writes the adapter config as it ran (apply_adapter's, every `auto` resolved) into `cfg.method`."""
    for name, value in adapter.to_dict().items():
        cfg.method[name] = value


def load_run_config(path):
    """A run's config.yaml on the current schema. A run written before a key existed gets its default (e.g.
    model.trust_remote_code); a method value written as null (runs before every value was recorded) means the
    method's preset, then the derived numbers, as it did when that run trained; no dropout_kernel means torch."""
    saved = OmegaConf.load(path)
    method = {k: v for k, v in OmegaConf.to_container(saved.method).items() if v is not None}
    method.setdefault("dropout_kernel", "torch")  # written before `auto` (or the key) existed: the torch ops ran
    saved.method = {**preset(method.get("method", "goat")), **method}
    cfg = OmegaConf.merge(OmegaConf.structured(RunConfig), saved)
    resolve_method(cfg)
    return cfg


def same_method_setting(before, now) -> bool:
    """One method value of a saved run and of the current config: `auto` (chosen from the model, which resuming
    checks separately) matches the list it resolves to."""
    return before == now or AUTO in (before, now)


def first_domain_error(cfg) -> str | None:
    """The first numeric trainer, task or method setting of a composed run config outside its domain, read from
    the schema alone (no torch import), or None. Combinations (the theory scaling's square root) are checked
    later, with the method's preset (goat.checks.check_config)."""
    for prefix, schema in (("trainer", TrainerConfig), ("task", TaskConfig), ("method", AdapterConfig)):
        section = cfg[prefix]
        errors = domain_errors(lambda name, section=section: section.get(name), schema, prefix)
        if errors:
            return errors[0]
    return None
