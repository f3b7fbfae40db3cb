"""The LLaVA-NeXT (LLaVA-1.6) side of a vision export: the views the graph is measured on,
the packed-features check, the ``image_newline`` file and the manifest's ``anyres`` section.

A LLaVA-NeXT checkpoint exports the same per-view vision graph as LLaVA-1.5 (tower
truncated at the selected layer, select strategy, projector: ``[B, 3, S, S] -> [B,
tokens_per_tile, n_embd]``); the runtime cuts each image into a base view and grid tiles,
runs them as one batch and packs their features itself (:mod:`llava_edge.runtimes.anyres`).
So the export checks two things, both with the runtime's own numpy code:

* the graph, per view, against PyTorch, on the tiles
  :func:`~llava_edge.runtimes.anyres.anyres_tiles` cuts from images of several aspect
  ratios (:meth:`Tiling.views`), as for LLaVA-1.5;
* end to end, that those views' graph outputs packed by
  :func:`~llava_edge.runtimes.anyres.pack_features` equal transformers' packed image
  features (its own processor, ``get_image_features`` with the image sizes): the
  tiling plan, the tiles' pixels, the unpadding and the newlines all agree
  (:func:`packed_parity`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from llava_edge.errors import LlavaEdgeError
from llava_edge.export.open_checkpoint import next_plan
from llava_edge.export.vision_parity import compare
from llava_edge.manifest import AnyresSpec
from llava_edge.runtimes.anyres import AnyresPlan, anyres_tiles, pack_features, recipe_from_hf
from llava_edge.runtimes.preprocess import PreprocessRecipe

#: The bundle file holding ``image_newline`` (float32 [n_embd], ``np.save``).
NEWLINE_FILE = "image_newline.npy"


@dataclass(frozen=True)
class Tiling:
    """How a LLaVA-NeXT checkpoint turns an image into views and prompt rows.

    ``config``: the ``LlavaNextConfig`` as a dict; ``recipe``: its image processor's
    per-view preprocessing (:func:`~llava_edge.runtimes.anyres.recipe_from_hf`)."""

    config: dict
    recipe: PreprocessRecipe

    @classmethod
    def of(cls, loaded) -> "Tiling":
        """The tiling of a loaded checkpoint (a ``LoadedVision`` or ``LoadedLlava``)."""
        image_processor = getattr(loaded.processor, "image_processor", loaded.processor)
        return cls(config=loaded.config.to_dict(), recipe=recipe_from_hf(image_processor.to_dict()))

    def plan(self, image: Image.Image) -> AnyresPlan:
        return next_plan(self.config, (image.height, image.width))

    def views(self, images: list[Image.Image]) -> tuple[np.ndarray, list[int]]:
        """Every image's views (base view, then the grid's tiles row by row), image after
        image, [n_views, 3, S, S] float32, and how many views each image has."""
        tiles = [anyres_tiles(image, self.plan(image), self.recipe) for image in images]
        return np.concatenate(tiles), [len(t) for t in tiles]

    def pack(self, images: list[Image.Image], features: np.ndarray, counts: list[int],
             newline: np.ndarray) -> list[np.ndarray]:
        """Each image's prompt rows [n_positions, n_embd] from its views' features
        (``features`` [n_views, tokens_per_tile, n_embd] in :meth:`views`' order)."""
        out, start = [], 0
        for image, n in zip(images, counts):
            out.append(pack_features(features[start:start + n], self.plan(image), newline))
            start += n
        return out

    def manifest_spec(self) -> AnyresSpec:
        """The manifest's ``anyres`` section: the pinpoints exactly as the config lists
        them ((height, width), as transformers reads them), the tower's sizes, the select
        strategy, the tower's extra tokens (CLIP's CLS: 1; SigLIP: 0)."""
        vision = self.config["vision_config"]
        plan = next_plan(self.config, (vision["image_size"], vision["image_size"]))
        return AnyresSpec(pinpoints=plan.pinpoints, tile_size=plan.tile_size,
                          patch_size=plan.patch_size, strategy=plan.strategy,
                          num_additional_image_tokens=plan.num_additional_image_tokens,
                          newline_file=NEWLINE_FILE)


def hf_packed_features(loaded, images: list[Image.Image]) -> list[np.ndarray]:
    """transformers' packed image features of ``images``, one [n_positions, n_embd] array
    each: the checkpoint's own image processor and ``get_image_features`` (``loaded``: a
    ``LoadedVision`` or ``LoadedLlava`` of a LLaVA-NeXT checkpoint). The ground truth the
    runtime's views + graph + packing must reproduce."""
    import torch

    image_processor = getattr(loaded.processor, "image_processor", loaded.processor)
    inputs = image_processor(images=images, return_tensors="pt")
    with torch.inference_mode():
        out = loaded.model.model.get_image_features(
            pixel_values=inputs["pixel_values"].float(), image_sizes=inputs["image_sizes"])
    return [f.float().numpy() for f in out.pooler_output]


def packed_parity(reference: list[np.ndarray], candidate: list[np.ndarray]) -> dict:
    """Max abs error and per-position cosine of the packed rows of every image against
    transformers'. A different number of rows is no precision matter but a tiling that
    disagrees with transformers: an error."""
    for i, (ref, got) in enumerate(zip(reference, candidate, strict=True)):
        if ref.shape != got.shape:
            raise LlavaEdgeError(
                f"parity image {i}: the packed features have shape {got.shape}, "
                f"transformers' {ref.shape}: the tiling disagrees with transformers")
    figures = compare(np.concatenate(reference)[None], np.concatenate(candidate)[None]).to_dict()
    figures["n_images"] = len(reference)
    figures["n_positions"] = figures.pop("n_tokens")
    return figures


def save_newline(path: str | Path, newline: np.ndarray) -> None:
    """Write ``image_newline`` as the runtime reads it: float32 [n_embd], ``np.save``."""
    np.save(Path(path), np.ascontiguousarray(newline, dtype=np.float32), allow_pickle=False)
