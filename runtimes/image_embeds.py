"""From decoded images to the embedding rows the LLM sees, for both image layouts.

* **LLaVA-1.5** (:class:`SquareImages`): an image is one square view; the vision graph
  gives ``image.n_tokens`` rows for it.
* **LLaVA-NeXT** (:class:`AnyresImages`): an image is a base view plus a grid of tiles
  chosen by its aspect ratio (:mod:`llava_edge.runtimes.anyres`); every tile goes through
  the same vision graph, and the image's tile features are packed (unpadded, the learned
  ``image_newline`` after every row) into as many rows as its size implies.

Either way the number of rows of each image is known from its size before the vision
graph runs (:meth:`n_positions`), which the prompt's context check and the KV-cache
bookkeeping need; each image's views go through the graph as one batch
(:func:`encode_images`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from PIL import Image

from llava_edge.errors import BundleError, PromptError
from llava_edge.manifest import AnyresSpec
from llava_edge.runtimes.anyres import AnyresPlan, anyres_tiles, pack_features
from llava_edge.runtimes.preprocess import PreprocessRecipe, preprocess


class ImageLayout(Protocol):
    n_tokens: int  # rows the vision graph gives per view
    cache_tag: bytes  # what besides the pixels decides an image's rows (for caches)

    def n_positions(self, image: Image.Image) -> int: ...
    def views(self, image: Image.Image) -> np.ndarray: ...
    def pack(self, image: Image.Image, features: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class SquareImages:
    """LLaVA-1.5: one preprocessed view per image, its features as they are."""

    recipe: PreprocessRecipe
    n_tokens: int
    cache_tag: bytes = b""

    def n_positions(self, image: Image.Image) -> int:
        return self.n_tokens

    def views(self, image: Image.Image) -> np.ndarray:
        return preprocess(image, self.recipe)[None]

    def pack(self, image: Image.Image, features: np.ndarray) -> np.ndarray:
        return features[0]


@dataclass(frozen=True)
class AnyresImages:
    """LLaVA-NeXT: base view + grid tiles per image, features packed per image.

    ``max_tiles`` (at most this many views per image, the base view included; None: as
    transformers) trades detail for fewer tower runs and prompt positions."""

    recipe: PreprocessRecipe
    n_tokens: int
    spec: AnyresSpec
    newline: np.ndarray
    max_tiles: int | None = None
    cache_tag: bytes = field(init=False)

    def __post_init__(self) -> None:
        if self.max_tiles is not None and self.max_tiles < 1:
            raise PromptError(f"max_tiles must be at least 1, got {self.max_tiles}")
        object.__setattr__(self, "cache_tag", f"max_tiles={self.max_tiles}".encode())

    def plan(self, image: Image.Image) -> AnyresPlan:
        s = self.spec
        return AnyresPlan.for_image(
            image, pinpoints=s.pinpoints, tile_size=s.tile_size, patch_size=s.patch_size,
            strategy=s.strategy, max_tiles=self.max_tiles,
            num_additional_image_tokens=s.num_additional_image_tokens)

    def n_positions(self, image: Image.Image) -> int:
        return self.plan(image).n_positions

    def views(self, image: Image.Image) -> np.ndarray:
        return anyres_tiles(image, self.plan(image), self.recipe)

    def pack(self, image: Image.Image, features: np.ndarray) -> np.ndarray:
        return pack_features(features, self.plan(image), self.newline)


def image_layout(manifest, newline_path=None, max_tiles: int | None = None) -> ImageLayout:
    """The layout of a bundle's images (``newline_path``: its ``image_newline`` file,
    for LLaVA-NeXT bundles). ``max_tiles`` applies to LLaVA-NeXT bundles only."""
    recipe, n_tokens = manifest.preprocess, manifest.image.n_tokens
    if manifest.anyres is None:
        if max_tiles is not None:
            raise PromptError("max_tiles applies to LLaVA-NeXT bundles (tiled images); this "
                              "bundle's images are one view each")
        return SquareImages(recipe, n_tokens)
    try:
        newline = np.load(newline_path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise BundleError(f"{newline_path}: cannot read the image_newline vector ({e})") from None
    if newline.shape != (manifest.image.n_embd,) or not np.issubdtype(newline.dtype, np.floating):
        raise BundleError(f"{newline_path}: image_newline must be {manifest.image.n_embd} "
                          f"floats, got shape {list(newline.shape)} {newline.dtype}")
    return AnyresImages(recipe, n_tokens, manifest.anyres, newline.astype(np.float32),
                        max_tiles)


def encode_images(layout: ImageLayout, images: Sequence[Image.Image],
                  encode: Callable[[np.ndarray], np.ndarray],
                  on_views: Callable[[], None] | None = None) -> list[np.ndarray]:
    """The rows of each image: its views through ``encode`` (the vision graph), then
    packed. ``on_views`` is called once all the views are made (the caller's timing
    splits there).

    One call per image, never one batch for several: a dynamically quantized (int8)
    graph scales its activations over the whole batch, so an image's rows would depend
    on the other images of the request (and the embedding cache would keep whichever
    they were). An image's own views (LLaVA-NeXT's tiles) go in one call.
    """
    views = [layout.views(image) for image in images]
    if on_views is not None:
        on_views()
    return [layout.pack(image, encode(v)) for image, v in zip(images, views)]
