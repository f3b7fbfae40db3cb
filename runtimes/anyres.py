"""LLaVA-NeXT (LLaVA-1.6) "anyres" images in numpy + Pillow: the tiling plan, the tiles'
pixel values and the packing of their features, without torch or transformers.

LLaVA-NeXT shows the language model more than one square view of an image:

1. the *base view*: the whole image squashed to the tower's square input size;
2. a *grid* of tiles: the image resized, aspect kept, to fit the resolution chosen from
   ``image_grid_pinpoints`` (:func:`select_best_resolution`), centred on black, cut into
   ``rows x cols`` tiles of the tower's size.

Every tile goes through the vision tower and projector; the grid's features are laid out
as one big feature map, the rows/columns that only saw padding are cut away again
("unpad", approximately: it works on the feature grid, not on pixels) and the learned
``image_newline`` vector is appended after each row of the map (``mm_patch_merge_type``
``"spatial_unpad"``, the LLaVA-NeXT default). The LLM sees
``base tokens + unpadded rows * (unpadded cols + 1)`` positions, all known from the image
size before the vision graph runs (:class:`AnyresPlan`).

Everything here mirrors transformers 5.x (``LlavaNextImageProcessorPil``,
``LlavaNextProcessor``, ``LlavaNextModel.pack_image_features``) and is tested against it
(tests/test_anyres.py): same integers, same Pillow resizes, same float steps.

Size conventions (the classic source of bugs): **every size here is (height, width)**,
as transformers writes them: ``image_size``, the pinpoints, the chosen resolution, the
grid ``(rows, cols)``. Only Pillow's own calls take (width, height); the conversion is
done in this module. The original LLaVA code (haotian-liu/LLaVA ``mm_utils.py``) reads
both the image size and the pinpoints as (width, height) instead; with the symmetric
pinpoint lists of the released checkpoints that only changes which of two equally good
candidates wins a tie, but ties are common (see :func:`select_best_resolution`).

``max_tiles`` is our own addition (not in transformers): see :class:`AnyresPlan`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Sequence

import numpy as np
from PIL import Image

from llava_edge.errors import LlavaEdgeError
from llava_edge.runtimes.images import to_rgb
from llava_edge.runtimes.preprocess import PreprocessRecipe, preprocess

Strategy = Literal["default", "full"]

#: The black that transformers (``np.pad(..., constant_values=0)``) and the original
#: LLaVA (``Image.new('RGB', ..., (0, 0, 0))``) put around the resized image. Not the
#: mean colour LLaVA-1.5's pad-to-square uses.
PAD_COLOR = (0, 0, 0)


def select_best_resolution(image_size: tuple[int, int],
                           pinpoints: Sequence[Sequence[int]]) -> tuple[int, int]:
    """The pinpoint the image is resized into, as transformers'
    ``image_processing_utils.select_best_resolution`` picks it.

    ``image_size`` is (height, width); each pinpoint is (height, width); the result is
    (height, width). The winner keeps most of the image's pixels once fitted inside
    (``int()``-floored sizes, capped at the original pixel count: upscaling earns
    nothing); among equals, the one with the least padding; among exact ties, the first
    in the list.

    Ties are common: every image that fits the 1x2 and 2x1 grids whole, without
    downscaling (e.g. anything up to 336 x 336 with LLaVA-1.6's pinpoints
    ``[[336, 672], [672, 336], ...]``), ties between them, and transformers takes
    ``[336, 672]`` as height 336, width 672: a 1x2 (wide) grid, even for a tall image.
    The original LLaVA reads the same entry as width 336, height 672 and takes a 2x1
    (tall) grid for those images.
    """
    orig_h, orig_w = (int(x) for x in image_size)
    if orig_h <= 0 or orig_w <= 0:
        raise ValueError(f"image size must be positive, got {image_size!r}")
    best, best_effective, best_wasted = None, 0, float("inf")
    for height, width in pinpoints:
        scale = min(width / orig_w, height / orig_h)
        effective = min(int(orig_w * scale) * int(orig_h * scale), orig_w * orig_h)
        wasted = width * height - effective
        if effective > best_effective or (effective == best_effective and wasted < best_wasted):
            best, best_effective, best_wasted = (int(height), int(width)), effective, wasted
    if best is None:
        raise ValueError("no grid pinpoint to choose from")
    return best


def fit_size(image_size: tuple[int, int], target: tuple[int, int]) -> tuple[int, int]:
    """(height, width) of the image resized, aspect kept, to fit ``target`` (height,
    width): one side equal to the target's, the other ``ceil``-ed and capped, as
    transformers' ``get_patch_output_size`` does."""
    orig_h, orig_w = image_size
    target_h, target_w = target
    scale_w, scale_h = target_w / orig_w, target_h / orig_h
    if scale_w < scale_h:
        return min(math.ceil(orig_h * scale_w), target_h), target_w
    return target_h, min(math.ceil(orig_w * scale_h), target_w)


