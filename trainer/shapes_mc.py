"""Multiple-choice training questions about the synthetic shapes *training* images.

The shapes eval set (``eval_mc.json``) asks ScienceQA-style multiple choice and wants the
option's letter, a format ``stage2_instruct.json`` never shows (nor "Where is ...?" with
grid-cell answers). LLaVA-1.5's own instruction mix carries multiple-choice data for the
same reason (A-OKVQA, with the same "Answer with the option's letter ..." instruction).
This writes such questions about the train images, never the eval images, drawn by the
data generator from the same scenes that the images and captions show. The ``tiny-demo``
recipe trains stage 2 on it next to ``stage2_instruct.json``.

Run as ``llava-edge data shapes-mc DATASET_DIR [--per-image N] [--reply
letter|statement]``; writes ``DATASET_DIR/stage2_mc.json``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from llava_edge.atomic_dir import write_json
from llava_edge.data.shapes import EVAL_KINDS, MC_REPLIES, mc_sample, train_scene
from llava_edge.errors import LlavaEdgeError

MC_TRAIN_FILE = "stage2_mc.json"
_STREAM = 1001  # a random stream of its own, apart from the generator's


def shapes_mc_samples(seed: int, n_train: int, per_image: int = 4,
                      options: str = "fixed", reply: str = "letter") -> list[dict]:
    """One conversation per train image: ``per_image`` multiple-choice questions of
    different kinds, in random order. The first turn (with the image) is exactly the eval
    format; later turns ask about the same image. Several questions per sample share the
    system prompt and image tokens, so each answer costs fewer tokens to train on.
    ``options`` lists the choices as the eval does (see ``MC_OPTION_ORDERS``); ``reply``
    writes each answer as the letter or as a sentence and the letter (see ``MC_REPLIES``)."""
    if reply not in MC_REPLIES:
        raise LlavaEdgeError(f"unknown reply style {reply!r}; choose one of "
                             f"{', '.join(MC_REPLIES)}")

    def ask(scene, kind: str, rng) -> list[dict] | None:
        mc = mc_sample(scene, kind, rng, "", "", options, reply)
        return None if mc is None else mc["conversations"]

    return question_conversations(seed, _STREAM, n_train, EVAL_KINDS, per_image, ask, "mc")


def question_conversations(seed: int, stream: int, n_train: int, kinds: Sequence[str],
                           per_image: int, ask: Callable[..., list[dict] | None],
                           tag: str) -> list[dict]:
    """One conversation per train image (id ``train-NNNNNN-<tag>``): questions of
    ``per_image`` different ``kinds`` in a random order. ``ask(scene, kind, rng)`` gives
    the [human, gpt] turns of one question, the human turn starting with the image marker,
    or None when it cannot be asked; the marker is kept in the first question only."""
    if not 1 <= per_image <= len(kinds):
        raise LlavaEdgeError(f"per_image must be between 1 and {len(kinds)}")
    samples = []
    for i in range(n_train):
        rng = np.random.default_rng([seed, stream, i])
        scene = train_scene(seed, i)
        turns, asked = [], []
        for k in rng.permutation(len(kinds)):
            qa = ask(scene, kinds[int(k)], rng)
            if qa is None:
                continue
            question, answer = qa
            if turns:  # the image marker belongs to the first question only
                question = {**question, "value": question["value"].removeprefix("<image>\n")}
            turns += [question, answer]
            asked.append(kinds[int(k)])
            if len(asked) == per_image:
                break
        samples.append({"id": f"train-{i:06d}-{tag}", "image": f"train/{i:06d}.png",
                        "conversations": turns, "kinds": asked})
    return samples


def write_shapes_mc(dataset_dir: str | Path, per_image: int = 4,
                    reply: str = "letter") -> Path:
    """Write ``stage2_mc.json`` into a dataset made by ``llava-edge data shapes``."""
    root = Path(dataset_dir)
    info_path = root / "dataset.json"
    try:
        info = json.loads(info_path.read_text())
        seed, n_train = info["config"]["seed"], info["config"]["n_train"]
        # Datasets of generator version 1 had no choice: their options were shuffled.
        options = info["config"].get("mc_options", "shuffled")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise LlavaEdgeError(f"{root} is not a dataset written by `llava-edge data shapes` "
                             f"({info_path.name}: {e})") from None
    samples = shapes_mc_samples(seed, n_train, per_image, options, reply)
    return write_json(root / MC_TRAIN_FILE, samples)
