"""Open a LLaVA checkpoint for export, refusing what the exporters do not support.

Both halves of the export (vision graph, GGUF LLM) start here, so that an unsupported
model fails once, early, with a message naming the part at fault.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from llava_edge.checkpoint_info import MODEL_TYPES, read_json
from llava_edge.errors import LlavaEdgeError

#: How LLaVA-NeXT lays out a grid's features (the original LLaVA's ``mm_patch_merge_type``;
#: transformers implements this one only, whatever a config says).
SUPPORTED_PATCH_MERGE = ("spatial_unpad",)
SUPPORTED_VISION = {"clip_vision_model": "clip", "siglip_vision_model": "siglip"}
SUPPORTED_TEXT = {"llama", "mistral", "qwen2"}
# "linear" (identity): the original LLaVA linear projector, see trainer/assemble.py.
SUPPORTED_PROJECTOR_ACTS = {"gelu", "gelu_pytorch_tanh", "linear", "relu", "silu"}


class UnsupportedModelError(LlavaEdgeError):
    """The checkpoint is a model (or part of one) the exporter cannot convert."""


@dataclass
class LoadedLlava:
    """A checkpoint opened in PyTorch: the model in eval mode, its processor and config."""

    path: Path
    model: object  # transformers.LlavaForConditionalGeneration (or LlavaNext...)
    processor: object  # transformers.LlavaProcessor (or LlavaNextProcessor)
    config: object  # transformers.LlavaConfig (or LlavaNextConfig)

    @property
    def vision_kind(self) -> str:
        return SUPPORTED_VISION[self.config.vision_config.model_type]

    @property
    def is_next(self) -> bool:
        """LLaVA-NeXT: each image is a base view plus grid tiles, packed."""
        return self.config.model_type == "llava_next"

    def generate_greedy(self, image, prompt: str, max_new_tokens: int) -> list[int]:
        """transformers' own ``generate`` (greedy) on one image and one user prompt, with
        the processor's pixels and chat template: the new token ids, end-of-sequence and
        padding left out. The reference the exported bundle is compared with."""
        import torch

        messages = [{"role": "user", "content": [{"type": "image"},
                                                 {"type": "text", "text": prompt}]}]
        text = self.processor.apply_chat_template(messages, add_generation_prompt=True)
        inputs = self.processor(images=image, text=text, return_tensors="pt")
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=max_new_tokens,
                                      do_sample=False)
        eos = self.model.generation_config.eos_token_id
        stop = set(eos if isinstance(eos, list) else [eos]) | {
            self.processor.tokenizer.pad_token_id}
        return [t for t in out[0, inputs["input_ids"].shape[1]:].tolist() if t not in stop]


def check_supported(path: str | Path) -> dict:
    """Read ``config.json`` and raise :class:`UnsupportedModelError` naming what is not
    supported (model type, vision tower, language model, projector); return the config."""
    path = Path(path)
    config = read_json(path / "config.json", "config.json")
    model_type = config.get("model_type")
    if model_type not in MODEL_TYPES:
        raise UnsupportedModelError(
            f"{path}: model_type {model_type!r} is not supported; llava-edge exports "
            + " and ".join(f"{cls} ({t!r})" for t, cls in MODEL_TYPES.items())
            + " checkpoints")
    vision = (config.get("vision_config") or {}).get("model_type")
    if vision not in SUPPORTED_VISION:
        raise UnsupportedModelError(
            f"{path}: vision tower {vision!r} is not supported (supported: "
            f"{', '.join(sorted(SUPPORTED_VISION))})")
    text = (config.get("text_config") or {}).get("model_type", "llama")
    if text not in SUPPORTED_TEXT:
        raise UnsupportedModelError(
            f"{path}: language model {text!r} is not supported (supported: "
            f"{', '.join(sorted(SUPPORTED_TEXT))})")
    act = config.get("projector_hidden_act", "gelu")
    if act not in SUPPORTED_PROJECTOR_ACTS:
        raise UnsupportedModelError(
            f"{path}: projector activation {act!r} is not supported (supported: "
            f"{', '.join(sorted(SUPPORTED_PROJECTOR_ACTS))})")
    if model_type == "llava_next":
        _check_next(path, config)
    return config


def _check_next(path: Path, config: dict) -> None:
    """What of a LLaVA-NeXT config the export cannot reproduce, named: a patch merge other
    than ``spatial_unpad`` (original-LLaVA configs carry the key; transformers ignores it
    and would silently run something else), grid pinpoints that are not multiples of the
    tile size, a select strategy that leaves a CLS token in every tile of a grid."""
    merge = config.get("mm_patch_merge_type")
    if merge is not None and merge not in SUPPORTED_PATCH_MERGE:
        raise UnsupportedModelError(
            f"{path}: mm_patch_merge_type {merge!r} is not supported (supported: "
            f"{', '.join(SUPPORTED_PATCH_MERGE)})")
    try:  # a plan for one tile-sized image checks the pinpoints, strategy and tower
        next_plan(config, (1, 1))
    except LlavaEdgeError as exc:
        raise UnsupportedModelError(f"{path}: {exc}") from None


def next_plan(config: dict, image_size: tuple[int, int]):
    """The :class:`~llava_edge.runtimes.anyres.AnyresPlan` of an image of ``image_size``
    (height, width) for a LLaVA-NeXT ``config.json`` dict, transformers' defaults filled
    in for the keys it leaves out (LlavaNextConfig's pinpoints, CLIP's sizes)."""
    from llava_edge.checkpoint_info import NEXT_DEFAULT_PINPOINTS, vision_defaults
    from llava_edge.runtimes.anyres import AnyresPlan

    filled = {**config, "vision_config": vision_defaults(config),
              "image_grid_pinpoints": config.get("image_grid_pinpoints")
              or NEXT_DEFAULT_PINPOINTS}
    return AnyresPlan.from_hf_config(filled, image_size)


def model_class(model_type: str):
    """transformers' class for a supported ``model_type`` (``llava``, ``llava_next``)."""
    import transformers

    return getattr(transformers, MODEL_TYPES[model_type])


def load_llava(path: str | Path, dtype: str = "float32") -> LoadedLlava:
    """Load the checkpoint at ``path`` in PyTorch (eval mode, ``dtype``) with its processor."""
    import torch
    from transformers import AutoProcessor

    path = Path(path)
    config = check_supported(path)
    model = model_class(config["model_type"]).from_pretrained(path, dtype=getattr(torch, dtype))
    model.eval()
    processor = AutoProcessor.from_pretrained(path)
    return LoadedLlava(path=path, model=model, processor=processor, config=model.config)


def drop_language_model(loaded: LoadedLlava) -> None:
    """Free ``loaded``'s language model and LM head (most of a LLaVA checkpoint's weights),
    keeping the vision tower and projector (``get_image_features`` still works). For a
    caller that is done with PyTorch's text side, as export is once its parity references
    are computed: a model call after this fails on the missing module."""
    import gc

    from llava_edge.heap import release_freed_memory

    loaded.model.model.language_model = None
    loaded.model.lm_head = None
    gc.collect()
    release_freed_memory()  # large tensors are unmapped at once; the rest sits in malloc
