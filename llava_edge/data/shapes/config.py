"""What a shapes dataset is made of: the palette, kinds, sizes, grid, file names, random
streams, prompts, and the typed config and result."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np

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


def _rng(seed: int, stream: int, index: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, stream, index])
