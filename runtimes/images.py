"""Turn what users hand us (a path, bytes, a PIL image, a numpy frame) into an RGB image.

Conversions follow transformers: EXIF orientation is applied (as ``load_image`` does),
images with transparency are composited on white, grayscale / palette / 16-bit images
go through Pillow's ``convert("RGB")``. Size is checked from the header, before any pixel
is decoded, so a decompression bomb is refused cheaply.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from llava_edge.errors import ImageError

ImageInput = Union[str, Path, bytes, bytearray, Image.Image, np.ndarray]

DEFAULT_MAX_PIXELS = 64_000_000  # ~8000 x 8000; larger inputs are refused before decoding


def load_image(image: ImageInput, max_pixels: int = DEFAULT_MAX_PIXELS,
               bgr: bool = False) -> Image.Image:
    """Return ``image`` as an RGB PIL image, or raise :class:`ImageError` saying why not.

    ``bgr=True`` says a numpy frame is in OpenCV's BGR order.
    """
    if isinstance(image, np.ndarray):
        return _from_array(image, max_pixels, bgr)
    if isinstance(image, Image.Image):
        _check_size(image.size, max_pixels, "image")
        return to_rgb(ImageOps.exif_transpose(image))
    if isinstance(image, (bytes, bytearray)):
        if not image:
            raise ImageError("image bytes are empty")
        return _decode(io.BytesIO(image), "image bytes", max_pixels)
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise ImageError(f"{path}: no such image file")
        if path.stat().st_size == 0:
            raise ImageError(f"{path}: image file is empty")
        with open(path, "rb") as f:
            return _decode(f, str(path), max_pixels)
    raise ImageError(f"unsupported image type {type(image).__name__} (give a path, bytes, "
                     "a PIL image or a numpy HxWx3 uint8 array)")


def _decode(stream, name: str, max_pixels: int) -> Image.Image:
    try:
        with warnings.catch_warnings():
            # We apply our own limit below; Pillow's global one would only warn or raise
            # its own exception type.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(stream)  # reads the header only
            _check_size(img.size, max_pixels, name)
            img.load()
    except ImageError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageError(f"{name}: image too large ({e})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{name}: not a readable image ({e})") from None
    return to_rgb(ImageOps.exif_transpose(img))


def _check_size(size: tuple[int, int], max_pixels: int, name: str) -> None:
    w, h = size
    if w <= 0 or h <= 0:
        raise ImageError(f"{name}: image has no pixels ({w}x{h})")
    if w * h > max_pixels:
        raise ImageError(f"{name}: {w}x{h} = {w * h:,} pixels is over the limit of "
                         f"{max_pixels:,} (max_pixels)")


def _from_array(arr: np.ndarray, max_pixels: int, bgr: bool) -> Image.Image:
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise ImageError(f"numpy image must be HxW, HxWx3 or HxWx4, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        raise ImageError(f"numpy image must be uint8, got {arr.dtype}")
    _check_size((arr.shape[1], arr.shape[0]), max_pixels, "numpy image")
    if bgr and arr.ndim == 3:
        arr = arr[:, :, [2, 1, 0, 3][: arr.shape[2]]]
    return to_rgb(Image.fromarray(np.ascontiguousarray(arr)))


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB as transformers' ``convert_to_rgb`` makes it: transparency composited on white."""
    if img.mode == "RGB":
        return img
    if "A" in img.getbands() or img.info.get("transparency") is not None:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")
