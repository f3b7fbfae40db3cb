"""A small typed bundle manifest for tests that need one without exporting a model."""

from __future__ import annotations

from llava_edge.manifest import (ImageSpec, LanguageModel, Manifest, Mmproj, PromptSpec,
                                 VisionGraph)
from llava_edge.runtimes.preprocess import PreprocessRecipe
from llava_edge.templates import TEMPLATES

RECIPE = PreprocessRecipe(resize_shortest_edge=64, resize_height=None, resize_width=None,
                          crop_height=64, crop_width=64, resample=3, rescale_factor=1 / 255,
                          image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5))


def make_manifest(vision=("fp32",), llm=("F16",), mmproj: bool = False, n_embd: int = 256,
                  **fields) -> Manifest:
    """Vision graphs ``vision_<p>.onnx`` and GGUFs ``llm-<q>.gguf``, the first of each the
    default; ``fields`` replace any other field."""
    return Manifest(**{
        "preprocess": RECIPE,
        "image": ImageSpec(n_tokens=16, n_embd=n_embd, token_id=1402),
        "prompt": PromptSpec(template="vicuna_v1", chat_template=TEMPLATES["vicuna_v1"].jinja),
        "vision": tuple(VisionGraph(precision=p, file=f"vision_{p}.onnx", n_embd=n_embd)
                        for p in vision),
        "llm": tuple(LanguageModel(quant=q, file=f"llm-{q}.gguf", n_embd=n_embd) for q in llm),
        "mmproj": Mmproj(file="mmproj-F16.gguf", type="F16") if mmproj else None,
        "defaults": {"vision": vision[0], "llm": llm[0]},
    } | fields)
