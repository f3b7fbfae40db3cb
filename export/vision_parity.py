"""Fidelity of an exported vision graph against the PyTorch module, on a fixed image set.

The images are deterministic and synthetic (no dataset is needed): shape scenes from
:mod:`llava_edge.data.shapes`, uniform noise and colour gradients, at sizes that exercise
the processor's resize and crop, plus any images in a calibration folder. They are
preprocessed by the checkpoint's own Hugging Face image processor, so the pixels are
exactly what the model sees in transformers.

Figures per variant: the largest absolute difference over all outputs, and the cosine
similarity of each image token's embedding (mean and minimum over all tokens).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from llava_edge.data.shapes import render_scene, sample_scene
from llava_edge.errors import LlavaEdgeError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")
# (width, height) of the noise and gradient images: wide, tall, small and large, so that
# resize and centre crop (or squash) all take part.
_SIZES = ((97, 211), (500, 333), (64, 64), (1024, 300))
# (name, width, height) of the images a tiled (LLaVA-NeXT) graph is measured on besides
# those: a few pixels, much taller or wider than any grid (the unpadding cuts the most),
# odd sizes (rounding in the fit and the unpadding).
_TILING_SIZES = (("tiny", 5, 7), ("tall", 30, 190), ("wide", 190, 30), ("odd", 333, 517))


class CalibrationImagesError(LlavaEdgeError):
    """The calibration folder is missing, empty or holds an unreadable image."""


@dataclass(frozen=True)
class ParityFigures:
    """How close an exported graph's ``image_embeds`` are to PyTorch's."""

    max_abs_err: float
    mean_cosine: float
    min_cosine: float
    n_images: int
    n_tokens: int

    def to_dict(self) -> dict:
        """JSON-ready; an infinite error (non-finite outputs) becomes ``None``."""
        return {k: (None if isinstance(v, float) and not np.isfinite(v) else v)
                for k, v in asdict(self).items()}


def synthetic_images(n: int = 8, seed: int = 0) -> list[tuple[str, Image.Image]]:
    """``n`` deterministic images, named: half shape scenes, the rest noise and gradients."""
    rng = np.random.default_rng([seed, 4])
    images: list[tuple[str, Image.Image]] = []
    n_scenes = (n + 1) // 2
    for i in range(n_scenes):
        size = (64, 96, 200, 336)[i % 4]
        images.append((f"shapes-{i}-{size}px", render_scene(sample_scene(rng), size)))
    for j in range(n - n_scenes):
        w, h = _SIZES[j % len(_SIZES)]
        if j % 2 == 0:
            pixels = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
            images.append((f"noise-{j}-{w}x{h}", Image.fromarray(pixels, "RGB")))
        else:
            images.append((f"gradient-{j}-{w}x{h}", _gradient(w, h, rng)))
    return images


def tiling_images(seed: int = 0) -> list[tuple[str, Image.Image]]:
    """Deterministic images of the aspect ratios and sizes that exercise LLaVA-NeXT's
    tiling (see ``_TILING_SIZES``), named; noise and gradients alternately."""
    rng = np.random.default_rng([seed, 5])
    images = []
    for i, (name, w, h) in enumerate(_TILING_SIZES):
        if i % 2:
            images.append((f"{name}-gradient-{w}x{h}", _gradient(w, h, rng)))
        else:
            pixels = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
            images.append((f"{name}-noise-{w}x{h}", Image.fromarray(pixels, "RGB")))
    return images


def _gradient(width: int, height: int, rng: np.random.Generator) -> Image.Image:
    """A smooth two-colour ramp along a random direction."""
    angle = rng.uniform(0, np.pi)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    t = x / max(width - 1, 1) * np.cos(angle) + y / max(height - 1, 1) * np.sin(angle)
    t = (t - t.min()) / max(t.max() - t.min(), 1e-9)
    a, b = rng.integers(0, 256, size=(2, 3))
    pixels = a[None, None, :] * (1 - t[..., None]) + b[None, None, :] * t[..., None]
    return Image.fromarray(pixels.round().astype(np.uint8), "RGB")


def folder_images(folder: str | Path) -> list[tuple[str, Image.Image]]:
    """Every image in ``folder`` (sorted by name, not recursive), loaded as RGB.

    Raises :class:`CalibrationImagesError` naming the folder or the file at fault.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CalibrationImagesError(
            f"calibration folder {folder} does not exist or is not a folder")
    files = sorted(p for p in folder.iterdir()
                   if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise CalibrationImagesError(
            f"calibration folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    images = []
    for path in files:
        try:
            with Image.open(path) as image:
                images.append((path.name, image.convert("RGB")))
        except (OSError, ValueError) as exc:
            raise CalibrationImagesError(
                f"calibration image {path} cannot be read: {exc}") from None
    return images


def preprocess(processor, images: list[Image.Image]) -> np.ndarray:
    """``pixel_values`` [N, 3, H, W] float32 from the checkpoint's HF image processor."""
    image_processor = getattr(processor, "image_processor", processor)
    out = image_processor(images=images, return_tensors="np")["pixel_values"]
    return np.ascontiguousarray(out, dtype=np.float32)


def batches(pixel_values: np.ndarray, batch_size: int):
    """Consecutive slices of at most ``batch_size`` images."""
    for start in range(0, len(pixel_values), batch_size):
        yield pixel_values[start:start + batch_size]


def torch_embeds(encoder, pixel_values: np.ndarray, batch_size: int = 4) -> np.ndarray:
    """The PyTorch module's ``image_embeds`` for ``pixel_values`` (float32)."""
    import torch

    outs = []
    with torch.inference_mode():
        for chunk in batches(pixel_values, batch_size):
            outs.append(encoder(torch.from_numpy(chunk)).float().numpy())
    return np.concatenate(outs)


def onnx_embeds(session, pixel_values: np.ndarray, batch_size: int = 4) -> np.ndarray:
    """An ONNX Runtime session's ``image_embeds`` for ``pixel_values`` (float32)."""
    name = session.get_inputs()[0].name
    outs = [session.run(None, {name: chunk})[0] for chunk in batches(pixel_values, batch_size)]
    return np.concatenate(outs).astype(np.float32)


def compare(reference: np.ndarray, candidate: np.ndarray) -> ParityFigures:
    """Max abs error and per-token cosine of ``candidate`` against ``reference``
    (both [n_images, n_tokens, n_embd])."""
    if reference.shape != candidate.shape:
        raise ValueError(
            f"shape mismatch: reference {reference.shape}, candidate {candidate.shape}")
    ref = reference.astype(np.float64)
    got = candidate.astype(np.float64)
    # A token with a NaN/inf anywhere counts as the worst match (cosine -1).
    finite = np.isfinite(got).all(-1)
    got = np.where(finite[..., None], got, 0.0)
    dots = (ref * got).sum(-1)
    norms = np.linalg.norm(ref, axis=-1) * np.linalg.norm(got, axis=-1)
    # Zero vectors on both sides match perfectly; on one side only, not at all.
    both_zero = (np.linalg.norm(ref, axis=-1) == 0) & (np.linalg.norm(got, axis=-1) == 0)
    cosine = np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), 0.0)
    cosine = np.where(both_zero, 1.0, cosine)
    cosine = np.where(finite, cosine, -1.0)
    return ParityFigures(
        max_abs_err=float(np.abs(ref - got).max()) if finite.all() else float("inf"),
        mean_cosine=float(cosine.mean()),
        min_cosine=float(cosine.min()),
        n_images=int(ref.shape[0]),
        n_tokens=int(ref.shape[0] * ref.shape[1]),
    )
