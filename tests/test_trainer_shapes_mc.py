"""Multiple-choice training questions about the shapes train images (``shapes_mc``):
the eval's format, answers that match the scenes, and the two reply styles."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from llava_edge.data.shapes import (
    EVAL_KINDS,
    MC_INSTRUCTION,
    ShapesConfig,
    generate_shapes,
    location_phrase,
    train_scene,
)
from llava_edge.errors import LlavaEdgeError
from llava_edge.trainer.evaluate import parse_choice
from llava_edge.cli import run
from llava_edge.trainer.shapes_mc import shapes_mc_samples, write_shapes_mc

N_TRAIN = 40


def _turns(sample: dict) -> list[tuple[str, str]]:
    c = sample["conversations"]
    return [(c[i]["value"], c[i + 1]["value"]) for i in range(0, len(c), 2)]


def _options(question: str) -> dict[str, str]:
    return dict(re.findall(r"^([A-I])\. (.+)$", question, re.MULTILINE))


def test_letter_replies_are_the_eval_format() -> None:
    samples = shapes_mc_samples(seed=0, n_train=N_TRAIN, per_image=4)
    assert [s["image"] for s in samples] == [f"train/{i:06d}.png" for i in range(N_TRAIN)]
    for s in samples:
        turns = _turns(s)
        assert len(turns) == len(s["kinds"]) and len(set(s["kinds"])) == len(s["kinds"])
        assert set(s["kinds"]) <= set(EVAL_KINDS)
        # The image marker opens the first question only.
        assert turns[0][0].startswith("<image>\n")
        assert all("<image>" not in q for q, _ in turns[1:])
        for question, reply in turns:
            assert question.endswith(MC_INSTRUCTION)
            assert reply in _options(question)


def test_statement_replies_name_the_answer_then_give_the_same_letter() -> None:
    letters = shapes_mc_samples(seed=0, n_train=N_TRAIN, per_image=4)
    statements = shapes_mc_samples(seed=0, n_train=N_TRAIN, per_image=4, reply="statement")
    checked = set()
    for i, (a, b) in enumerate(zip(letters, statements, strict=True)):
        assert a["kinds"] == b["kinds"]
        scene = train_scene(0, i)
        for (q1, letter), (q2, reply), kind in zip(_turns(a), _turns(b), a["kinds"],
                                                  strict=True):
            assert q1 == q2  # the same questions: the reply style draws no random numbers
            options = _options(q2)
            assert reply.endswith(f" The answer is {letter}.")
            assert parse_choice(reply, "".join(options)) == letter  # the eval reads it
            statement = reply.removesuffix(f" The answer is {letter}.")
            word = options[letter]
            if kind == "position":
                assert statement.endswith(f" is {location_phrase(word)}.")
                assert word in {s.position for s in scene.shapes}
            elif kind == "count":
                question = q2.removeprefix("<image>\n").split("\n")[0]
                counted = re.match(r"How many (.+?) are there", question)[1]
                assert statement == f"The number of {counted} is {word}."
            else:
                assert statement.startswith("The ") and statement.endswith(f" {word}.")
                attr = "color" if kind == "color" else "kind"
                assert word in {getattr(s, attr) for s in scene.shapes}
            checked.add(kind)
    assert checked == set(EVAL_KINDS)


def test_write_shapes_mc_and_its_command(tmp_path: Path, capsys) -> None:
    ds = generate_shapes(tmp_path / "ds", ShapesConfig(n_train=6, n_eval=4, seed=1))
    out = write_shapes_mc(ds.root, per_image=2, reply="statement")
    samples = json.loads(out.read_text())
    assert len(samples) == 6 and all(len(s["kinds"]) == 2 for s in samples)
    assert all(" The answer is " in reply for s in samples for _, reply in _turns(s))
    assert not list(ds.root.glob("*.tmp"))
    with pytest.raises(LlavaEdgeError, match="reply style 'words'"):
        write_shapes_mc(ds.root, reply="words")
    capsys.readouterr()
    assert run(["data", "shapes-mc", str(ds.root)]) == 0  # the command: letters by default
    assert capsys.readouterr().out == f"wrote {out}\n"
    assert all(len(reply) == 1 for s in json.loads(out.read_text()) for _, reply in _turns(s))
    assert run(["data", "shapes-mc", str(ds.root), "--per-image", "3", "--reply", "statement",
                "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"file": str(out)}
    assert all(len(s["kinds"]) == 3 for s in json.loads(out.read_text()))
    assert run(["data", "shapes-mc", str(tmp_path / "missing")]) == 1
    assert "is not a dataset written by" in capsys.readouterr().err


def test_shapes_mc_command_offers_every_reply_style() -> None:
    from llava_edge.cli.data_cmd import shapes_mc
    from llava_edge.data.shapes import MC_REPLIES

    (reply,) = [p for p in shapes_mc.params if p.name == "reply"]
    assert tuple(reply.type.choices) == MC_REPLIES