def unpadded_shape(image_size: tuple[int, int],
                   grid_hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """Where the image lies in a padded feature map of ``grid_hw`` (height, width):
    ``(top, left, height, width)`` of the part kept by transformers' ``unpad_image``
    (the same arithmetic as the processor's ``_get_unpadded_features``): the image's
    extent scaled to the map, ``int(round(x, 7))``, and the difference removed evenly
    from both sides (``// 2`` each, so an odd difference keeps one padded row)."""
    orig_h, orig_w = image_size
    cur_h, cur_w = grid_hw
    if orig_w / orig_h > cur_w / cur_h:
        new_h = int(round(orig_h * (cur_w / orig_w), 7))
        pad = (cur_h - new_h) // 2
        return pad, 0, cur_h - 2 * pad, cur_w
    new_w = int(round(orig_w * (cur_h / orig_h), 7))
    pad = (cur_w - new_w) // 2
    return 0, pad, cur_h, cur_w - 2 * pad


@dataclass(frozen=True)
class AnyresPlan:
    """How one image of ``image_size`` (height, width) is tiled and how many positions
    it takes in the prompt, known before any pixel is touched.

    Inputs (from the model's config): ``pinpoints`` (``image_grid_pinpoints``, each
    (height, width), multiples of ``tile_size``), ``tile_size`` (the tower's
    ``image_size``), ``patch_size``, ``strategy`` (``vision_feature_select_strategy``:
    ``"default"`` drops the CLS token, ``"full"`` keeps every token) and
    ``num_additional_image_tokens`` (tokens the tower emits besides its patches: 1 for
    CLIP's CLS, 0 for SigLIP; ``None``: 1 with ``"default"``, 0 with ``"full"``, as the
    llava-hf processor configs have it).

    ``max_tiles`` (ours, not transformers'): at most this many tiles in all, the base
    view included. Pinpoints needing more than ``max_tiles - 1`` grid tiles are dropped
    *before* the selection, which then runs as usual on what is left; when nothing is
    left (``max_tiles=1``, or 2 with the usual pinpoints, whose smallest grid is 1x2)
    the image is the base view alone followed by one ``image_newline``, the layout
    transformers' ``pack_image_features`` gives a single-tile image. Fewer tiles means
    fewer tower runs and fewer prompt positions (a faster first token on a CPU) at the
    cost of detail; the outputs then differ from transformers' by design. ``None``:
    no limit, exactly transformers.

    As in transformers, a very long image can lose its whole grid to the unpadding
    (the image's extent on the feature map floors to 0 patches, e.g. wider than 72:1 in
    LLaVA-1.6's 1x3 grid): a wide one then gets no grid position at all, a tall one a
    newline per row with no feature between them.

    Derived fields: ``resolution`` (the chosen pinpoint, (height, width); ``None`` for
    the base view alone), ``grid`` ((rows, cols) of tiles; (0, 0) for none), ``n_tiles``
    (1 + rows * cols), ``tokens_per_tile`` (features per tile after the selection
    strategy), ``unpadded`` ((top, left, height, width) of the kept part of the grid's
    feature map, in patches) and ``n_positions`` (the prompt positions, the number of
    ``<image>`` tokens transformers' ``LlavaNextProcessor`` expands one ``<image>`` to
    when ``max_tiles`` is ``None``).
    """

    image_size: tuple[int, int]
    pinpoints: tuple[tuple[int, int], ...]
    tile_size: int
    patch_size: int
    strategy: Strategy = "default"
    max_tiles: int | None = None
    num_additional_image_tokens: int | None = None

    resolution: tuple[int, int] | None = field(init=False)
    grid: tuple[int, int] = field(init=False)
    n_tiles: int = field(init=False)
    tokens_per_tile: int = field(init=False)
    unpadded: tuple[int, int, int, int] | None = field(init=False)
    n_positions: int = field(init=False)

    def __post_init__(self) -> None:
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731
        h, w = (int(x) for x in self.image_size)
        if h <= 0 or w <= 0:
            raise ValueError(f"image size must be positive, got {self.image_size!r}")
        set_("image_size", (h, w))
        pins = tuple((int(a), int(b)) for a, b in self.pinpoints)
        set_("pinpoints", pins)
        tile, patch = int(self.tile_size), int(self.patch_size)
        if not pins:
            raise LlavaEdgeError("image_grid_pinpoints is empty")
        if tile <= 0 or patch <= 0 or tile < patch:
            raise LlavaEdgeError(f"bad tile size {tile} / patch size {patch}")
        bad = [p for p in pins if p[0] <= 0 or p[1] <= 0 or p[0] % tile or p[1] % tile]
        if bad:
            # transformers' image processor cuts ceil(size / tile) tiles but the model
            # lays out floor(size / tile) of them: they only agree on multiples.
            raise LlavaEdgeError(f"grid pinpoints {bad} are not multiples of the tile size {tile}")
        if self.strategy not in ("default", "full"):
            raise LlavaEdgeError(f"unsupported vision_feature_select_strategy {self.strategy!r}")
        extra = self.num_additional_image_tokens
        if extra is None:
            extra = 1 if self.strategy == "default" else 0
            set_("num_additional_image_tokens", extra)
        if self.strategy == "default" and extra < 1:
            raise LlavaEdgeError("vision_feature_select_strategy 'default' drops the CLS "
                                 "token, but this tower has none; use 'full'")
        if self.max_tiles is not None and self.max_tiles < 1:
            raise ValueError(f"max_tiles must be at least 1, got {self.max_tiles}")

        side = tile // patch  # floored, as transformers does (384 / 14 -> 27 patches)
        # The processor: patches + additional tokens, one fewer with "default".
        per_tile = side * side + extra - (1 if self.strategy == "default" else 0)
        set_("tokens_per_tile", per_tile)

        allowed = list(pins)
        if self.max_tiles is not None:
            allowed = [p for p in pins if (p[0] // tile) * (p[1] // tile) <= self.max_tiles - 1]
        if not allowed:
            set_("resolution", None)
            set_("grid", (0, 0))
            set_("n_tiles", 1)
            set_("unpadded", None)
            set_("n_positions", per_tile + 1)  # the base view and one newline
            return
        if per_tile != side * side:
            # transformers would reshape a grid of (side * side + 1)-token tiles into
            # nonsense (or fail): a spatial grid needs patch tokens alone.
            raise LlavaEdgeError(
                f"strategy {self.strategy!r} keeps {per_tile - side * side} extra token(s) per "
                f"tile, which cannot be laid out as a grid; use 'default' with a CLS tower")
        res = select_best_resolution((h, w), allowed)
        rows, cols = res[0] // tile, res[1] // tile
        top, left, uh, uw = unpadded_shape((h, w), (rows * side, cols * side))
        set_("resolution", res)
        set_("grid", (rows, cols))
        set_("n_tiles", 1 + rows * cols)
        set_("unpadded", (top, left, uh, uw))
        set_("n_positions", per_tile + uh * uw + uh)  # + one newline per kept row

    @classmethod
    def for_image(cls, image: Image.Image, **kwargs) -> "AnyresPlan":
        """The plan for a PIL image (whose ``.size`` is (width, height))."""
        return cls(image_size=(image.height, image.width), **kwargs)

    @classmethod
    def from_hf_config(cls, config: dict, image_size: tuple[int, int],
                       max_tiles: int | None = None,
                       num_additional_image_tokens: int | None = None) -> "AnyresPlan":
        """From a ``LlavaNextConfig`` dict (a checkpoint's ``config.json``).
        ``num_additional_image_tokens`` defaults to the tower's: 1 for CLIP, 0 otherwise."""
        vision = config["vision_config"]
        if num_additional_image_tokens is None:
            num_additional_image_tokens = 1 if vision.get("model_type", "clip_vision_model") \
                .startswith("clip") else 0
        return cls(
            image_size=image_size, pinpoints=config["image_grid_pinpoints"],
            tile_size=vision["image_size"], patch_size=vision["patch_size"],
            strategy=config.get("vision_feature_select_strategy", "default"),
            max_tiles=max_tiles, num_additional_image_tokens=num_additional_image_tokens,
        )


#: ``LlavaNextImageProcessor.crop_size`` when a config gives none
_HF_DEFAULT_CROP_SIZE = {"height": 224, "width": 224}


def recipe_from_hf(image_processor: dict) -> PreprocessRecipe:
    """The :class:`PreprocessRecipe` of a ``LlavaNextImageProcessor`` config dict (the
    ``image_processor`` of a ``processor_config.json``), checked for one transformers
    quirk: the processor cuts the grid at ``crop_size["height"]`` whenever a crop size is
    set, *even with* ``do_center_crop=False`` (and the class default is 224), so a
    SigLIP-style processor (fixed ``size``, no crop) must carry a matching crop size or
    its tiles do not fit the model."""
    recipe = PreprocessRecipe.from_hf(image_processor)
    crop = image_processor.get("crop_size", _HF_DEFAULT_CROP_SIZE)
    cut = crop.get("height") if isinstance(crop, dict) else crop
    if cut and (cut, cut) != recipe.output_size:
        raise LlavaEdgeError(
            f"this LLaVA-NeXT image processor cuts {cut}-pixel tiles (crop_size) but "
            f"outputs {recipe.output_size}: transformers' tiles would not fit the tower")
    return recipe


def _base_size(recipe: PreprocessRecipe) -> tuple[int, int]:
    """(height, width) the base view is squashed to: the processor's ``size``, squared
    when it is a shortest edge (``LlavaNextImageProcessor._preprocess``'s ``size_tuple``)."""
    if recipe.resize_shortest_edge:
        return recipe.resize_shortest_edge, recipe.resize_shortest_edge
    return recipe.resize_height, recipe.resize_width


def _grid_tile_size(recipe: PreprocessRecipe) -> int:
    """The side the padded image is cut at: the crop height, else the size's height,
    else the shortest edge (the processor's ``patch_size``, not the tower's)."""
    return recipe.crop_height or recipe.resize_height or recipe.resize_shortest_edge


def anyres_tiles(image: Image.Image, plan: AnyresPlan, recipe: PreprocessRecipe) -> np.ndarray:
    """``pixel_values`` [n_tiles, 3, S, S] float32 for one image, the base view first,
    then the grid's tiles row by row, as ``LlavaNextImageProcessorPil`` makes them.

    ``recipe``: the LLaVA-NeXT image processor's settings as a
    :class:`~llava_edge.runtimes.preprocess.PreprocessRecipe` (:func:`recipe_from_hf`
    reads and checks them; no pad-to-square). HF uses Pillow's BICUBIC (``resample=3``,
    the recipe's ``resample``) for all three resizes: the base view, the aspect-kept fit
    and each tile's shortest-edge resize (a no-op when the crop size equals the size, as
    in every released checkpoint).
    Each tile then takes the same resize / crop / rescale / normalize steps as a
    LLaVA-1.5 image (:func:`~llava_edge.runtimes.preprocess.preprocess`).
    """
    if recipe.pad_to_square:
        raise LlavaEdgeError("LLaVA-NeXT tiles are padded, not the image: use a recipe "
                             "without pad_to_square")
    image = to_rgb(image)
    if (image.height, image.width) != plan.image_size:
        raise ValueError(f"the plan is for a {plan.image_size} (height, width) image, "
                         f"got {(image.height, image.width)}")
    if recipe.output_size != (plan.tile_size, plan.tile_size):
        raise LlavaEdgeError(f"the processor makes {recipe.output_size} inputs but the "
                             f"tower takes {plan.tile_size}x{plan.tile_size}")
    tile = _grid_tile_size(recipe)
    if plan.resolution is not None and tile != plan.tile_size:
        raise LlavaEdgeError(f"the processor cuts {tile}-pixel tiles but the tower takes "
                             f"{plan.tile_size}")

    base_h, base_w = _base_size(recipe)
    views = [image.resize((base_w, base_h), resample=recipe.resample)]
    if plan.resolution is not None:
        res_h, res_w = plan.resolution
        new_h, new_w = fit_size(plan.image_size, plan.resolution)
        canvas = Image.new("RGB", (res_w, res_h), PAD_COLOR)
        # the padding is split evenly, the odd pixel after (divmod in transformers)
        canvas.paste(image.resize((new_w, new_h), resample=recipe.resample),
                     ((res_w - new_w) // 2, (res_h - new_h) // 2))
        for top in range(0, res_h, tile):
            for left in range(0, res_w, tile):
                views.append(canvas.crop((left, top, left + tile, top + tile)))
    return np.stack([preprocess(v, recipe) for v in views])


def pack_features(features: np.ndarray, plan: AnyresPlan, image_newline: np.ndarray) -> np.ndarray:
    """The prompt positions [n_positions, D] of one image from its tiles' projected
    features [n_tiles, n_patches, D] (base view first, grid row by row), as
    ``LlavaNextModel.pack_image_features`` lays them out: the base view's tokens, then
    the grid's feature map row by row (tiles side by side), cut to ``plan.unpadded``,
    with ``image_newline`` [D] after each row. The base view alone (``plan.n_tiles ==
    1``) is followed by one ``image_newline``.

    ``n_patches`` is ``plan.tokens_per_tile`` (the strategy already applied, as the
    model's projector sees them) or, with ``"default"``, the tower's full output with its
    leading CLS token, which is dropped here (the projector acts on each token
    alone, so dropping before or after it is the same).
    """
    features = np.asarray(features)
    newline = np.asarray(image_newline).astype(features.dtype, copy=False)
    if features.ndim != 3 or features.shape[0] != plan.n_tiles:
        raise ValueError(f"expected features of shape [{plan.n_tiles}, n_patches, D], "
                         f"got {features.shape}")
    n, d = features.shape[1], features.shape[2]
    if plan.strategy == "default" and n == plan.tokens_per_tile + 1:
        features = features[:, 1:]  # HF's get_image_features: selected[:, 1:]
    elif n != plan.tokens_per_tile:
        raise ValueError(f"expected {plan.tokens_per_tile} features per tile, got {n}")
    if newline.shape != (d,):
        raise ValueError(f"image_newline has shape {newline.shape}, features have D={d}")

    base = features[0]
    if plan.resolution is None:
        return np.concatenate([base, newline[None]], axis=0)
    rows, cols = plan.grid
    side = plan.tile_size // plan.patch_size
    grid = features[1:].reshape(rows, cols, side, side, d)
    grid = grid.transpose(0, 2, 1, 3, 4).reshape(rows * side, cols * side, d)
    top, left, uh, uw = plan.unpadded
    grid = grid[top:top + uh, left:left + uw]
    grid = np.concatenate([grid, np.broadcast_to(newline, (uh, 1, d))], axis=1)
    out = np.concatenate([base, grid.reshape(-1, d)], axis=0)
    assert out.shape[0] == plan.n_positions
    return out
