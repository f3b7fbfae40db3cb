"""Open a LLaVA checkpoint for export, refusing what the exporters do not support.

Both halves of the export (vision graph, GGUF LLM) start here, so that an unsupported
model fails once, early, with a message naming the part at fault.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from llava_edge.checkpoint_info import read_json
from llava_edge.errors import LlavaEdgeError

SUPPORTED_VISION = {"clip_vision_model": "clip", "siglip_vision_model": "siglip"}
SUPPORTED_TEXT = {"llama", "mistral", "qwen2"}
SUPPORTED_PROJECTOR_ACTS = {"gelu", "gelu_pytorch_tanh", "relu", "silu"}


class UnsupportedModelError(LlavaEdgeError):
    """The checkpoint is a model (or part of one) the exporter cannot convert."""


@dataclass
class LoadedLlava:
    """A checkpoint opened in PyTorch: the model in eval mode, its processor and config."""

    path: Path
    model: object  # transformers.LlavaForConditionalGeneration
    processor: object  # transformers.LlavaProcessor
    config: object  # transformers.LlavaConfig

    @property
    def vision_kind(self) -> str:
        return SUPPORTED_VISION[self.config.vision_config.model_type]


def check_supported(path: str | Path) -> dict:
    """Read ``config.json`` and raise :class:`UnsupportedModelError` naming what is not
    supported (model type, vision tower, language model, projector); return the config."""
    path = Path(path)
    config = read_json(path / "config.json", "config.json")
    model_type = config.get("model_type")
    if model_type != "llava":
        raise UnsupportedModelError(
            f"{path}: model_type {model_type!r} is not supported; llava-edge exports "
            "LlavaForConditionalGeneration ('llava') checkpoints")
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
    return config


def load_llava(path: str | Path, dtype: str = "float32") -> LoadedLlava:
    """Load the checkpoint at ``path`` in PyTorch (eval mode, ``dtype``) with its processor."""
    import torch
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    path = Path(path)
    check_supported(path)
    model = LlavaForConditionalGeneration.from_pretrained(path, dtype=getattr(torch, dtype))
    model.eval()
    processor = AutoProcessor.from_pretrained(path)
    return LoadedLlava(path=path, model=model, processor=processor, config=model.config)
