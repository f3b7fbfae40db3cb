"""The original LLaVA checkpoint format (github.com/haotian-liu/LLaVA), as tables.

That repository's ``train.py`` writes the format most LLaVA fine-tunes are published in;
``llava-edge convert`` (:mod:`llava_edge.trainer.convert`) turns it into llava-hf's
``LlavaForConditionalGeneration``. Everything the conversion knows about the format is
here, read from the original code (``llava/model/llava_arch.py``, ``builder.py``,
``multimodal_projector/builder.py``, ``multimodal_encoder/clip_encoder.py``,
``llava/mm_utils.py``, ``llava/train/train.py``):

* one ``config.json``: the LLM's own config plus LLaVA's ``mm_*`` keys
  (:data:`LLAVA_CONFIG_KEYS`);
* weights in one of three layouts (:data:`LAYOUTS`): a full checkpoint (the LLM, the
  projector and, when the tower was trained, the tower), a LoRA run (an adapter plus
  ``non_lora_trainables.bin``, over a base LLM), or a stage-1 run (``mm_projector.bin``
  alone, over a base LLM);
* the original key names (:data:`KEY_PARTS`).

No torch here: the tables are plain data.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

# The original splices the image features where this id stands in input_ids
# (tokenizer_image_token); "<image>" has no entry in its vocabulary.
IMAGE_TOKEN_INDEX = -200
# Added to the tokenizer at load time when mm_use_im_patch_token is true (or absent:
# builder.load_pretrained_model's default), with an embedding row; never in a prompt.
IM_PATCH_TOKEN = "<im_patch>"

# config.json "architectures"[0] -> language model family (llava-edge's model_type).
ARCHITECTURES = {"LlavaLlamaForCausalLM": "llama", "LlavaMistralForCausalLM": "mistral"}
# config.json "model_type" -> family, when "architectures" is absent. LLaVA-1.5's own
# configs say "llava" (renamed llava_llama later); llava-hf's "llava" has a text_config.
MODEL_TYPES = {"llava_llama": "llama", "llava_mistral": "mistral", "llava": "llama"}
# Known and refused, by architecture or model_type (lower case) -> why.
REFUSED_MODELS = {
    "llavamptforcausallm": "MPT language models are not supported by llava-edge "
                           "(supported: Llama, Mistral, Qwen2)",
    "llava_mpt": "MPT language models are not supported by llava-edge "
                 "(supported: Llama, Mistral, Qwen2)",
}
LLM_CONFIG_CLASSES = {"llama": "LlamaConfig", "mistral": "MistralConfig"}
# The original's conversation template for each family when --template is not given:
# LLaVA-1.5 (Vicuna) and LLaVA-1.6-Mistral's. LLaVA on Llama-2-chat used llava_llama_2,
# which config.json does not record.
DEFAULT_TEMPLATES = {"llama": "vicuna_v1", "mistral": "mistral_instruct"}

# The keys LLaVA adds to the LLM's config.json -> the value the original assumes when a
# key is absent (None: required). Any other "mm_*" key is LLaVA's too. The rest of
# config.json is the LLM's own config.
LLAVA_CONFIG_KEYS: dict[str, object] = {
    "mm_vision_tower": None,
    "mm_projector_type": "linear",  # build_vision_projector's getattr default
    "mm_hidden_size": None,
    "mm_vision_select_layer": None,
    "mm_vision_select_feature": "patch",
    "mm_use_im_start_end": False,
    "mm_use_im_patch_token": True,  # load_pretrained_model's getattr default
    "image_aspect_ratio": "square",  # DataArguments' default: the processor's own crop
    "mm_patch_merge_type": "flat",
    "image_grid_pinpoints": None,
    "tokenizer_padding_side": "right",
    "tokenizer_model_max_length": None,
    "use_mm_proj": True,
    "tune_mm_mlp_adapter": False,
    "freeze_mm_mlp_adapter": False,
    "tune_mm_vision_resampler": False,
    "unfreeze_mm_vision_tower": False,
    "mm_projector_lr": None,
    "mm_vision_tower_lr": None,
    "s2": False,
    "s2_scales": None,
}
REQUIRED_KEYS = ("mm_vision_tower", "mm_hidden_size", "mm_vision_select_layer")
# Keys of config.json that describe the checkpoint file rather than the LLM.
FILE_KEYS = ("architectures", "model_type", "_name_or_path", "transformers_version")


def is_llava_key(key: str) -> bool:
    return key in LLAVA_CONFIG_KEYS or key.startswith("mm_")


@dataclass(frozen=True)
class Refusal:
    """A config value llava-hf's LlavaForConditionalGeneration cannot express."""

    key: str
    refuses: Callable[[object], bool]
    why: str


_NEXT = ("is LLaVA-NeXT (LLaVA-1.6): its image tiling is not supported by llava-edge "
         "convert yet (it converts LLaVA-1.5-style checkpoints)")
