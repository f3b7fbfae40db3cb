"""A small text corpus, generated on the fly, to train preset tokenizers offline.

It mixes the words of the synthetic shapes data (so answer words like "red" or
"triangle" become single tokens, which the tiny models learn far more easily),
multiple-choice option lines (so every option letter " A" .. " I" is one token, as in
real LLaMA vocabularies, rather than a space plus a byte token), the
system prompts of the templates, plain English, digits, punctuation and a little code.
Nothing is downloaded; the same seed gives the same corpus.
"""

from __future__ import annotations

import numpy as np

from llava_edge.templates import CHATML_SYSTEM, VICUNA_SYSTEM

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "black", "white", "gray", "pink"]
SHAPES = ["circle", "square", "triangle", "rectangle", "star", "shape", "shapes", "circles",
          "squares", "triangles"]
PLACES = ["left", "right", "top", "bottom", "center", "middle", "corner", "above", "below",
          "next to", "top left", "bottom right"]
LETTERS = list("ABCDEFGHI")  # the shapes eval lists up to nine options
SIZES = ["small", "large", "big", "tiny", "larger", "smaller", "largest", "smallest"]

_ENGLISH = """\
The image shows a simple scene with a few coloured shapes on a plain background.
Describe the picture in detail. What is in the image? How many objects can you see?
Answer the question using a single word or phrase. Is there a circle in the photo?
Which shape is closer to the top of the image? What colour is the largest shape?
There are two shapes: a red circle on the left and a blue square on the right.
A robot arm picks up the cup from the table and places it next to the plate.
The camera looks at a kitchen counter with a bowl, a knife and three apples.
Please answer with the letter of the correct option. Options: A, B, C, D.
Answer with the option's letter from the given choices directly.
Hello! How can I help you today? Thank you very much, that is very helpful.
The quick brown fox jumps over the lazy dog. She sells sea shells by the sea shore.
Machine learning models learn patterns from data; vision language models also see images.
It was a bright cold day in April, and the clocks were striking thirteen.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 12 25 100 256 1024 3.14 2,048 1e-5 -7 +42 50%.
Punctuation: ( ) [ ] { } < > , . ; : ! ? ' " - _ / \\ | @ # $ % ^ & * = + ~ `
def forward(self, x):\n    return self.proj(x) + 1\nfor i in range(10):\n    print(i)
{"id": "000123", "image": "train/000123.png", "conversations": []}
Ünïcödé, café, naïve, Straße, 東京, 北京, Привет, مرحبا, 😀 🙂 👍
"""


def corpus_lines(seed: int = 0, n_generated: int = 4000) -> list[str]:
    """The corpus as a list of lines (deterministic for a given seed)."""
    rng = np.random.default_rng(seed)
    lines = [line for line in _ENGLISH.splitlines() if line.strip()]
    lines += [VICUNA_SYSTEM, CHATML_SYSTEM]
    pick = lambda words: words[int(rng.integers(len(words)))]  # noqa: E731
    patterns = [
        lambda: f"a {pick(SIZES)} {pick(COLOURS)} {pick(SHAPES)} at the {pick(PLACES)}.",
        lambda: f"What colour is the {pick(SHAPES)}? {pick(COLOURS).capitalize()}.",
        lambda: f"How many {pick(SHAPES)} are there? {int(rng.integers(0, 10))}",
        lambda: f"The {pick(COLOURS)} {pick(SHAPES)} is {pick(PLACES)} the {pick(COLOURS)} one.",
        lambda: f"USER: <image>\nWhere is the {pick(COLOURS)} {pick(SHAPES)}? ASSISTANT: {pick(PLACES)}",
        lambda: f"Is the {pick(SHAPES)} {pick(SIZES)}? Yes, it is {pick(SIZES)} and {pick(COLOURS)}.",
        lambda: " ".join(str(int(x)) for x in rng.integers(0, 1000, size=6)),
        lambda: "\n".join(f"{letter}. {pick(COLOURS)} {pick(SHAPES)}" for letter in LETTERS)
        + f"\nAnswer with the option's letter. ASSISTANT: {pick(LETTERS)}",
    ]
    for _ in range(n_generated):
        lines.append(patterns[int(rng.integers(len(patterns)))]())
    return lines
