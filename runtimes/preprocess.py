"""Image preprocessing in numpy + Pillow, reproducing the model's Hugging Face processor.

The recipe is read from the checkpoint's processor config and stored in the bundle
manifest, so the runtime needs neither torch nor transformers. Two families:

* CLIP (``CLIPImageProcessor``): resize the shortest edge, center crop, rescale, normalize.
* SigLIP (``SiglipImageProcessor``): resize to a fixed height x width, rescale, normalize.

Optionally LLaVA-1.5's pad-to-square first (``expand2square``: the image centred on a
square of the processor's mean colour), as the original LLaVA training does.
Every step follows transformers' arithmetic (integer sizes, crop offsets, float64
rescale then float32) so the output matches the HF processor to ~1e-7.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

from llava_edge.errors import LlavaEdgeError


@dataclass(frozen=True)
class PreprocessRecipe:
    """Everything needed to turn an RGB image into ``pixel_values``."""

    resize_shortest_edge: int | None  # CLIP: shortest edge to this, aspect kept
    resize_height: int | None  # SigLIP: fixed size
    resize_width: int | None
    crop_height: int | None  # None: no center crop
    crop_width: int | None
    resample: int  # PIL resampling filter (3 = bicubic)
    rescale_factor: float
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    pad_to_square: bool = False

    @property
    def output_size(self) -> tuple[int, int]:
        """(height, width) of ``pixel_values``."""
        if self.crop_height:
            return self.crop_height, self.crop_width
        if self.resize_height:
            return self.resize_height, self.resize_width
        raise LlavaEdgeError("preprocessing recipe has neither a crop nor a fixed size")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PreprocessRecipe":
        d = dict(d)
        d["image_mean"], d["image_std"] = tuple(d["image_mean"]), tuple(d["image_std"])
        return cls(**d)

    @classmethod
    def from_hf(cls, image_processor: dict, pad_to_square: bool = False) -> "PreprocessRecipe":
        """From the ``image_processor`` dict of a HF ``processor_config.json`` (or a
        ``preprocessor_config.json``). ``pad_to_square``: pad first (the checkpoint was
        trained so); a ``LlavaImageProcessor`` with ``do_pad`` pads by itself, so the
        recipe pads for it too."""
        p = image_processor
        # LlavaImageProcessor's do_pad is expand2square; other processors' do_pad means
        # something else (LLaVA-NeXT pads its tiles), so it counts for this one alone.
        if p.get("do_pad") and str(p.get("image_processor_type", "")).startswith(
                "LlavaImageProcessor"):
            pad_to_square = True
        size = p.get("size") or {}
        crop = p.get("crop_size") if p.get("do_center_crop", False) else None
        if isinstance(crop, int):
            crop = {"height": crop, "width": crop}
        if not p.get("do_resize", True):
            raise LlavaEdgeError("image processors without resizing are not supported")
        if "shortest_edge" in size:
            shortest, height, width = size["shortest_edge"], None, None
        elif "height" in size and "width" in size:
            shortest, height, width = None, size["height"], size["width"]
        else:
            raise LlavaEdgeError(f"unsupported image processor size {size!r}")
        if shortest and not crop:
            raise LlavaEdgeError("a shortest-edge resize without a center crop gives "
                                 "variable image sizes, which LLaVA-1.5 does not use")
        return cls(
            resize_shortest_edge=shortest, resize_height=height, resize_width=width,
            crop_height=crop["height"] if crop else None,
            crop_width=crop["width"] if crop else None,
            resample=int(p.get("resample", 3)),
            rescale_factor=float(p.get("rescale_factor", 1 / 255)) if p.get("do_rescale", True) else 1.0,
            image_mean=tuple(p.get("image_mean", (0.0, 0.0, 0.0))) if p.get("do_normalize", True) else (0.0, 0.0, 0.0),
            image_std=tuple(p.get("image_std", (1.0, 1.0, 1.0))) if p.get("do_normalize", True) else (1.0, 1.0, 1.0),
            pad_to_square=pad_to_square,
        )


def expand_to_square(img: Image.Image, mean: tuple[float, float, float]) -> Image.Image:
    """LLaVA's ``expand2square``: centre ``img`` on a square filled with the mean colour."""
    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    background = tuple(int(x * 255) for x in mean)
    square = Image.new(img.mode, (side, side), background)
    square.paste(img, ((side - w) // 2, (side - h) // 2))
    return square


def preprocess(img: Image.Image, recipe: PreprocessRecipe) -> np.ndarray:
    """An RGB PIL image -> float32 ``pixel_values`` of shape [3, H, W]."""
    if recipe.pad_to_square:
        img = expand_to_square(img, recipe.image_mean)
    w, h = img.size
    if recipe.resize_shortest_edge:
        s = recipe.resize_shortest_edge
        # transformers: the short side becomes s, the long side int(s * long / short).
        if w <= h:
            new_w, new_h = s, int(s * h / w)
        else:
            new_w, new_h = int(s * w / h), s
    else:
        new_w, new_h = recipe.resize_width, recipe.resize_height
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), resample=recipe.resample)
    arr = np.asarray(img, dtype=np.uint8)
    if recipe.crop_height:
        arr = _center_crop(arr, recipe.crop_height, recipe.crop_width)
    # transformers rescales in float64 and casts to float32, then normalizes in float32.
    x = (arr.astype(np.float64) * recipe.rescale_factor).astype(np.float32)
    x = (x - np.asarray(recipe.image_mean, np.float32)) / np.asarray(recipe.image_std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def _center_crop(arr: np.ndarray, ch: int, cw: int) -> np.ndarray:
    h, w = arr.shape[:2]
    if h < ch or w < cw:  # transformers pads with zeros around a too-small image
        padded = np.zeros((max(h, ch), max(w, cw), arr.shape[2]), arr.dtype)
        top, left = (padded.shape[0] - h) // 2, (padded.shape[1] - w) // 2
        padded[top:top + h, left:left + w] = arr
        arr, (h, w) = padded, padded.shape[:2]
    top, left = (h - ch) // 2, (w - cw) // 2
    return arr[top:top + ch, left:left + cw]
