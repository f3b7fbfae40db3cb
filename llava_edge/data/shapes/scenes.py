"""Scenes: one to three shapes, each in its own cell of the 3x3 grid, drawn from a seeded
random generator."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from llava_edge.data.shapes.config import CELL_NAMES, COLORS, KINDS, SIZES


@dataclass(frozen=True)
class Shape:
    """One filled shape in one cell of the 3x3 grid.

    ``jitter_x``/``jitter_y`` in [0, 1) place the shape inside its cell, as a fraction of the
    free space, so that the same scene can be drawn at any image size.
    """

    kind: str
    color: str
    size: str
    row: int
    col: int
    jitter_x: float = 0.5
    jitter_y: float = 0.5

    @property
    def position(self) -> str:
        """The grid cell name: "top left", "top", ..., "center", ..., "bottom right"."""
        return CELL_NAMES[self.row][self.col]

    @property
    def location(self) -> str:
        """The position as a phrase: "at the top left", "on the left", "in the center"."""
        return location_phrase(self.position)

    def describe(self) -> str:
        """Full description without article: "large red circle on the left"."""
        return f"{self.size} {self.color} {self.kind} {self.location}"


def location_phrase(position: str) -> str:
    """Turn a cell name into the phrase English uses for it."""
    if position == "center":
        return "in the center"
    if position in ("left", "right"):
        return f"on the {position}"
    return f"at the {position}"


@dataclass(frozen=True)
class Scene:
    """The shapes of one image, in reading order (top row first, left to right)."""

    shapes: tuple[Shape, ...]

    def count(self, predicate: Callable[[Shape], bool] = lambda s: True) -> int:
        """How many shapes satisfy ``predicate``."""
        return sum(1 for s in self.shapes if predicate(s))


def sample_scene(rng: np.random.Generator) -> Scene:
    """Draw one to three shapes in distinct grid cells (so they can never overlap)."""
    n_shapes = int(rng.integers(1, 4))
    cells = sorted(int(c) for c in rng.choice(9, size=n_shapes, replace=False))
    shapes = []
    for cell in cells:
        shapes.append(
            Shape(
                kind=KINDS[int(rng.integers(len(KINDS)))],
                color=tuple(COLORS)[int(rng.integers(len(COLORS)))],
                size=SIZES[int(rng.integers(len(SIZES)))],
                row=cell // 3,
                col=cell % 3,
                jitter_x=float(rng.random()),
                jitter_y=float(rng.random()),
            )
        )
    return Scene(tuple(shapes))
