"""Building blocks for putting a llava-hf checkpoint together from existing parts.

``llava-edge init --vision ... --llm ...`` (:mod:`llava_edge.trainer.init_from_parts`)
and ``llava-edge convert`` (original LLaVA checkpoints) both end in the same
``LlavaForConditionalGeneration`` directory, and build it from the same pieces:

* :func:`add_llava_tokens` / :func:`grow_embeddings`: the ``<image>`` (and ``<pad>``)
  tokens and the embedding rows for them, as transformers' own
  ``convert_llava_weights_to_hf.py`` adds them (rows rounded up to a multiple of 64);
* :func:`load_vision_tower`: a CLIP or SigLIP tower (vision-only or a full two-tower
  model) with its image processor;
* :func:`llava_config`: the ``LlavaConfig``, with ``image_seq_length`` right for the tower;
* :func:`linear_projector_as_two_layers`: the original LLaVA ``linear`` projector in
  llava-hf's two-layer projector, exactly;
* :func:`save_llava`: config, weights, generation config, tokenizer, processor and chat
  template, written atomically.

Heavy imports (torch, transformers) happen inside the functions.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from llava_edge.atomic_dir import write_dir
from llava_edge.checkpoint_info import read_json
from llava_edge.errors import LlavaEdgeError
from llava_edge.hub import resolve_model
from llava_edge.presets import image_tokens
from llava_edge.templates import IMAGE_TOKEN

if TYPE_CHECKING:
    from transformers import LlavaConfig, PretrainedConfig

PAD_TOKEN = "<pad>"
# Checkpoints larger than this are written in shards with an index (as init_checkpoint).
SHARD_SIZE = "2GB"

# config.json model_type of a vision directory -> the tower family. A full two-tower model
# (CLIPModel, SiglipModel) is accepted too: its text tower is left out.
VISION_TYPES = {"clip": "clip", "clip_vision_model": "clip",
                "siglip": "siglip", "siglip_vision_model": "siglip"}
SUPPORTED_LLM = ("llama", "mistral", "qwen2")


class AssembleError(LlavaEdgeError):
    """A part that cannot be assembled into a LLaVA checkpoint (the message names it)."""


def add_llava_tokens(tokenizer) -> tuple[int, int]:
    """Add ``<image>`` (special, not normalized) and, when the tokenizer has no pad token,
    ``<pad>``, as transformers' ``convert_llava_weights_to_hf.py`` does; a token already
    there is kept. Returns ``(image_token_id, pad_token_id)``."""
    from tokenizers import AddedToken

    tokenizer.add_tokens(AddedToken(IMAGE_TOKEN, special=True, normalized=False),
                         special_tokens=True)
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    return tokenizer.convert_tokens_to_ids(IMAGE_TOKEN), tokenizer.pad_token_id


def grow_embeddings(language_model, n_tokens: int, pad_to: int = 64) -> int:
    """Give ``language_model`` (a ``*ForCausalLM``) at least ``n_tokens`` input and output
    embedding rows, rounded up to a multiple of ``pad_to``; returns the new row count.

    A model that already has enough rows keeps them all (Qwen2's embeddings are larger
    than its tokenizer): rows are never dropped. New rows are the mean of the old ones,
    in both matrices. The mean, rather than transformers' default of samples drawn
    around it, keeps the result deterministic (the same parts always give the same
    checkpoint), and a mean output row gives the new tokens an average logit: they
    neither take over nor vanish from the softmax before training. The ``<image>``
    input row is never read (image features replace it) and ``<pad>`` is masked.
    """
    import torch

    old = language_model.get_input_embeddings().weight.shape[0]
    target = -(-n_tokens // pad_to) * pad_to
    if target <= old:
        return old
    # mean_resizing=False: we fill the new rows ourselves (deterministically, below).
    language_model.resize_token_embeddings(target, mean_resizing=False)
    with torch.no_grad():
        for embedding in _distinct(language_model.get_input_embeddings(),
                                   language_model.get_output_embeddings()):
            weight = embedding.weight
            weight[old:] = weight[:old].float().mean(dim=0).to(weight.dtype)
            bias = getattr(embedding, "bias", None)
            if bias is not None:
                bias[old:] = bias[:old].float().mean().to(bias.dtype)
    return target


def _distinct(*modules) -> list:
    """The modules with a parameter of their own (a tied output layer shares the input's)."""
    seen, out = set(), []
    for m in modules:
        if m is not None and id(m.weight) not in seen:
            seen.add(id(m.weight))
            out.append(m)
    return out


def vision_family(vision_config) -> str:
    """``"clip"`` or ``"siglip"`` for a vision config (or its model_type string)."""
    model_type = getattr(vision_config, "model_type", vision_config)
    try:
        return VISION_TYPES[model_type]
    except KeyError:
        raise AssembleError(f"vision model_type {model_type!r} is not supported (supported: "
                            f"{', '.join(VISION_TYPES)})") from None


def load_vision_tower(path_or_id: str, *, what: str = "vision model"
                      ) -> tuple["PretrainedConfig", dict, object]:
    """``(vision_config, state_dict, image_processor)`` of the CLIP or SigLIP tower at
    ``path_or_id`` (a directory or a Hub id; see :func:`llava_edge.hub.resolve_model`).

    The state dict's keys are named as in a CLIPVisionModel / SiglipVisionModel file
    (``vision_model.embeddings.…``), which is also how llava-hf checkpoints name them
    under ``vision_tower.``. ``what`` names the argument in errors.
    """
    module, processor = open_vision_tower(path_or_id, what=what)
    state = module.state_dict()
    if not any(k.startswith("vision_model.") for k in state):
        # transformers 5 flattened the module (the prefix lives only in the files).
        state = {f"vision_model.{k}": v for k, v in state.items()}
    return module.config, state, processor


def open_vision_tower(path_or_id: str, *, what: str = "vision model", dtype=None):
    """The tower as a ``CLIPVisionModel`` / ``SiglipVisionModel`` (eval mode) and its image
    processor: the directory's own ``preprocessor_config.json`` when it has one, else the
    family's default at the tower's ``image_size``. SigLIP's pooling head is left out:
    LLaVA reads hidden states, never the pooled output."""
    from transformers import AutoImageProcessor, CLIPVisionModel, SiglipVisionModel

    path = resolve_model(path_or_id, what)
    family = check_vision_dir(path, what)
    extra = {"vision_use_head": False} if family == "siglip" else {}
    cls = CLIPVisionModel if family == "clip" else SiglipVisionModel
    with quiet_transformers():  # a two-tower file's text weights are "unexpected": fine
        module = cls.from_pretrained(path, dtype=dtype or "auto", **extra)
    module.eval()
    if (path / "preprocessor_config.json").is_file():
        processor = AutoImageProcessor.from_pretrained(path)
    else:
        from llava_edge.trainer.init_checkpoint import family_image_processor

        processor = family_image_processor(family, module.config.image_size)
    return module, processor


def open_language_model(path_or_id: str, *, what: str = "language model"):
    """``(model, tokenizer)`` for a Llama, Mistral or Qwen2 ``*ForCausalLM`` directory
    (or Hub id), in the dtype its config names."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model(path_or_id, what)
    check_llm_dir(path, what)
    with quiet_transformers():
        model = AutoModelForCausalLM.from_pretrained(path, dtype="auto")
    model.eval()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise AssembleError(f"{what} {path_or_id}: no usable tokenizer ({e})") from None
    return model, tokenizer


def check_vision_dir(path: Path, what: str = "vision model") -> str:
    """The tower family (clip, siglip) of the model directory ``path``, from its
    config.json alone; an :class:`AssembleError` naming it if it is not one."""
    model_type = _model_type(path, what)
    if model_type not in VISION_TYPES:
        raise AssembleError(f"{what} {path}: model_type {model_type!r} is not a supported "
                            f"vision tower (supported: {', '.join(VISION_TYPES)})")
    return VISION_TYPES[model_type]


def check_llm_dir(path: Path, what: str = "language model") -> str:
    """The model_type of the language model directory ``path``, from its config.json
    alone; an :class:`AssembleError` naming it if it is not a supported one."""
    model_type = _model_type(path, what)
    if model_type not in SUPPORTED_LLM:
        hint = (" (it is a LLaVA checkpoint already: use it as it is)"
                if model_type == "llava" else "")
        raise AssembleError(f"{what} {path}: model_type {model_type!r} is not a supported "
                            f"language model (supported: {', '.join(SUPPORTED_LLM)}){hint}")
    return model_type


def _model_type(path: Path, what: str) -> str | None:
    config = path / "config.json"
    if not config.is_file():
        raise AssembleError(f"{what} {path}: no config.json (not a Hugging Face model "
                            "directory)")
    return read_json(config, "config.json").get("model_type")


def llava_config(vision_config, text_config, image_token_id: int, *,
                 projector_hidden_act: str = "gelu", vision_feature_layer: int = -2,
                 vision_feature_select_strategy: str = "default",
                 llava_edge: dict | None = None) -> "LlavaConfig":
    """The ``LlavaConfig`` joining the two configs. ``image_seq_length`` follows from the
    tower: (image_size / patch_size)^2 patches, plus CLIP's CLS token under the ``full``
    strategy (SigLIP under ``default``: one patch fewer, the first being dropped; see
    :func:`~llava_edge.presets.image_tokens`). The dtype is the language model's.
    ``llava_edge`` is our own block (kept by transformers as an unknown key)."""
    from transformers import LlavaConfig

    vision_family(vision_config)  # a supported tower, or an error naming it
    if vision_feature_select_strategy not in ("default", "full"):
        raise AssembleError(f"vision_feature_select_strategy "
                            f"{vision_feature_select_strategy!r} is not 'default' or 'full'")
    dtype = getattr(text_config, "dtype", None)
    kwargs = {"llava_edge": llava_edge} if llava_edge is not None else {}
    return LlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_index=image_token_id,
        image_seq_length=image_seq_length(vision_config, vision_feature_select_strategy),
        vision_feature_layer=vision_feature_layer,
        vision_feature_select_strategy=vision_feature_select_strategy,
        projector_hidden_act=projector_hidden_act,
        multimodal_projector_bias=True,
        tie_word_embeddings=bool(getattr(text_config, "tie_word_embeddings", False)),
        dtype=str(dtype).removeprefix("torch.") if dtype is not None else None,
        **kwargs,
    )


def image_seq_length(vision_config, vision_feature_select_strategy: str) -> int:
    """Image tokens per image the language model sees for this tower and strategy."""
    return image_tokens(vision_family(vision_config), vision_config.image_size,
                        vision_config.patch_size, vision_feature_select_strategy)


def linear_projector_as_two_layers(weight, bias=None) -> dict:
    """The original LLaVA ``linear`` projector (one ``nn.Linear``: ``weight`` [out, in],
    ``bias`` [out] or None) as llava-hf's ``linear_1 -> act -> linear_2``, exactly:
    ``linear_1`` is the linear, ``linear_2`` the identity with a zero bias, and the
    config's ``projector_hidden_act`` must be ``"linear"`` (transformers' identity
    activation). x @ I + 0 is x bit for bit: every product but one is an exact zero.
    Keys are relative to ``multi_modal_projector``."""
    import torch

    out_features = weight.shape[0]
    if bias is None:
        bias = torch.zeros(out_features, dtype=weight.dtype)
    return {
        "linear_1.weight": weight, "linear_1.bias": bias,
        "linear_2.weight": torch.eye(out_features, dtype=weight.dtype),
        "linear_2.bias": torch.zeros(out_features, dtype=weight.dtype),
    }


def save_llava(model, tokenizer, image_processor, chat_template: str, out_dir, *,
               overwrite: bool = False) -> list[str]:
    """Write ``model`` (a ``LlavaForConditionalGeneration``) as a llava-hf directory:
    ``config.json``, safetensors weights (sharded past 2 GB), ``generation_config.json``,
    the tokenizer, the processor (``LlavaProcessor`` with the tower's patch size, CLIP's
    extra CLS token, the select strategy and ``<image>``) and ``chat_template``. The
    directory appears complete or not at all; one that exists and is not empty is
    replaced only with ``overwrite``. Returns the file names written."""
    from transformers import LlavaProcessor

    out_dir = Path(out_dir)
    check_out_dir(out_dir, overwrite)
    config = model.config
    family = vision_family(config.vision_config)
    generation = model.generation_config
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if getattr(generation, key, None) is None:
            setattr(generation, key, getattr(tokenizer, key))
    # One template for both: the tokenizer's own (an LLM's chat template knows nothing of
    # images) would otherwise disagree with the processor's.
    tokenizer.chat_template = chat_template

    def fill(tmp: Path) -> list[str]:
        check_out_dir(out_dir, overwrite)  # again: it may have appeared meanwhile
        with quiet_transformers():
            model.save_pretrained(tmp, max_shard_size=SHARD_SIZE)
        processor = LlavaProcessor(
            image_processor=image_processor, tokenizer=tokenizer,
            patch_size=config.vision_config.patch_size,
            vision_feature_select_strategy=config.vision_feature_select_strategy,
            num_additional_image_tokens=1 if family == "clip" else 0,
            chat_template=chat_template, image_token=IMAGE_TOKEN,
        )
        processor.save_pretrained(tmp)
        return sorted(p.name for p in tmp.iterdir())

    return write_dir(out_dir, fill)


def check_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not overwrite and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise AssembleError(f"{out_dir} exists and is not empty (use --force to replace it)")


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' warnings (its load report lists a two-tower model's text
    weights as "unexpected") and its per-file progress bars for the duration of the
    block; the command draws its own."""
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity(logging.ERROR)
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()
