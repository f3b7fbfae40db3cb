"""A deterministic synthetic dataset in the LLaVA JSON format: coloured shapes on a grid.

Every image is drawn from a :class:`Scene` (one to three :class:`Shape` objects, each in its
own cell of a 3x3 grid), and every caption, question and answer is generated from that same
scene, so the answers are exact. The generator writes::

    root/
      images/train/000000.png ...   shared by stage 1 and stage 2 (as in LLaVA)
      images/eval/000000.png ...    held out, used only by the eval set
      stage1_captions.json          one short caption per train image (pretrain format)
      stage2_instruct.json          conversation / detailed description / reasoning + text-only
      eval_mc.json                  multiple choice, ScienceQA prompt style
      dataset.json                  config, counts, palette, generator version
      README.txt

Only numpy and Pillow are used. All randomness comes from ``numpy.random.default_rng``
seeded with ``[config.seed, stream, index]``: the same seed gives byte-identical files, and a
sample does not depend on how many others are generated (the first 30 train images of a
2000-image set are the 30 images of a 30-image set).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np
from PIL import Image, ImageDraw

from llava_edge.atomic_dir import write_dir
from llava_edge.errors import LlavaEdgeError

GENERATOR_VERSION = "2"  # 2: multiple-choice options in a fixed order by default

#: Named colours with fixed RGB values, far from each other and from the background.
COLORS: Mapping[str, tuple[int, int, int]] = MappingProxyType(
    {
        "red": (220, 30, 30),
        "green": (30, 160, 50),
        "blue": (30, 70, 220),
        "yellow": (235, 200, 20),
        "purple": (140, 50, 180),
        "orange": (245, 130, 20),
    }
)
KINDS: tuple[str, ...] = ("circle", "square", "triangle")
SIZES: tuple[str, ...] = ("small", "large")
BACKGROUND: tuple[int, int, int] = (242, 242, 236)

#: Side of a shape as a fraction of a grid cell. Small is about half of large, so the two
#: are easy to tell apart even at 32 px.
SIZE_FRACTION: Mapping[str, float] = MappingProxyType({"small": 0.5, "large": 0.85})

#: Names of the 3x3 grid cells, indexed [row][col].
CELL_NAMES: tuple[tuple[str, ...], ...] = (
    ("top left", "top", "top right"),
    ("left", "center", "right"),
    ("bottom left", "bottom", "bottom right"),
)
ROW_WORDS: tuple[str, ...] = ("top", "middle", "bottom")
COL_WORDS: tuple[str, ...] = ("left", "middle", "right")
NUMBER_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four")

STAGE1_FILE = "stage1_captions.json"
STAGE2_FILE = "stage2_instruct.json"
EVAL_FILE = "eval_mc.json"
IMAGE_MARKER = "<image>"
MC_INSTRUCTION = "Answer with the option's letter from the given choices directly."
EVAL_KINDS: tuple[str, ...] = ("color", "shape", "count", "position")
#: How multiple-choice options are listed. ``fixed``: every value the question can have, in
#: one fixed order per kind (colours in palette order, cells row by row, counts ascending),
#: so the letter names the answer and the eval measures what the model sees. ``shuffled``:
#: the answer and three random distractors in random order, so the model must also read the
#: options and point at the matching one; a 4-layer model trained from scratch for minutes
#: on a CPU stays at chance on that pointer step (measured; see the README's demo recipe).
MC_OPTION_ORDERS: tuple[str, ...] = ("fixed", "shuffled")
#: How a multiple-choice answer turn is written. ``letter``: the option's letter alone, as
#: the instruction asks (the eval's own answers). ``statement``: a sentence that names what
#: was asked about, then the letter ("The large square is red. The answer is A."); LLaVA's
#: ScienceQA parser reads the letter from "The answer is A". Training data only.
MC_REPLIES: tuple[str, ...] = ("letter", "statement")
#: The shape option that never appears in an image (only three kinds are drawn).
ABSENT_SHAPE = "star"

# Independent random streams, so that e.g. changing a caption template never moves a pixel.
_STREAM_TRAIN_SCENE = 1
_STREAM_EVAL = 2
_STREAM_STAGE1 = 3
_STREAM_STAGE2 = 4
_STREAM_STAGE2_MIX = 5
_STREAM_TEXT_ONLY = 6
_STREAM_EVAL_KINDS = 7

TEXT_ONLY_FRACTION = 0.05

CAPTION_PROMPTS: tuple[str, ...] = (
    "Describe the image briefly.",
    "Give a short caption for this image.",
    "What is in this picture? Answer in a short phrase.",
    "Write a brief caption for the image.",
    "Summarize the image in a few words.",
)
DETAIL_PROMPTS: tuple[str, ...] = (
    "Describe the following image in detail.",
    "Provide a detailed description of the given image.",
    "Give an elaborate explanation of the image you see.",
    "What do you see in this image? Describe every object.",
)


class ShapesConfigError(LlavaEdgeError, ValueError):
    """A :class:`ShapesConfig` field is out of range."""


class OutputExistsError(LlavaEdgeError, FileExistsError):
    """The output folder already exists and is not empty."""


@dataclass(frozen=True)
class ShapesConfig:
    """How many samples to generate, from which seed, at which image size."""

    n_train: int = 2000
    n_eval: int = 200
    seed: int = 0
    image_size: int = 64
    mc_options: str = "fixed"  # one of MC_OPTION_ORDERS

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ShapesConfigError` (a ``ValueError``) naming the first bad field."""
        _check_int("n_train", self.n_train, minimum=1)
        _check_int("n_eval", self.n_eval, minimum=0)
        _check_int("seed", self.seed, minimum=0)
        _check_int("image_size", self.image_size, minimum=32, maximum=1024)
        if self.mc_options not in MC_OPTION_ORDERS:
            raise ShapesConfigError(f"ShapesConfig.mc_options must be one of "
                                    f"{', '.join(MC_OPTION_ORDERS)}, got {self.mc_options!r}")


