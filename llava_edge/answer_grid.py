"""A picture of eval answers: a grid of cells, each an eval image with its question, the
model's reply and the expected answer, framed green (right) or red (wrong).

Accuracy numbers say how often a model is wrong; a picture says *how*: whether it confuses
colours, positions or sizes is plain at a glance. :func:`pick_items` chooses a few
predictions of :func:`llava_edge.trainer.evaluate.evaluate` spread over the question kinds,
wrong ones included; :func:`write_answer_grid` draws them with PIL alone.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from llava_edge.atomic_dir import atomic_path
from llava_edge.errors import ImageError, LlavaEdgeError
from llava_edge.templates import IMAGE_TOKEN

# Geometry. The picture area is sized for an IMAGE_SIDE image upscaled by ``scale``, so that
# every cell has the same size whatever the images; a larger image is shrunk to fit.
IMAGE_SIDE = 64
MARGIN = 6  # between the cell's frame and its contents
BORDER = 4  # the green / red frame, thick enough to see in a scaled-down picture
QUESTION_LINES = 3  # a longer question is cut with "...": cells stay one size
TEXT_LINES = QUESTION_LINES + 3  # then "model: ...", "truth: ...", "right" / "wrong"

WHITE = (255, 255, 255)
BLACK = (0, 0, 0)
GREEN = (0, 150, 0)
RED = (210, 0, 0)


@dataclass(frozen=True)
class GridItem:
    image: Path  # an eval image file
    question: str
    answer: str  # the model's reply
    truth: str  # the expected answer
    correct: bool


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    # The default font ships with Pillow: no font file to find on the user's machine.
    return ImageFont.load_default()


def _line_height(font) -> int:
    # From the font's metrics, not a measured string: every line gets the same height.
    if hasattr(font, "getmetrics"):
        ascent, descent = font.getmetrics()
        return ascent + descent + 2
    return font.getbbox("Ag")[3] + 3


def cell_size(scale: int = 3) -> tuple[int, int]:
    """The (width, height) in pixels of one cell of a grid drawn with ``scale``."""
    side = IMAGE_SIDE * scale
    inset = BORDER + MARGIN
    return (side + 2 * inset,
            2 * inset + side + MARGIN + TEXT_LINES * _line_height(_font()))


def grid_size(n: int, columns: int = 4, scale: int = 3) -> tuple[int, int]:
    """The (width, height) in pixels of the grid of ``n`` items: ``min(n, columns)``
    columns (a short list makes no empty columns) and as many rows as they fill."""
    width, height = cell_size(scale)
    used = min(n, columns)
    return used * width, math.ceil(n / used) * height


def _printable(text: str, font) -> str:
    # The bitmap fallback font (Pillow without FreeType) encodes text as Latin-1 and
    # raises on anything else; a reply in another script must not stop the picture.
    if isinstance(font, ImageFont.FreeTypeFont):
        return text
    return text.encode("latin-1", "replace").decode("latin-1")


def _fit(text: str, width: int, font, cut: bool = False) -> str:
    """``text`` cut to ``width`` pixels, with "..." where it was cut (``cut``: end with
    "..." even if it fits, for a text that goes on past it)."""
    if not cut and font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "...") > width:
        text = text[:-1]
    return text + "..."


def _wrap(text: str, width: int, font, max_lines: int) -> list[str]:
    """``text`` in lines of at most ``width`` pixels, words kept whole where they fit, at
    most ``max_lines`` of them (the last ends with "..." when text was left over)."""
    lines: list[str] = []
    line = ""
    for word in text.split():
        candidate = f"{line} {word}" if line else word
        if font.getlength(candidate) <= width:
            line = candidate
            continue
        if line:
            lines.append(line)
        # A word wider than the cell (a long number, a URL) is broken by characters.
        while font.getlength(word) > width:
            cut = len(word) - 1
            while cut > 1 and font.getlength(word[:cut]) > width:
                cut -= 1
            lines.append(word[:cut])
            word = word[cut:]
        line = word
    if line:
        lines.append(line)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = _fit(lines[-1], width, font, cut=True)
    return lines


def _load(path: Path, box: int, scale: int) -> Image.Image:
    """The image at ``path`` upscaled by ``scale`` (NEAREST: the pixels the model saw, not
    a smoothed guess), shrunk to fit a ``box`` square if it is larger."""
    try:
        with Image.open(path) as opened:
            image = opened.convert("RGB")
    except (OSError, Image.DecompressionBombError) as e:
        raise ImageError(f"answer grid: cannot read image {path}: {e}") from e
    width, height = image.width * scale, image.height * scale
    shrink = min(1.0, box / width, box / height)
    size = (max(1, round(width * shrink)), max(1, round(height * shrink)))
    return image.resize(size, Image.Resampling.NEAREST)


def _draw_cell(canvas: Image.Image, item: GridItem, picture: Image.Image,
               left: int, top: int, scale: int, font) -> None:
    width, height = cell_size(scale)
    colour = GREEN if item.correct else RED
    draw = ImageDraw.Draw(canvas)
    draw.rectangle((left, top, left + width - 1, top + height - 1), outline=colour,
                   width=BORDER)
    inset = BORDER + MARGIN
    side = IMAGE_SIDE * scale
    canvas.paste(picture, (left + inset + (side - picture.width) // 2,
                           top + inset + (side - picture.height) // 2))
    text_width = width - 2 * inset
    lines = _wrap(_printable(item.question, font), text_width, font, QUESTION_LINES)
    lines += [""] * (QUESTION_LINES - len(lines))  # the answers line up across cells
    lines += [_fit(_printable(f"model: {item.answer}", font), text_width, font),
              _fit(_printable(f"truth: {item.truth}", font), text_width, font)]
    y = top + inset + side + MARGIN
    step = _line_height(font)
    for line in lines:
        draw.text((left + inset, y), line, fill=BLACK, font=font)
        y += step
    # Said in words too: the frame's colour alone is lost on a colour-blind reader.
    draw.text((left + inset, y), "right" if item.correct else "wrong", fill=colour, font=font)


def write_answer_grid(items: Sequence[GridItem], path: str | Path, *, columns: int = 4,
                      scale: int = 3) -> Path:
    """Draw ``items`` as a grid of ``columns`` cells a row (see :func:`grid_size`) on white
    and write it to ``path`` (PNG unless its suffix names another format Pillow writes),
    creating its folder. The file appears whole or not at all. Raises
    :class:`~llava_edge.errors.LlavaEdgeError` for no items or an unreadable image."""
    path = Path(path)
    if not items:
        raise LlavaEdgeError(f"answer grid {path}: no items to draw")
    if columns < 1 or scale < 1:
        raise ValueError(f"columns and scale must be at least 1, got {columns}, {scale}")
    # Every image is read before anything is written: a bad one leaves no file behind.
    pictures = [_load(Path(item.image), IMAGE_SIDE * scale, scale) for item in items]
    font = _font()
    canvas = Image.new("RGB", grid_size(len(items), columns, scale), WHITE)
    width, height = cell_size(scale)
    used = min(len(items), columns)
    for index, (item, picture) in enumerate(zip(items, pictures, strict=True)):
        row, column = divmod(index, used)
        _draw_cell(canvas, item, picture, column * width, row * height, scale, font)
    path.parent.mkdir(parents=True, exist_ok=True)
    image_format = Image.registered_extensions().get(path.suffix.lower(), "PNG")
    with atomic_path(path, mode=0o644) as tmp:
        canvas.save(tmp, format=image_format)
    return path


def _question(sample: dict) -> str:
    """The sample's question: its ``question`` field, or else the first line of its first
    human turn that is not the image marker (the option lines and the instruction after
    it would not fit a cell)."""
    if sample.get("question"):
        return str(sample["question"])
    for turn in sample.get("conversations", []):
        if turn.get("from") == "human":
            lines = [line.strip() for line in str(turn.get("value", "")).splitlines()]
            lines = [line for line in lines if line and line != IMAGE_TOKEN]
            return lines[0] if lines else ""
    return ""


def _truth(sample: dict, expected: str) -> str:
    # A letter alone ("B") says little in a picture; the option it names says what it is.
    choices = sample.get("choices")
    if isinstance(choices, list) and len(expected) == 1 and "A" <= expected <= "Z":
        index = ord(expected) - ord("A")
        if index < len(choices):
            return f"{expected} ({choices[index]})"
    return expected


def pick_items(predictions: Sequence, samples: Sequence[dict], image_folder: str | Path,
               n: int = 12) -> list[GridItem]:
    """Up to ``n`` items from ``predictions`` (:class:`~llava_edge.trainer.evaluate.Prediction`
    objects, one per sample of ``samples``, in the same order), taken in turn from each
    kind in sorted order, each kind's first wrong answer (if any) before its others, so
    that the picture shows every kind and the model's mistakes. Samples with no image are
    left out. Deterministic: the same inputs give the same items."""
    if len(predictions) != len(samples):
        raise LlavaEdgeError(f"answer grid: {len(predictions)} predictions for "
                             f"{len(samples)} samples")
    folder = Path(image_folder)
    by_kind: dict[str, list[GridItem]] = defaultdict(list)
    for prediction, sample in zip(predictions, samples, strict=True):
        if "id" in sample and str(sample["id"]) != prediction.sample_id:
            raise LlavaEdgeError(f"answer grid: prediction {prediction.sample_id} is not "
                                 f"for sample {sample['id']}: give them in the same order")
        if "image" not in sample:
            continue
        by_kind[prediction.kind].append(GridItem(
            image=folder / sample["image"], question=_question(sample),
            answer=prediction.output.strip(), truth=_truth(sample, prediction.expected),
            correct=prediction.correct))
    queues = []
    for kind in sorted(by_kind):
        queue = by_kind[kind]
        wrong = next((i for i, item in enumerate(queue) if not item.correct), None)
        if wrong is not None:
            queue.insert(0, queue.pop(wrong))
        queues.append(queue)
    picked: list[GridItem] = []
    for round_ in range(max((len(q) for q in queues), default=0)):
        for queue in queues:
            if len(picked) < n and round_ < len(queue):
                picked.append(queue[round_])
    # With fewer places than kinds the kinds that fit may all be right: a mistake, where
    # there is one, is worth more to see than one more right answer.
    if picked and all(item.correct for item in picked):
        mistake = next((q[0] for q in queues if not q[0].correct), None)
        if mistake is not None:
            picked[-1] = mistake
    return picked
