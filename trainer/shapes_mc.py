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
    if not 1 <= per_image <= len(EVAL_KINDS):
        raise LlavaEdgeError(f"per_image must be between 1 and {len(EVAL_KINDS)}")
    if reply not in MC_REPLIES:
        raise LlavaEdgeError(f"unknown reply style {reply!r}; choose one of "
                             f"{', '.join(MC_REPLIES)}")
    samples = []
    for i in range(n_train):
        rng = np.random.default_rng([seed, _STREAM, i])
        scene = train_scene(seed, i)
        turns, kinds = [], []
        for k in rng.permutation(len(EVAL_KINDS)):
            kind = EVAL_KINDS[int(k)]
            mc = mc_sample(scene, kind, rng, "", "", options, reply)
            if mc is None:
                continue
            question, answer = mc["conversations"]
            if turns:  # the image marker belongs to the first question only
                question = {**question, "value": question["value"].removeprefix("<image>\n")}
            turns += [question, answer]
            kinds.append(kind)
            if len(kinds) == per_image:
                break
        samples.append({"id": f"train-{i:06d}-mc", "image": f"train/{i:06d}.png",
                        "conversations": turns, "kinds": kinds})
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
