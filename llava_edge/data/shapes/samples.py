"""LLaVA JSON samples: stage 1 captions, stage 2 instructions, text-only samples and the
multiple-choice eval."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from llava_edge.data.shapes.config import (
    ABSENT_SHAPE,
    CAPTION_PROMPTS,
    CELL_NAMES,
    COLORS,
    DETAIL_PROMPTS,
    EVAL_KINDS,
    IMAGE_MARKER,
    KINDS,
    MC_INSTRUCTION,
    _STREAM_TRAIN_SCENE,
    _rng,
)
from llava_edge.data.shapes.refer import refer
from llava_edge.data.shapes.scenes import Scene, location_phrase, sample_scene
from llava_edge.data.shapes.texts import (
    QA,
    caption,
    conversation_turns,
    detailed_description,
    reasoning_qa,
    _TEXT_ONLY_QA,
    _pick,
    _question_count,
)


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