REFUSALS = (
    Refusal("mm_use_im_start_end", lambda v: bool(v),
            "wraps each image in <im_start>/<im_end> tokens, which llava-hf's "
            "LlavaForConditionalGeneration does not write (LLaVA-1.5 checkpoints use "
            "false)"),
    Refusal("image_aspect_ratio", lambda v: str(v).startswith("anyres"), _NEXT),
    Refusal("mm_patch_merge_type", lambda v: v != "flat", _NEXT),
    Refusal("s2", lambda v: bool(v),
            "is a multi-scale (S2) vision tower, which llava-hf's single-scale tower "
            "cannot express"),
)


def aspect_ratio(value) -> str:
    """llava-edge's name (checkpoint_info.image_aspect_ratio) for an image_aspect_ratio:
    ``pad`` is expand2square in the processor's mean colour, then the processor
    (mm_utils.process_images); any other value is the processor alone (``square``)."""
    return "pad" if value == "pad" else "square"


@dataclass(frozen=True)
class Layout:
    """One way the original writes a run's weights; ``marker`` tells it apart."""

    kind: str
    marker: tuple[str, ...]  # any of these files present -> this layout
    needs_base: bool
    description: str


# Weights of a Hugging Face model directory (a full checkpoint or a base LLM), preferred
# first: (index of shards, single file).
WEIGHT_FILES = (
    ("model.safetensors.index.json", "model.safetensors"),
    ("pytorch_model.bin.index.json", "pytorch_model.bin"),
)
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_model.bin")
NON_LORA_FILE = "non_lora_trainables.bin"
PROJECTOR_FILE = "mm_projector.bin"
# Tried in order: a LoRA run's directory may also hold a config and trainer files.
LAYOUTS = (
    Layout("lora", ("adapter_config.json",), True,
           f"a LoRA run (adapter_model.* + {NON_LORA_FILE})"),
    Layout("full", tuple(name for pair in WEIGHT_FILES for name in pair), False,
           "a full checkpoint"),
    Layout("stage1", (PROJECTOR_FILE,), True,
           f"a stage-1 (feature alignment) run ({PROJECTOR_FILE})"),
)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")

# Original key prefix -> part of the model; the first match wins.
KEY_PARTS = (
    # LlavaMetaModel.vision_tower (CLIPVisionTower) .vision_tower (CLIPVisionModel): only
    # saved when the tower was trained (unfreeze_mm_vision_tower); rest is "vision_model.…"
    ("model.vision_tower.vision_tower.", "vision"),
    ("model.mm_projector.", "projector"),
    ("model.", "language_model"),  # LlamaForCausalLM / MistralForCausalLM's own names
    ("lm_head.", "lm_head"),
)
# Keys with nothing to convert: rotary tables that transformers < 4.32 saved as buffers,
# and LLaVA-NeXT's image_newline, which the flat merge never reads.
DROPPED_KEY = re.compile(r"(\.rotary_emb\.inv_freq|^model\.image_newline)$")
# mlp2x_gelu is nn.Sequential(Linear, GELU, Linear): indices 0 and 2 -> llava-hf's names.
MLP2X_PROJECTOR = {"0.": "linear_1.", "2.": "linear_2."}

# A LoRA run: PEFT wraps the LlavaLlamaForCausalLM as base_model.model; adapter weights
# are "<module>.lora_A.weight" / "lora_B" (".default" when saved with an adapter name).
LORA_PREFIX = "base_model.model."
LORA_KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?P<which>[AB])"
                      r"(?:\.default)?\.weight$")
# adapter_config.json keys whose non-default value changes the merge -> why refused.
LORA_REFUSED = {
    "use_dora": "DoRA adapters are not supported (use_dora is true)",
    "fan_in_fan_out": "fan_in_fan_out adapters are not supported (Llama/Mistral layers are "
                      "nn.Linear)",
    "rank_pattern": "per-module ranks (rank_pattern) are not supported",
    "alpha_pattern": "per-module alphas (alpha_pattern) are not supported",
    "modules_to_save": "modules_to_save is not supported",
}


def part_of(key: str) -> tuple[str, str]:
    """``(part, rest)`` for an original key: part ``vision``, ``projector``,
    ``language_model``, ``lm_head``, ``dropped`` or ``unknown``; ``rest`` the key after
    the part's prefix."""
    if DROPPED_KEY.search(key):
        return "dropped", key
    for prefix, part in KEY_PARTS:
        if key.startswith(prefix):
            return part, key[len(prefix):]
    return "unknown", key


def non_lora_names(keys) -> dict[str, str]:
    """Original name for each key of ``non_lora_trainables.bin``, as
    ``load_pretrained_model`` renames them: drop ``base_model.``, then ``model.`` too when
    that leaves keys starting ``model.model.``."""
    stripped = {k: k[len("base_model."):] if k.startswith("base_model.") else k for k in keys}
    if any(v.startswith("model.model.") for v in stripped.values()):
        stripped = {k: v[len("model."):] if v.startswith("model.") else v
                    for k, v in stripped.items()}
    return stripped
