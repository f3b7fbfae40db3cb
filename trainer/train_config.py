"""What a training run does: the config dataclass, the LLaVA-1.5 stage presets, recipes
and config files.

A run's values come from layers, each overriding the one before:

1. the **stage preset** (:data:`STAGE_PRESETS`): LLaVA-1.5's ``pretrain.sh`` for stage 1
   and ``finetune.sh`` for stage 2 (``finetune_lora.sh`` when LoRA is on);
2. the **recipe** (:data:`RECIPES`): a named, documented deviation from LLaVA-1.5, such as
   ``tiny-demo`` for a model trained from scratch on the synthetic shapes data;
3. a **config file** (YAML or JSON, keys named like the fields of :class:`TrainConfig`);
4. **command-line flags**.

The resolved config is saved next to the trained model (``train_config.json``) and in
``config.json`` under ``llava_edge.training``.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llava_edge.errors import LlavaEdgeError

TEMPLATE_CHOICES = ("auto", "plain", "vicuna_v1", "chatml", "tokenizer")
ASPECT_CHOICES = ("auto", "pad", "square", "anyres")
SCHEDULER_CHOICES = ("cosine", "linear", "constant")
PRECISION_CHOICES = ("auto", "bf16", "fp16", "fp32")


class TrainConfigError(LlavaEdgeError):
    """A training setting that is unknown, of the wrong type or out of range."""


@dataclass
class TrainConfig:
    """Everything a training run needs; every field can be set by flag or config file."""

    # What to train, on what, and where the result goes.
    stage: int
    model: str  # a llava-hf LLaVA or LLaVA-NeXT checkpoint (``llava-edge init``, stage 1's output)
    data: list[str]  # LLaVA JSON files, concatenated
    output_dir: str
    image_folder: str | None = None  # image paths in the data are relative to it
    recipe: str = "llava-1.5"

    # Prompt format and samples.
    template: str = "auto"  # stage 1: plain; stage 2: the checkpoint's template
    # auto: pad for LLaVA (llava), anyres for LLaVA-NeXT (llava_next); pad: to a square in
    # the mean colour (LLaVA-1.5); square: the processor's; anyres: NeXT's tiling
    image_aspect_ratio: str = "auto"
    model_max_length: int = 2048
    skip_bad_samples: bool = False

    # Which parts learn. Vision is frozen in both LLaVA stages.
    tune_projector: bool = True
    tune_llm: bool = False
    tune_vision: bool = False
    # LLaVA-NeXT only: keep image_newline at its starting value while the projector learns
    # (LLaVA-NeXT's pretraining); by default it learns with the projector.
    freeze_newline: bool = False
    lora_r: int = 0  # > 0: the LLM learns through LoRA adapters of this rank
    lora_alpha: int = 256
    lora_dropout: float = 0.05
    save_adapter: bool = False  # also keep the LoRA adapter (the model is always merged)

    # Optimisation (AdamW).
    learning_rate: float = 1e-3
    projector_lr: float | None = None  # None: learning_rate
    vision_lr: float | None = None  # None: learning_rate
    global_batch_size: int = 256  # samples per optimizer step, over all processes
    micro_batch_size: int = 32  # samples per forward pass on one process
    epochs: float = 1.0
    max_steps: int | None = None  # overrides epochs
    warmup_ratio: float = 0.03
    lr_scheduler: str = "cosine"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8

    # Engine.
    precision: str = "auto"  # auto: bf16 on a GPU that has it, else fp16 on GPU, fp32 on CPU
    gradient_checkpointing: bool | None = None  # None: on when training on a GPU
    num_workers: int | None = None  # data loader workers; None: 4 on GPU, 0 on CPU
    seed: int = 42
    save_steps: int = 500  # a resumable checkpoint every N optimizer steps (0: never)
    save_total_limit: int = 2  # resumable checkpoints kept
    logging_steps: int = 10  # a log line every N steps when stderr is not a terminal

    def validate(self) -> None:
        """Raise :class:`TrainConfigError` naming the first bad value."""
        _choice("template", self.template, TEMPLATE_CHOICES)
        _choice("image_aspect_ratio", self.image_aspect_ratio, ASPECT_CHOICES)
        _choice("lr_scheduler", self.lr_scheduler, SCHEDULER_CHOICES)
        _choice("precision", self.precision, PRECISION_CHOICES)
        if self.stage not in (1, 2):
            raise TrainConfigError(f"stage must be 1 or 2, got {self.stage}")
        if self.recipe not in RECIPES:
            raise TrainConfigError(
                f"unknown recipe {self.recipe!r}; choose one of: {', '.join(RECIPES)}")
        if not self.data:
            raise TrainConfigError("no training data: give at least one LLaVA JSON file")
        for name in ("model_max_length", "global_batch_size", "micro_batch_size"):
            _at_least(name, getattr(self, name), 1)
        for name in ("save_steps", "lora_r", "seed"):
            _at_least(name, getattr(self, name), 0)
        for name in ("save_total_limit", "logging_steps", "lora_alpha"):
            _at_least(name, getattr(self, name), 1)
        if self.max_steps is not None:
            _at_least("max_steps", self.max_steps, 1)
        if self.num_workers is not None:
            _at_least("num_workers", self.num_workers, 0)
        for name in ("learning_rate", "projector_lr", "vision_lr", "epochs"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise TrainConfigError(f"{name} must be > 0, got {value}")
        for name in ("weight_decay", "max_grad_norm", "lora_dropout", "adam_epsilon"):
            _at_least(name, getattr(self, name), 0)
        if not 0 <= self.warmup_ratio < 1:
            raise TrainConfigError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if not (self.tune_projector or self.tune_llm or self.tune_vision):
            raise TrainConfigError("nothing to train: tune_projector, tune_llm and "
                                   "tune_vision are all off")
        if self.lora_r and not self.tune_llm:
            raise TrainConfigError("lora_r is set but the LLM is frozen (tune_llm is off); "
                                   "LoRA adapts the LLM")
        if self.save_adapter and not self.lora_r:
            raise TrainConfigError("save_adapter needs LoRA (set lora_r > 0)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise TrainConfigError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def _at_least(name: str, value: float, minimum: float) -> None:
    if value < minimum:
        raise TrainConfigError(f"{name} must be >= {minimum}, got {value}")


# --------------------------------------------------------------------------------------
# Presets and recipes
# --------------------------------------------------------------------------------------

#: LLaVA-1.5's scripts (scripts/v1_5/pretrain.sh, finetune.sh: 8 GPUs x per-device batch
#: 32 / 16). Values not listed are the :class:`TrainConfig` defaults, which are theirs too
#: (warmup ratio 0.03, cosine, weight decay 0, 1 epoch, max length 2048, vision frozen).
STAGE_PRESETS: dict[int, dict[str, Any]] = {
    1: dict(template="plain", tune_projector=True, tune_llm=False, learning_rate=1e-3,
            global_batch_size=256, micro_batch_size=32, save_steps=500),
    2: dict(template="auto", tune_projector=True, tune_llm=True, learning_rate=2e-5,
            global_batch_size=128, micro_batch_size=16, save_steps=500),
}

#: scripts/v1_5/finetune_lora.sh: LoRA r 128, alpha 256, lr 2e-4, projector lr 2e-5.
#: Applied over the stage preset whenever LoRA is on (``lora_r > 0``).
LORA_PRESET: dict[str, Any] = dict(lora_r=128, lora_alpha=256, learning_rate=2e-4,
                                   projector_lr=2e-5)


@dataclass(frozen=True)
class Recipe:
    """A named set of changes to the stage presets, with the reason for each."""

    name: str
    description: str
    stages: dict[int, dict[str, Any]] = field(default_factory=dict)
    notes: tuple[str, ...] = ()


RECIPES: dict[str, Recipe] = {
    "llava-1.5": Recipe(
        "llava-1.5",
        "LLaVA-1.5 as published: stage 1 trains the projector on captions, stage 2 the "
        "projector and LLM on instructions; vision frozen.",
    ),
    "tiny-demo": Recipe(
        "tiny-demo",
        "A `tiny` preset model trained FROM SCRATCH on `llava-edge data shapes` in minutes "
        "of CPU. Not LLaVA's recipe: a random-init LLM cannot stay frozen.",
        stages={
            1: dict(tune_llm=True, learning_rate=3e-4, projector_lr=3e-3,
                    global_batch_size=16, micro_batch_size=16, epochs=4.0,
                    model_max_length=256, save_steps=0),
            2: dict(learning_rate=1e-3, global_batch_size=8, micro_batch_size=8,
                    epochs=1.0, model_max_length=512, save_steps=0),
        },
        notes=(
            "stage 1 trains the LLM as well as the projector: the LLM is random, so it "
            "has to learn language from the captions",
            "the vision tower stays frozen in both stages, as in LLaVA; `llava-edge demo` "
            "pretrains it first (stage 0, `llava-edge pretrain-vision`, cached per machine), "
            "as LLaVA starts from a pretrained CLIP; training a random tower in these stages "
            "at these learning rates slowed learning several-fold (measured)",
            "stage 1: LLM lr 3e-4 with a 10x projector lr (3e-3), batch 16, 4 epochs: at an "
            "LLM lr of 1e-3 the random LLM learns the captions' language and never reads "
            "the image (caption loss equal with the right and with shuffled images after "
            "1,000 steps); at 3e-4 / 3e-3 the image pathway opens after ~200 steps and "
            "caption loss falls from 0.68 to 0.29 (shuffled images: 1.37) (measured)",
            "stage 2: lr 1e-3, global batch 8: many small steps for a few-MB model on "
            "2,000 images, instead of 558k / 665k samples in batches of 256 / 128 on 8 GPUs",
            "stage 2 also trains on stage2_mc.json (llava-edge data shapes-mc): "
            "multiple-choice questions about the train images in the eval's format, which "
            "stage2_instruct.json never shows (LLaVA-1.5's mix has A-OKVQA for this), and "
            "on stage2_short.json (llava-edge data shapes-short): questions answered with a "
            "word or phrase, as LLaVA-1.5's VQAv2 / GQA data are",
        ),
    ),
    "llava-next": Recipe(
        "llava-next",
        "LLaVA-NeXT (1.6) as published, for llava_next checkpoints: stage 1 as LLaVA-1.5 "
        "(projector, here with image_newline); stage 2 trains the vision tower too, at "
        "2e-6, with projector and LLM at 2e-5 and 4096-token samples.",
        stages={
            2: dict(tune_vision=True, vision_lr=2e-6, model_max_length=4096),
        },
        notes=(
            "stage 2 follows LLaVA-NeXT's fine-tuning (mm_tunable_parts mm_vision_tower, "
            "mm_mlp_adapter, mm_language_model; mm_vision_tower_lr 2e-6, learning_rate "
            "2e-5, model_max_length 4096, global batch 128): the vision tower learns at a "
            "tenth of the LLM's rate, in its own optimizer group",
            "images are tiled (anyres) in both stages: image_aspect_ratio auto is anyres "
            "for a llava_next checkpoint; LLaVA-NeXT's own pretraining did not tile",
            "image_newline learns with the projector in both stages (LLaVA-NeXT leaves it "
            "at its random init in pretraining and trains it with the LLM in stage 2); "
            "--freeze-newline in stage 1 reproduces LLaVA-NeXT's pretraining, where the "
            "newline stays at its init",
            "the other values are the LLaVA-1.5 stage presets (stage 2: lr 2e-5, batch "
            "128; with --lora-r, LoRA lr 2e-4 and projector lr 2e-5), which LLaVA-NeXT "
            "kept",
        ),
    ),
}


def get_recipe(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise TrainConfigError(
            f"unknown recipe {name!r}; choose one of: {', '.join(RECIPES)}") from None


# --------------------------------------------------------------------------------------
# Resolution
# --------------------------------------------------------------------------------------

_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
_TYPES = typing.get_type_hints(TrainConfig)


def resolve_config(overrides: dict[str, Any], config_file: str | Path | None = None
                   ) -> tuple[TrainConfig, dict[str, Any]]:
    """Merge stage preset, recipe, config file and ``overrides`` (flags) into a config.

    Returns the validated config and where its values came from (saved with the model).
    ``overrides`` holds only the values the user gave; ``None`` values are ignored.
    """
    file_values = load_config_file(config_file) if config_file else {}
    explicit = {**file_values, **{k: v for k, v in overrides.items() if v is not None}}
    for key, value in list(explicit.items()):
        explicit[key] = coerce_value(key, value)

    stage = explicit.get("stage")
    if stage is None:
        raise TrainConfigError("which stage? give --stage 1 or --stage 2 (or 'stage' in "
                               "the config file)")
    if stage not in STAGE_PRESETS:
        raise TrainConfigError(f"stage must be 1 or 2, got {stage}")
    recipe = get_recipe(explicit.get("recipe", "llava-1.5"))
    recipe_values = recipe.stages.get(stage, {})

    values: dict[str, Any] = dict(STAGE_PRESETS[stage])
    lora_r = explicit.get("lora_r", recipe_values.get("lora_r", 0))
    if lora_r:
        values.update(LORA_PRESET)
    values.update(recipe_values)
    values.update(explicit)
    missing = [name for name in ("model", "data", "output_dir") if name not in values]
    if missing:
        raise TrainConfigError("missing " + ", ".join(missing) + " (give them as arguments "
                               "or in the config file)")
    config = TrainConfig(**values)
    config.validate()
    provenance = {
        "stage_preset": f"llava-1.5 stage {stage}" + (" (LoRA)" if lora_r else ""),
        "recipe": recipe.name,
        "recipe_changes": sorted(recipe_values),
        "config_file": str(config_file) if config_file else None,
        "from_config_file": sorted(file_values),
        "from_flags": sorted(k for k, v in overrides.items() if v is not None),
    }
    return config, provenance


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML (``.yaml``/``.yml``) or JSON config file into a dict of fields."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise TrainConfigError(f"{path}: cannot read config file: {e}") from e
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:  # pragma: no cover - pyyaml is in the [train] extra
            raise TrainConfigError(f"{path}: YAML config files need pyyaml "
                                   "(pip install 'llava-edge[train]')") from None
        try:
            values = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise TrainConfigError(f"{path}: not valid YAML: {e}") from e
    else:
        try:
            values = json.loads(text)
        except json.JSONDecodeError as e:
            raise TrainConfigError(f"{path}: not valid JSON: {e}") from e
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise TrainConfigError(f"{path}: a config file must hold a mapping of settings")
    unknown = sorted(set(values) - set(_FIELDS))
    if unknown:
        raise TrainConfigError(f"{path}: unknown setting(s) {', '.join(unknown)}; known: "
                               f"{', '.join(_FIELDS)}")
    return values


def coerce_value(name: str, value: Any) -> Any:
    """Check ``value`` against the type of field ``name``; convert where lossless."""
    if name not in _TYPES:
        raise TrainConfigError(f"unknown setting {name!r}")
    kind = _TYPES[name]
    args = typing.get_args(kind)
    optional = type(None) in args
    if value is None:
        if optional:
            return None
        raise TrainConfigError(f"{name} cannot be empty")
    if optional or isinstance(kind, types.UnionType):
        kind = next(a for a in args if a is not type(None))
    if typing.get_origin(kind) is list:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or not all(isinstance(i, str) for i in items):
            raise TrainConfigError(f"{name} must be a path or a list of paths, got {value!r}")
        return [str(i) for i in items]
    if kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif kind is str:
        if isinstance(value, (str, Path)):
            return str(value)
    raise TrainConfigError(f"{name} must be {kind.__name__}, got {value!r}")
