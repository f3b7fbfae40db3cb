"""Short-answer questions about the synthetic shapes: training questions about the train
images and a held-out eval set, LLaVA-1.5's VQA style.

LLaVA-1.5 evaluates VQAv2 and GQA by asking for "a single word or phrase" and trains on
such questions in its instruction mix (VQAv2, GQA, OKVQA, OCR-VQA with the same
instruction). This module does the same for the shapes: questions of five kinds (colour,
shape, count, position, size), the answer a word or phrase ("red", "circle", "2", "top
left", "small"), scored by exact match after normalization
(:func:`llava_edge.trainer.evaluate.normalize_answer`).

* ``stage2_short.json``: ``per_image`` questions of different kinds per *train* image, one
  multi-turn conversation per image (the image marker in the first turn only);
* ``eval_short.json`` and ``images/eval_short/``: ``n_eval`` held-out scenes (a random
  stream of their own: never a train scene, never the multiple-choice eval's), one
  question each, the kinds balanced.

Run as ``llava-edge data shapes-short DATASET_DIR [--per-image N]``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from llava_edge.atomic_dir import write_dir, write_json
from llava_edge.data.shapes import IMAGE_MARKER, refer, render_scene, sample_scene
from llava_edge.data.shapes.samples import _mc_question
from llava_edge.errors import LlavaEdgeError
from llava_edge.trainer.shapes_mc import question_conversations

SHORT_TRAIN_FILE = "stage2_short.json"
SHORT_EVAL_FILE = "eval_short.json"
SHORT_EVAL_IMAGES = "eval_short"  # under the dataset's images/
SHORT_INSTRUCTION = "Answer the question using a single word or phrase."  # LLaVA-1.5's
SHORT_KINDS: tuple[str, ...] = ("color", "shape", "count", "position", "size")
_STREAM_TRAIN = 1002  # random streams of their own, apart from the generator's and shapes-mc's
_STREAM_EVAL = 1003


def short_question(scene, kind: str, rng: np.random.Generator) -> tuple[str, str] | None:
    """``(question, answer)`` of ``kind`` about ``scene``, or None when it cannot be asked
    unambiguously. The first four kinds ask what the multiple-choice eval asks, in the
    same words; ``size`` asks about a shape named without its size."""
    if kind == "size":
        target = scene.shapes[int(rng.integers(len(scene.shapes)))]
        ref = refer(scene, target, rng, exclude="size")
        return None if ref is None else (f"What size is the {ref}?", target.size)
    mc = _mc_question(scene, kind, rng, "fixed")
    return None if mc is None else (mc.question, mc.correct)


def prompt(question: str, with_image: bool = True) -> str:
    """The user turn: the question, then LLaVA-1.5's short-answer instruction."""
    text = f"{question}\n{SHORT_INSTRUCTION}"
    return f"{IMAGE_MARKER}\n{text}" if with_image else text


def short_train_samples(seed: int, n_train: int, per_image: int = 5) -> list[dict]:
    """One conversation per train image: ``per_image`` questions of different kinds in a
    random order (several per sample share the image tokens, so each answer costs fewer
    tokens to train on)."""
    def ask(scene, kind: str, rng) -> list[dict] | None:
        qa = short_question(scene, kind, rng)
        return None if qa is None else [{"from": "human", "value": prompt(qa[0])},
                                        {"from": "gpt", "value": qa[1]}]

    return question_conversations(seed, _STREAM_TRAIN, n_train, SHORT_KINDS, per_image, ask,
                                  "short")


def short_eval_scenes(seed: int, n_eval: int) -> list[tuple[object, dict]]:
    """``n_eval`` held-out ``(scene, sample)`` pairs, kinds balanced and shuffled; a scene
    about which the drawn question cannot be asked is drawn again."""
    rng = np.random.default_rng([seed, _STREAM_EVAL])
    kinds = [SHORT_KINDS[i % len(SHORT_KINDS)] for i in range(n_eval)]
    kinds = [kinds[int(i)] for i in rng.permutation(n_eval)]
    out = []
    for i, kind in enumerate(kinds):
        while (qa := short_question(scene := sample_scene(rng), kind, rng)) is None:
            pass
        out.append((scene, {
            "id": f"eval-short-{i:06d}", "image": f"{SHORT_EVAL_IMAGES}/{i:06d}.png",
            "conversations": [{"from": "human", "value": prompt(qa[0])},
                              {"from": "gpt", "value": qa[1]}],
            "answer": qa[1], "question": qa[0], "kind": kind}))
    return out


def write_shapes_short(dataset_dir: str | Path, per_image: int = 5) -> tuple[Path, Path]:
    """Write ``stage2_short.json``, ``eval_short.json`` and the eval's images into a
    dataset made by ``llava-edge data shapes``; returns the two JSON paths."""
    root = Path(dataset_dir)
    info_path = root / "dataset.json"
    try:
        info = json.loads(info_path.read_text())
        config = info["config"]
        seed, n_train, n_eval = config["seed"], config["n_train"], config["n_eval"]
        image_size = config["image_size"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise LlavaEdgeError(f"{root} is not a dataset written by `llava-edge data shapes` "
                             f"({info_path.name}: {e})") from None
    train = short_train_samples(seed, n_train, per_image)
    pairs = short_eval_scenes(seed, n_eval)

    def draw(folder: Path) -> None:
        for scene, sample in pairs:
            render_scene(scene, image_size).save(folder / Path(sample["image"]).name)

    # The images appear complete or not at all, before the JSON that names them.
    write_dir(root / "images" / SHORT_EVAL_IMAGES, draw)
    return (write_json(root / SHORT_TRAIN_FILE, train),
            write_json(root / SHORT_EVAL_FILE, [sample for _, sample in pairs]))
