"""Referring to a shape in a scene by the fewest attributes that single it out."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from llava_edge.data.shapes.scenes import Scene, Shape


# Attribute combinations a referring expression may use, shortest first.
_REF_ATTRIBUTES: tuple[tuple[str, ...], ...] = (
    ("kind",),
    ("color",),
    ("size",),
    ("color", "kind"),
    ("size", "kind"),
    ("size", "color"),
    ("size", "color", "kind"),
    ("position",),
    ("kind", "position"),
    ("color", "position"),
    ("color", "kind", "position"),
)


def _matches(shape: Shape, other: Shape, attributes: Sequence[str]) -> bool:
    return all(getattr(shape, a) == getattr(other, a) for a in attributes)


def _render_ref(shape: Shape, attributes: Sequence[str], generic: str = "shape") -> str:
    """Noun phrase without article: "red circle", "small shape", "shape at the top".

    ``generic`` is the noun used when the kind is not mentioned.
    """
    words = [shape.size] if "size" in attributes else []
    if "color" in attributes:
        words.append(shape.color)
    words.append(shape.kind if "kind" in attributes else generic)
    if "position" in attributes:
        words.append(shape.location)
    return " ".join(words)


def refer(
    scene: Scene,
    target: Shape,
    rng: np.random.Generator,
    exclude: str | None = None,
    max_candidates: int = 3,
    generic: str = "shape",
) -> str | None:
    """A noun phrase that picks out ``target`` and no other shape in ``scene``.

    ``exclude`` names an attribute the phrase must not use (the one being asked about, so
    that "What color is the red circle?" is never asked). Picks at random among the
    ``max_candidates`` shortest unique phrases, for variety. Returns None if there is none
    (two shapes identical in everything but the excluded attribute). ``generic`` is the
    noun for phrases that do not name the kind ("object" reads better in "What shape is
    the red object?").
    """
    candidates = [
        attrs
        for attrs in _REF_ATTRIBUTES
        if exclude not in attrs and sum(_matches(target, s, attrs) for s in scene.shapes) == 1
    ][:max_candidates]
    if not candidates:
        return None
    return _render_ref(target, candidates[int(rng.integers(len(candidates)))], generic)
