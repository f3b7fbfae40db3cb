"""Captions, detailed descriptions, conversation questions and reasoning questions, all
generated from the scene, so every answer is exact; and the text-only questions."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from llava_edge.data.shapes.config import (
    COLORS,
    COL_WORDS,
    KINDS,
    NUMBER_WORDS,
    ROW_WORDS,
    SIZES,
)
from llava_edge.data.shapes.refer import refer
from llava_edge.data.shapes.scenes import Scene, Shape


def _join(items: Sequence[str]) -> str:
    """Join phrases the English way: "a", "a and b", "a, b and c"."""
    if len(items) <= 2:
        return " and ".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def caption(scene: Scene) -> str:
    """Short caption: "a large red circle on the left and a small blue square at the top."."""
    return _join([f"a {s.describe()}" for s in scene.shapes]) + "."


def detailed_description(scene: Scene) -> str:
    """Several full sentences that mention every shape with all its attributes."""
    n = len(scene.shapes)
    noun = "shape" if n == 1 else "shapes"
    sentences = [f"The image shows {NUMBER_WORDS[n]} {noun} on a plain light background."]
    for i, shape in enumerate(scene.shapes):
        if i == 0:
            sentences.append(f"There is a {shape.describe()}.")
        elif i == n - 1 and n > 2:
            sentences.append(f"Finally, there is a {shape.describe()}.")
        else:
            sentences.append(f"There is also a {shape.describe()}.")
    if n > 1:
        sentences.append(_size_summary(scene))
    return " ".join(sentences)


def _size_summary(scene: Scene) -> str:
    """A sentence on sizes, e.g. "Two of the shapes are large and one is small."."""
    n_large = scene.count(lambda s: s.size == "large")
    n_small = len(scene.shapes) - n_large
    if n_small == 0 or n_large == 0:
        size = "large" if n_small == 0 else "small"
        which = "Both" if len(scene.shapes) == 2 else "All"
        return f"{which} of the shapes are {size}."
    first, n_first, second, n_second = (
        ("large", n_large, "small", n_small)
        if n_large >= n_small
        else ("small", n_small, "large", n_large)
    )
    verb = "is" if n_first == 1 else "are"
    return (
        f"{NUMBER_WORDS[n_first].capitalize()} of the shapes {verb} {first} "
        f"and {NUMBER_WORDS[n_second]} {'is' if n_second == 1 else 'are'} {second}."
    )


QA = tuple[str, str]  # (question, answer)


def _pick(rng: np.random.Generator, items: Sequence):
    return items[int(rng.integers(len(items)))]


def _question_count(scene: Scene, rng: np.random.Generator) -> QA:
    """A counting question with a number answer (total, by colour or by kind)."""
    choice = int(rng.integers(3))
    if choice == 0:
        return "How many shapes are there in the image?", str(len(scene.shapes))
    if choice == 1:
        color = _pick(rng, tuple(COLORS))
        return f"How many {color} shapes are there?", str(scene.count(lambda s: s.color == color))
    kind = _pick(rng, KINDS)
    return f"How many {kind}s are there?", str(scene.count(lambda s: s.kind == kind))


def _question_color(scene: Scene, rng: np.random.Generator) -> QA | None:
    target = _pick(rng, scene.shapes)
    ref = refer(scene, target, rng, exclude="color")
    return None if ref is None else (f"What color is the {ref}?", target.color)


def _question_shape(scene: Scene, rng: np.random.Generator) -> QA | None:
    target = _pick(rng, scene.shapes)
    ref = refer(scene, target, rng, exclude="kind", generic="object")
    return None if ref is None else (f"What shape is the {ref}?", target.kind)


def _question_size(scene: Scene, rng: np.random.Generator) -> QA | None:
    target = _pick(rng, scene.shapes)
    ref = refer(scene, target, rng, exclude="size")
    options = "large or small" if rng.random() < 0.5 else "small or large"
    return None if ref is None else (f"Is the {ref} {options}?", target.size)


def _question_column(scene: Scene, rng: np.random.Generator) -> QA | None:
    target = _pick(rng, scene.shapes)
    ref = refer(scene, target, rng, exclude="position")
    question = f"Is the {ref} on the left, in the middle, or on the right?"
    return None if ref is None else (question, COL_WORDS[target.col])


def _question_row(scene: Scene, rng: np.random.Generator) -> QA | None:
    target = _pick(rng, scene.shapes)
    ref = refer(scene, target, rng, exclude="position")
    question = f"Is the {ref} at the top, in the middle, or at the bottom?"
    return None if ref is None else (question, ROW_WORDS[target.row])


def _question_exists(scene: Scene, rng: np.random.Generator) -> QA | None:
    """A yes/no question about a colour and kind; half the time one that is there."""
    if rng.random() < 0.5:
        shape = _pick(rng, scene.shapes)
        color, kind = shape.color, shape.kind
    else:
        color, kind = _pick(rng, tuple(COLORS)), _pick(rng, KINDS)
    present = scene.count(lambda s: s.color == color and s.kind == kind) > 0
    return f"Is there a {color} {kind} in the image?", "yes" if present else "no"


_CONVERSATION_QUESTIONS: tuple[Callable[[Scene, np.random.Generator], QA | None], ...] = (
    _question_count,
    _question_color,
    _question_shape,
    _question_size,
    _question_column,
    _question_row,
    _question_exists,
)


def conversation_turns(scene: Scene, rng: np.random.Generator) -> list[QA]:
    """One to three direct questions of different types, each with a one-word answer."""
    n_turns = int(rng.choice([1, 2, 3], p=[0.2, 0.4, 0.4]))
    turns: list[QA] = []
    for index in rng.permutation(len(_CONVERSATION_QUESTIONS)):
        qa = _CONVERSATION_QUESTIONS[int(index)](scene, rng)
        if qa is not None:
            turns.append(qa)
        if len(turns) == n_turns:
            break
    return turns


def _relation(a: Shape, b: Shape) -> str:
    """Where ``a`` is relative to ``b``: "above and to the left of", "below", ..."""
    vertical = "above" if a.row < b.row else "below" if a.row > b.row else ""
    horizontal = "to the left of" if a.col < b.col else "to the right of" if a.col > b.col else ""
    # Shapes are in distinct cells, so at least one of the two is non-empty.
    return " and ".join(part for part in (vertical, horizontal) if part)


def _reasoning_count(scene: Scene, rng: np.random.Generator) -> QA:
    """Counting with a condition, answered by listing the shapes that satisfy it."""
    color = _pick(rng, tuple(COLORS))
    size = _pick(rng, SIZES)
    row_word = ROW_WORDS[int(rng.integers(3))]
    col_word = COL_WORDS[int(rng.integers(3))]
    # (condition, test, what is true of the shapes when none satisfies the condition)
    conditions: list[tuple[str, Callable[[Shape], bool], str]] = [
        (color, lambda s: s.color == color, f"not {color}"),
        (f"not {color}", lambda s: s.color != color, color),
        (size, lambda s: s.size == size, f"not {size}"),
        (
            f"in the {row_word} row",
            lambda s: ROW_WORDS[s.row] == row_word,
            f"not in the {row_word} row",
        ),
        (
            f"in the {col_word} column",
            lambda s: COL_WORDS[s.col] == col_word,
            f"not in the {col_word} column",
        ),
    ]
    condition, predicate, otherwise = _pick(rng, conditions)
    matching = [s for s in scene.shapes if predicate(s)]
    n = len(scene.shapes)
    listing = _join([f"a {s.describe()}" for s in scene.shapes])
    names = _join([f"the {s.color} {s.kind} {s.location}" for s in matching])
    if n == 1:
        sentences = [
            f"There is one shape: {listing}.",
            f"It is {condition if matching else otherwise}.",
        ]
    else:
        sentences = [f"There are {NUMBER_WORDS[n]} shapes: {listing}."]
        if not matching:
            # "None of them is not red" would be hard to parse; say what they all are.
            sentences.append(
                f"All of them are {otherwise}."
                if condition.startswith("not ")
                else f"None of them is {condition}."
            )
        elif len(matching) == 1:
            sentences.append(f"Only one is {condition}: {names}.")
        else:
            sentences.append(
                f"{NUMBER_WORDS[len(matching)].capitalize()} of them are {condition}: {names}."
            )
    sentences.append(f"So the answer is {len(matching)}.")
    return f"How many of the shapes are {condition}?", " ".join(sentences)


def _two_refs(
    scene: Scene, rng: np.random.Generator, exclude: str
) -> tuple[Shape, str, Shape, str] | None:
    """Two different shapes and phrases for them that do not use ``exclude``, or None.

    Tries the pairs in random order; None only if every pair has a shape that cannot be
    named without ``exclude`` (identical twins), where the question would give itself away.
    """
    n = len(scene.shapes)
    pairs = [(i, j) for i in range(n) for j in range(n) if i != j]
    for p in rng.permutation(len(pairs)):
        a, b = (scene.shapes[k] for k in pairs[int(p)])
        ref_a, ref_b = refer(scene, a, rng, exclude=exclude), refer(scene, b, rng, exclude=exclude)
        if ref_a is not None and ref_b is not None:
            return a, ref_a, b, ref_b
    return None


def _reasoning_relative(scene: Scene, rng: np.random.Generator) -> QA | None:
    """Where one shape is relative to another, reasoned from their grid positions."""
    found = _two_refs(scene, rng, exclude="position")
    if found is None:
        return None
    a, ref_a, b, ref_b = found
    relation = _relation(a, b)
    because = f"The {ref_a} is {a.location} and the {ref_b} is {b.location}"
    if rng.random() < 0.5:
        question = f"Where is the {ref_a} relative to the {ref_b}?"
        return question, f"{because}, so the {ref_a} is {relation} the {ref_b}."
    # A yes/no variant, asked about a relation that may or may not hold.
    asked = _pick(rng, ("above", "below", "to the left of", "to the right of"))
    verdict = "Yes" if asked in relation.split(" and ") else "No"
    question = f"Is the {ref_a} {asked} the {ref_b}?"
    return question, f"{verdict}. {because}, so the {ref_a} is {relation} the {ref_b}."


def _reasoning_larger(scene: Scene, rng: np.random.Generator) -> QA | None:
    """Which of two shapes is larger, reasoned from their sizes."""
    found = _two_refs(scene, rng, exclude="size")
    if found is None:
        return None
    a, ref_a, b, ref_b = found
    question = f"Which is larger, the {ref_a} or the {ref_b}?"
    if a.size == b.size:
        answer = f"The {ref_a} and the {ref_b} are both {a.size}, so they are the same size."
    else:
        bigger = ref_a if a.size == "large" else ref_b
        answer = f"The {ref_a} is {a.size} and the {ref_b} is {b.size}, so the {bigger} is larger."
    return question, answer


def reasoning_qa(scene: Scene, rng: np.random.Generator) -> QA:
    """One complex-reasoning question: conditional count, relative position or size.

    Relations need two shapes that can be named without giving the answer away; when
    there are none, the question is a conditional count, which is always possible.
    """
    if len(scene.shapes) >= 2:
        kind = int(rng.integers(3))
        if kind == 1 and (qa := _reasoning_relative(scene, rng)) is not None:
            return qa
        if kind == 2 and (qa := _reasoning_larger(scene, rng)) is not None:
            return qa
    return _reasoning_count(scene, rng)


# Text-only questions (no image), answerable from general knowledge.
_TEXT_ONLY_QA: tuple[QA, ...] = (
    ("How many sides does a triangle have?", "3"),
    ("How many sides does a square have?", "4"),
    ("How many corners does a triangle have?", "3"),
    ("How many corners does a square have?", "4"),
    ("How many corners does a circle have?", "0"),
    ("Which shape has no corners: a circle, a square or a triangle?", "circle"),
    ("Which shape has four equal sides: a circle, a square or a triangle?", "square"),
    ("Which shape has exactly three sides: a circle, a square or a triangle?", "triangle"),
    ("What color do you get by mixing red and yellow paint?", "orange"),
    ("What color do you get by mixing blue and yellow paint?", "green"),
    ("What color do you get by mixing red and blue paint?", "purple"),
    ("What color is a ripe banana?", "yellow"),
    ("What color is grass?", "green"),
    ("What color is a clear daytime sky?", "blue"),
    ("What is two plus one?", "3"),
)