def _check_int(name: str, value: object, minimum: int, maximum: int | None = None) -> None:
    """Check that ``ShapesConfig.<name>`` is an int in ``[minimum, maximum]``."""
    # bool is an int subclass, but n_train=True is certainly a mistake.
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
        raise ShapesConfigError(f"ShapesConfig.{name} must be an integer, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        bounds = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
        raise ShapesConfigError(f"ShapesConfig.{name} must be {bounds}, got {value}")


@dataclass(frozen=True)
class ShapesDataset:
    """Where :func:`generate_shapes` wrote the dataset, and how much of it."""

    root: Path
    stage1: Path
    stage2: Path
    eval: Path
    image_folder: Path
    n_images: int
    counts: dict[str, int]  # samples per file: keys "stage1", "stage2", "eval"


# --------------------------------------------------------------------------------------
# Scenes
# --------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------------------


def _cell_edges(image_size: int) -> list[int]:
    """Pixel boundaries of the three grid rows/columns: [0, a, b, image_size]."""
    return [round(k * image_size / 3) for k in range(4)]


def shape_box(shape: Shape, image_size: int) -> tuple[int, int, int, int]:
    """Inclusive pixel box ``(x0, y0, x1, y1)`` of ``shape``, strictly inside its cell."""
    edges = _cell_edges(image_size)
    cx0, cx1 = edges[shape.col], edges[shape.col + 1]
    cy0, cy1 = edges[shape.row], edges[shape.row + 1]
    # From the smallest cell, so a size class has the same pixel size in every cell.
    side = max(3, int(image_size // 3 * SIZE_FRACTION[shape.size]))

    def offset(cell_len: int, jitter: float) -> int:
        # Keep at least one background pixel between the shape and the cell border, so
        # shapes in neighbouring cells never touch.
        slack = cell_len - side
        return 1 + int(jitter * max(slack - 1, 0))

    x0 = cx0 + offset(cx1 - cx0, shape.jitter_x)
    y0 = cy0 + offset(cy1 - cy0, shape.jitter_y)
    return x0, y0, x0 + side - 1, y0 + side - 1


def render_scene(scene: Scene, image_size: int) -> Image.Image:
    """Draw ``scene`` as an RGB image: flat colours, no anti-aliasing, light background."""
    image = Image.new("RGB", (image_size, image_size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for shape in scene.shapes:
        x0, y0, x1, y1 = shape_box(shape, image_size)
        fill = COLORS[shape.color]
        if shape.kind == "circle":
            draw.ellipse((x0, y0, x1, y1), fill=fill)
        elif shape.kind == "square":
            draw.rectangle((x0, y0, x1, y1), fill=fill)
        else:  # triangle, pointing up
            draw.polygon([((x0 + x1) / 2, y0), (x0, y1), (x1, y1)], fill=fill)
    return image


# --------------------------------------------------------------------------------------
# Referring to shapes
# --------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------
# Texts
# --------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------
# Samples
# --------------------------------------------------------------------------------------


def _conversation(turns: Sequence[QA], with_image: bool) -> list[dict[str, str]]:
    """LLaVA turns; the image marker goes at the start of the first human turn only."""
    out = []
    for i, (question, answer) in enumerate(turns):
        if i == 0 and with_image:
            question = f"{IMAGE_MARKER}\n{question}"
        out.append({"from": "human", "value": question})
        out.append({"from": "gpt", "value": answer})
    return out


def stage1_sample(index: int, scene: Scene, rng: np.random.Generator) -> dict:
    """A pretrain (feature alignment) sample: caption request -> short caption."""
    turns = [(_pick(rng, CAPTION_PROMPTS), caption(scene))]
    return {
        "id": f"train-{index:06d}",
        "image": f"train/{index:06d}.png",
        "conversations": _conversation(turns, with_image=True),
    }


def stage2_sample(index: int, scene: Scene, kind: str, rng: np.random.Generator) -> dict:
    """An instruction sample of ``kind`` "conversation", "detail" or "reasoning"."""
    if kind == "conversation":
        turns = conversation_turns(scene, rng)
    elif kind == "detail":
        turns = [(_pick(rng, DETAIL_PROMPTS), detailed_description(scene))]
    elif kind == "reasoning":
        turns = [reasoning_qa(scene, rng)]
    else:
        raise ValueError(f"unknown stage 2 sample kind {kind!r}")
    return {
        "id": f"train-{index:06d}-{kind}",
        "image": f"train/{index:06d}.png",
        "conversations": _conversation(turns, with_image=True),
    }


def text_only_sample(index: int, rng: np.random.Generator) -> dict:
    """A sample without an image, like LLaVA's ShareGPT text data."""
    return {
        "id": f"text-{index:06d}",
        "conversations": _conversation([_pick(rng, _TEXT_ONLY_QA)], with_image=False),
    }


def stage2_kinds(n_train: int, rng: np.random.Generator) -> list[str]:
    """Kind per train image: half conversation, a quarter each detail and reasoning.

    A shuffled fixed allotment rather than independent draws, so that even a tiny set
    contains every kind.
    """
    cycle = ("conversation", "detail", "conversation", "reasoning")
    kinds = [cycle[i % len(cycle)] for i in range(n_train)]
    return [kinds[int(i)] for i in rng.permutation(n_train)]


def mix_text_only(
    image_samples: list[dict], text_samples: list[dict], rng: np.random.Generator
) -> list[dict]:
    """Insert the text-only samples at random places among the image samples."""
    total = len(image_samples) + len(text_samples)
    text_slots = set(int(i) for i in rng.choice(total, size=len(text_samples), replace=False))
    images, texts = iter(image_samples), iter(text_samples)
    return [next(texts) if i in text_slots else next(images) for i in range(total)]


@dataclass(frozen=True)
class MCQuestion:
    """A multiple-choice question before it is lettered: the question, the correct option,
    every option in order, and the answer as a sentence that names what was asked about
    ("The large square is red.")."""

    question: str
    correct: str
    choices: list[str]
    statement: str


def _mc_question(
    scene: Scene, kind: str, rng: np.random.Generator, options: str
) -> MCQuestion | None:
    """A question of ``kind`` about ``scene``, or None if it cannot be asked unambiguously.
    ``options`` is one of :data:`MC_OPTION_ORDERS`."""
    target = _pick(rng, scene.shapes)
    if kind == "color":
        ref = refer(scene, target, rng, exclude="color")
        question, correct, every = f"What color is the {ref}?", target.color, list(COLORS)
        statement = f"The {ref} is {correct}."
    elif kind == "shape":
        ref = refer(scene, target, rng, exclude="kind", generic="object")
        question, correct, every = f"What shape is the {ref}?", target.kind, [*KINDS, ABSENT_SHAPE]
        statement = f"The {ref} is a {correct}."
    elif kind == "count":
        question, correct = _question_count(scene, rng)
        # Totals are 1-3, conditional counts 0-3: four consecutive options either way.
        low = 1 if question.startswith("How many shapes") else 0
        every = [str(v) for v in range(low, low + 4)]
        counted = question.removeprefix("How many ").split(" are there")[0]
        statement = f"The number of {counted} is {correct}."
    elif kind == "position":
        ref = refer(scene, target, rng, exclude="position")
        if ref is None:
            return None
        question, correct = f"Where is the {ref}?", target.position
        every = [name for row in CELL_NAMES for name in row]
        statement = f"The {ref} is {location_phrase(correct)}."
    else:
        raise ValueError(f"unknown eval question kind {kind!r}")
    if options == "fixed":
        return MCQuestion(question, correct, every, statement)
    if kind == "shape":  # the absent option is drawn from a few, as in generator version 1
        wrong = [k for k in KINDS if k != correct] + [_pick(rng, ("star", "hexagon", "heart"))]
    else:
        wrong = [v for v in every if v != correct]
        wrong = wrong if len(wrong) == 3 else _sample(rng, wrong, 3)
    shuffled = [str(c) for c in rng.permutation([correct, *wrong])]
    return MCQuestion(question, correct, shuffled, statement)


def _sample(rng: np.random.Generator, items: Sequence[str], k: int) -> list[str]:
    return [items[int(i)] for i in rng.choice(len(items), size=k, replace=False)]


def mc_sample(
    scene: Scene, kind: str, rng: np.random.Generator, sample_id: str, image: str,
    options: str = "fixed", reply: str = "letter",
) -> dict | None:
    """A multiple-choice question of ``kind`` about ``scene`` in the eval format (ScienceQA
    prompt, lettered options), or None if it cannot be asked unambiguously. ``image`` is
    the image path relative to the image folder; ``options`` is one of
    :data:`MC_OPTION_ORDERS`; ``reply`` (one of :data:`MC_REPLIES`) says how the answer
    turn is written. ``answer`` is the letter either way."""
    mc = _mc_question(scene, kind, rng, options)
    if mc is None:
        return None
    question, correct, choices = mc.question, mc.correct, mc.choices
    letters = "ABCDEFGHI"[: len(choices)]
    answer = letters[choices.index(correct)]
    said = f"{mc.statement} The answer is {answer}." if reply == "statement" else answer
    option_lines = "\n".join(
        f"{letter}. {choice}" for letter, choice in zip(letters, choices, strict=True)
    )
    prompt = f"{IMAGE_MARKER}\n{question}\n{option_lines}\n{MC_INSTRUCTION}"
    return {
        "id": sample_id,
        "image": image,
        "conversations": [{"from": "human", "value": prompt}, {"from": "gpt", "value": said}],
        "answer": answer,
        "choices": choices,
        "question": question,
        "kind": kind,
    }


def eval_scene_and_sample(index: int, kind: str, rng: np.random.Generator,
                          options: str = "fixed") -> tuple[Scene, dict]:
    """Draw an eval scene and a multiple-choice question of ``kind`` about it.

    Redraws the scene in the rare case the question cannot be asked unambiguously (two
    identical shapes make "Where is the red circle?" ambiguous), so the kinds stay balanced.
    """
    while True:
        scene = sample_scene(rng)
        sample = mc_sample(scene, kind, rng, f"eval-{index:06d}", f"eval/{index:06d}.png",
                           options)
        if sample is not None:
            return scene, sample


def train_scene(seed: int, index: int) -> Scene:
    """The scene of train image ``index`` in the dataset generated with ``seed`` (what its
    caption, instructions and pixels all describe)."""
    return sample_scene(_rng(seed, _STREAM_TRAIN_SCENE, index))


def eval_kinds(n_eval: int, rng: np.random.Generator) -> list[str]:
    """Balanced, shuffled eval question kinds."""
    kinds = [EVAL_KINDS[i % len(EVAL_KINDS)] for i in range(n_eval)]
    return [kinds[int(i)] for i in rng.permutation(n_eval)]


# --------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------


def _rng(seed: int, stream: int, index: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, stream, index])


def _write_json(path: Path, data: object) -> None:
    # Fixed formatting and key order so the same seed gives the same bytes.
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


_OPTIONS_README = {"fixed": "every possible answer, in one fixed order per question kind",
                   "shuffled": "the answer and 3 distractors, shuffled"}


def _readme(config: ShapesConfig, counts: Mapping[str, int]) -> str:
    return (
        "Synthetic shapes dataset in the LLaVA JSON format (generated by llava-edge).\n"
        "\n"
        "Each image shows 1-3 filled circles, squares or triangles in distinct cells of a\n"
        "3x3 grid; every caption, question and answer is generated from the same scene, so\n"
        "all answers are exact. Nothing here is real data.\n"
        "\n"
        f"generator: llava_edge.data.shapes version {GENERATOR_VERSION}\n"
        f"seed: {config.seed}\n"
        f"image size: {config.image_size}x{config.image_size}\n"
        f"train images (stage 1 and stage 2): {config.n_train}\n"
        f"eval images: {config.n_eval}\n"
        "\n"
        f"{STAGE1_FILE}: {counts['stage1']} caption samples (LLaVA pretrain format)\n"
        f"{STAGE2_FILE}: {counts['stage2']} instruction samples (conversation, detailed\n"
        "  description, complex reasoning, and about 5% text-only)\n"
        f"{EVAL_FILE}: {counts['eval']} multiple-choice questions (ScienceQA prompt style,\n"
        f"  options {config.mc_options}: {_OPTIONS_README[config.mc_options]})\n"
        "images/: image paths in the JSON files are relative to this folder\n"
    )


def _build(
    tmp: Path, config: ShapesConfig, progress: Callable[[int, int], None] | None
) -> dict[str, int]:
    """Write the whole dataset into ``tmp``; return the sample count per file."""
    seed = config.seed
    total = config.n_train + config.n_eval
    done = 0
    for split in ("train", "eval"):
        (tmp / "images" / split).mkdir(parents=True)

    def image_written() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    stage1: list[dict] = []
    stage2_images: list[dict] = []
    kinds = stage2_kinds(config.n_train, _rng(seed, _STREAM_STAGE2_MIX))
    for i in range(config.n_train):
        scene = sample_scene(_rng(seed, _STREAM_TRAIN_SCENE, i))
        render_scene(scene, config.image_size).save(tmp / "images" / "train" / f"{i:06d}.png")
        image_written()
        stage1.append(stage1_sample(i, scene, _rng(seed, _STREAM_STAGE1, i)))
        stage2_images.append(stage2_sample(i, scene, kinds[i], _rng(seed, _STREAM_STAGE2, i)))

    n_text = max(1, round(TEXT_ONLY_FRACTION * config.n_train))
    text_rng = _rng(seed, _STREAM_TEXT_ONLY)
    texts = [text_only_sample(j, text_rng) for j in range(n_text)]
    stage2 = mix_text_only(stage2_images, texts, text_rng)

    eval_samples: list[dict] = []
    for i, kind in enumerate(eval_kinds(config.n_eval, _rng(seed, _STREAM_EVAL_KINDS))):
        scene, sample = eval_scene_and_sample(i, kind, _rng(seed, _STREAM_EVAL, i),
                                              config.mc_options)
        render_scene(scene, config.image_size).save(tmp / "images" / "eval" / f"{i:06d}.png")
        image_written()
        eval_samples.append(sample)

    counts = {"stage1": len(stage1), "stage2": len(stage2), "eval": len(eval_samples)}
    _write_json(tmp / STAGE1_FILE, stage1)
    _write_json(tmp / STAGE2_FILE, stage2)
    _write_json(tmp / EVAL_FILE, eval_samples)
    _write_json(
        tmp / "dataset.json",
        {
            "name": "llava-edge synthetic shapes",
            "generator": "llava_edge.data.shapes",
            "generator_version": GENERATOR_VERSION,
            "config": asdict(config),
            "counts": counts,
            "n_images": total,
            "files": {
                "stage1": STAGE1_FILE,
                "stage2": STAGE2_FILE,
                "eval": EVAL_FILE,
                "image_folder": "images",
            },
            "colors": {name: list(rgb) for name, rgb in COLORS.items()},
            "background": list(BACKGROUND),
        },
    )
    (tmp / "README.txt").write_text(_readme(config, counts), encoding="utf-8")
    return counts


def _check_output(out: Path, overwrite: bool) -> None:
    """Refuse to write over a non-empty ``out`` unless ``overwrite``."""
    if overwrite or (not out.exists() and not out.is_symlink()):
        return
    if not out.is_dir():
        raise OutputExistsError(f"output path {out} exists and is not a folder")
    if any(out.iterdir()):
        raise OutputExistsError(
            f"output folder {out} exists and is not empty (use overwrite to replace it)"
        )


def generate_shapes(
    out_dir: str | Path,
    config: ShapesConfig,
    progress: Callable[[int, int], None] | None = None,
    *,
    overwrite: bool = False,
) -> ShapesDataset:
    """Generate the synthetic shapes dataset into ``out_dir`` and describe what was written.

    Writes into a temporary sibling folder and renames it into place at the end, so an
    interrupted run leaves nothing half-written. Raises :class:`OutputExistsError` (a
    ``FileExistsError``) if ``out_dir`` exists and is not empty, unless ``overwrite`` is
    true, in which case it is replaced. ``progress(done, total)`` is called after each
    image is written.
    """
    config.validate()
    out = Path(out_dir).absolute()
    _check_output(out, overwrite)

    def fill(tmp: Path) -> dict[str, int]:
        counts = _build(tmp, config, progress)
        _check_output(out, overwrite)  # again: something may have appeared while we worked
        return counts

    counts = write_dir(out, fill)
    return ShapesDataset(
        root=out,
        stage1=out / STAGE1_FILE,
        stage2=out / STAGE2_FILE,
        eval=out / EVAL_FILE,
        image_folder=out / "images",
        n_images=config.n_train + config.n_eval,
        counts=counts,
    )
