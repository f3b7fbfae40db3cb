"""Evaluation: letter parsing, scoring, the torch answerer and `llava-edge eval`."""

from __future__ import annotations

import json

import pytest

from llava_edge.cli import run
from llava_edge.trainer.evaluate import TorchAnswerer, evaluate, normalize_answer, parse_choice


@pytest.mark.parametrize("reply, letter", [
    ("B", "B"), (" C\n", "C"), ("B.", "B"), ("B. left", "B"), ("(D) top", "D"),
    ("A) red", "A"), ("The answer is C.", "C"), ("the answer is: (A)", "A"),
    ("E", None), ("left", None), ("Bottom left", None), ("", None),
    ("The answer is A or the answer is B", None),
])
def test_parse_choice(reply, letter):
    assert parse_choice(reply, "ABCD") == letter


def test_normalize_answer():
    assert normalize_answer("  Red. ") == "red"
    assert normalize_answer("top   left") == "top left"


def _mc(i, answer, kind="color"):
    prompt = "<image>\nWhat color?\nA. red\nB. blue\nC. green\nD. yellow\nAnswer with the letter."
    return {"id": f"q{i}", "image": "x.png", "kind": kind, "answer": answer,
            "choices": ["red", "blue", "green", "yellow"],
            "conversations": [{"from": "human", "value": prompt},
                              {"from": "gpt", "value": answer}]}


def test_evaluate_scores_multiple_choice_and_exact_match(tmp_path):
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    samples = [_mc(0, "A"), _mc(1, "B", "count"), _mc(2, "C"),
               {"id": "s", "conversations": [{"from": "human", "value": "Sky colour?"},
                                             {"from": "gpt", "value": "blue"}]}]
    replies = iter(["A", "C", "I don't know", "Blue."])  # asked in sample order
    seen = []

    def answer(image, prompt):
        seen.append((image is not None, prompt.startswith("<image>")))
        return next(replies)

    report = evaluate(samples, answer, tmp_path)
    assert seen == [(True, True)] * 3 + [(False, False)]
    assert report.multiple_choice == {"n": 3, "correct": 1, "accuracy": 1 / 3}
    assert report.exact_match == {"n": 1, "correct": 1, "accuracy": 1.0}
    assert report.accuracy == 0.5
    assert report.unparsed == 1
    assert report.by_kind["color"] == {"n": 2, "correct": 1, "accuracy": 0.5}
    assert [p.parsed for p in report.predictions] == ["A", "C", None, "blue"]


def test_torch_answerer_runs_a_checkpoint(tiny_checkpoint):
    from PIL import Image

    answer = TorchAnswerer(tiny_checkpoint, max_new_tokens=4)
    assert answer.format.name == "vicuna_v1"
    reply = answer(Image.new("RGB", (64, 48), "red"), "<image>\nWhat color is it?")
    assert isinstance(reply, str)  # random weights: any text
    assert isinstance(answer(None, "What is two plus one?"), str)


def test_eval_command(tiny_checkpoint, tmp_path, capsys):
    from PIL import Image

    Image.new("RGB", (64, 64), "blue").save(tmp_path / "x.png")
    data = tmp_path / "eval.json"
    data.write_text(json.dumps([_mc(0, "B"), _mc(1, "A")]))
    code = run(["eval", str(tiny_checkpoint), "--data", str(data), "--image-folder",
                str(tmp_path), "--max-new-tokens", "3", "--json",
                "--predictions", str(tmp_path / "pred.json")])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n"] == 2 and out["multiple_choice"]["n"] == 2
    assert len(json.loads((tmp_path / "pred.json").read_text())["predictions"]) == 2


def test_eval_command_errors(tiny_checkpoint, tmp_path, capsys):
    data = tmp_path / "eval.json"
    data.write_text(json.dumps([_mc(0, "B")]))
    assert run(["eval", str(tiny_checkpoint), "--data", str(data), "--image-folder",
                str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "image 'x.png' not found" in err and "id 'q0'" in err
    assert run(["eval", str(tmp_path), "--data", str(data)]) == 1
    assert "config.json" in capsys.readouterr().err
