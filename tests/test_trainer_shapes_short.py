"""Short-answer questions about the shapes (``shapes_short``): LLaVA-1.5's "single word or
phrase" prompt, answers that match the scenes, a held-out eval with images of its own."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

from llava_edge.cli import run
from llava_edge.data.shapes import (
    CELL_NAMES,
    COLORS,
    KINDS,
    SIZES,
    ShapesConfig,
    generate_shapes,
    render_scene,
    train_scene,
)
from llava_edge.errors import LlavaEdgeError
from llava_edge.trainer.shapes_short import (
    SHORT_INSTRUCTION,
    SHORT_KINDS,
    short_eval_scenes,
    short_question,
    short_train_samples,
    write_shapes_short,
)

ANSWERS = {"color": set(COLORS), "shape": set(KINDS), "size": set(SIZES),
           "position": {name for row in CELL_NAMES for name in row},
           "count": {"0", "1", "2", "3"}}


def _matching(scene, phrase: str):
    """The shapes of ``scene`` that a referring phrase ("small red shape at the top")
    fits: every attribute word it names must match."""
    out = []
    for s in scene.shapes:
        words = phrase
        if s.location in words:
            words = words.replace(s.location, "")
        elif " at the " in words or " on the " in words or " in the " in words:
            continue
        names = set(words.split()) - {"shape", "object"}
        if names <= {s.kind, s.color, s.size}:
            out.append(s)
    return out


def _check_answer(scene, question: str, answer: str) -> None:
    """Recompute the answer of a generated question from the scene itself."""
    if m := re.fullmatch(r"What (color|shape|size) is the (.+)\?", question):
        (target,) = _matching(scene, m.group(2))  # the phrase picks out exactly one shape
        attr = {"color": "color", "shape": "kind", "size": "size"}[m.group(1)]
        assert answer == getattr(target, attr)
    elif m := re.fullmatch(r"Where is the (.+)\?", question):
        (target,) = _matching(scene, m.group(1))
        assert answer == target.position
    elif question == "How many shapes are there in the image?":
        assert answer == str(len(scene.shapes))
    elif m := re.fullmatch(r"How many (\w+) shapes are there\?", question):
        assert answer == str(scene.count(lambda s: s.color == m.group(1)))
    elif m := re.fullmatch(r"How many (\w+)s are there\?", question):
        assert answer == str(scene.count(lambda s: s.kind == m.group(1)))
    else:
        raise AssertionError(f"unexpected question {question!r}")


def test_every_kind_is_asked_and_answered_as_the_scene_says() -> None:
    rng = np.random.default_rng(0)
    for i in range(60):
        scene = train_scene(0, i)
        for kind in SHORT_KINDS:
            qa = short_question(scene, kind, rng)
            if qa is None:
                continue
            assert qa[1] in ANSWERS[kind]
            _check_answer(scene, *qa)


def test_train_samples_are_multi_turn_with_the_image_first() -> None:
    samples = short_train_samples(seed=0, n_train=30, per_image=5)
    assert [s["image"] for s in samples] == [f"train/{i:06d}.png" for i in range(30)]
    for i, s in enumerate(samples):
        turns = s["conversations"]
        assert [t["from"] for t in turns] == ["human", "gpt"] * len(s["kinds"])
        assert len(set(s["kinds"])) == len(s["kinds"]) >= 4
        assert turns[0]["value"].startswith("<image>\n")
        assert all("<image>" not in t["value"] for t in turns[1:])
        for q, a in zip(turns[::2], turns[1::2]):
            question = q["value"].removeprefix("<image>\n")
            assert question.endswith(f"\n{SHORT_INSTRUCTION}")
            _check_answer(train_scene(0, i), question.split("\n")[0], a["value"])
    with pytest.raises(LlavaEdgeError, match="per_image"):
        short_train_samples(seed=0, n_train=2, per_image=6)


def test_eval_is_balanced_held_out_and_written_with_its_images(tmp_path) -> None:
    ds = generate_shapes(tmp_path / "shapes", ShapesConfig(n_train=20, n_eval=25, seed=3))
    train_file, eval_file = write_shapes_short(ds.root, per_image=3)
    evals = json.loads(eval_file.read_text())
    assert len(evals) == 25 and len(json.loads(train_file.read_text())) == 20
    assert sorted(s["kind"] for s in evals) == sorted(list(SHORT_KINDS) * 5)
    pairs = short_eval_scenes(3, 25)
    train_pixels = {np.asarray(Image.open(p)).tobytes()
                    for p in (ds.image_folder / "train").glob("*.png")}
    for (scene, expected), sample in zip(pairs, evals, strict=True):
        assert sample == expected and sample["answer"] == sample["conversations"][1]["value"]
        _check_answer(scene, sample["question"], sample["answer"])
        image = Image.open(ds.image_folder / sample["image"])
        assert np.array_equal(np.asarray(image), np.asarray(render_scene(scene, 64)))
        assert np.asarray(image).tobytes() not in train_pixels
    # the same seed writes the same bytes
    again = write_shapes_short(ds.root, per_image=3)[1].read_bytes()
    assert again == eval_file.read_bytes()


def test_cli_writes_both_files_and_refuses_a_folder_that_is_no_dataset(tmp_path, capsys):
    ds = generate_shapes(tmp_path / "shapes", ShapesConfig(n_train=5, n_eval=5))
    assert run(["data", "shapes-short", str(ds.root), "--per-image", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["eval"].endswith("eval_short.json") and out["train"].endswith(
        "stage2_short.json")
    (tmp_path / "empty").mkdir()
    assert run(["data", "shapes-short", str(tmp_path / "empty")]) != 0
    assert "not a dataset written by `llava-edge data shapes`" in capsys.readouterr().err
