"""Test images shared by the runtime, reuse, torch-reference and serve tests."""

from __future__ import annotations

import numpy as np
from PIL import Image


def scene(seed: int = 0, size: tuple[int, int] = (80, 64)) -> Image.Image:
    """A light background with one 20x20 square of a random colour at a random place
    (``size`` is width, height); the same ``seed`` gives the same image."""
    rng = np.random.default_rng(seed)
    arr = np.full((size[1], size[0], 3), 235, np.uint8)
    y, x = rng.integers(0, size[1] - 20), rng.integers(0, size[0] - 20)
    arr[y:y + 20, x:x + 20] = rng.integers(0, 256, 3)
    return Image.fromarray(arr)
