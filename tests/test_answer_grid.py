"""``answer_grid``: a picture of eval answers, each cell framed green (right) or red (wrong),
written whole or not at all; ``pick_items`` spreads the cells over the question kinds."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from llava_edge.answer_grid import (BORDER, GREEN, RED, GridItem, cell_size, grid_size,
                                    pick_items, write_answer_grid)
from llava_edge.errors import LlavaEdgeError
from llava_edge.trainer.evaluate import Prediction


def _png(folder: Path, name: str, colour=(40, 80, 200)) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 64), colour).save(path)
    return path


def _item(image: Path, correct: bool) -> GridItem:
    return GridItem(image=image, question="What color is the large square? " * 4,
                    answer="B" if correct else "A. a long and wrong reply " * 3,
                    truth="B (red)", correct=correct)


def _has(cell: Image.Image, colour) -> bool:
    return any(pixel == colour for pixel in cell.getdata())


def test_draws_a_grid_of_framed_cells(tmp_path):
    images = [_png(tmp_path / "img", f"{i}.png", (40, 80 + 20 * i, 200)) for i in range(5)]
    items = [_item(image, correct=i != 1) for i, image in enumerate(images)]
    out = write_answer_grid(items, tmp_path / "new" / "grid.png", columns=3, scale=2)
    assert out == tmp_path / "new" / "grid.png"

    width, height = cell_size(2)
    assert grid_size(5, 3, 2) == (3 * width, 2 * height)
    with Image.open(out) as grid:
        grid = grid.convert("RGB")
    assert grid.size == grid_size(5, 3, 2)
    assert grid.getpixel((grid.width - 1, grid.height - 1)) == (255, 255, 255)  # no 6th cell

    def cell(row: int, column: int) -> Image.Image:
        return grid.crop((column * width, row * height, (column + 1) * width,
                          (row + 1) * height))

    wrong, right = cell(0, 1), cell(0, 0)
    assert _has(wrong, RED) and not _has(wrong, GREEN)
    assert _has(right, GREEN) and not _has(right, RED)
    assert wrong.getpixel((BORDER // 2, height // 2)) == RED  # the frame, not just text
    # The image is upscaled by 2 with NEAREST: its flat colour is there, unblended.
    assert _has(right, (40, 80, 200))
    assert sorted(p.name for p in out.parent.iterdir()) == ["grid.png"]  # no temporary


def test_a_short_list_makes_no_empty_columns(tmp_path):
    image = _png(tmp_path, "a.png")
    out = write_answer_grid([_item(image, True)], tmp_path / "one.png")
    with Image.open(out) as grid:
        assert grid.size == cell_size(3) == grid_size(1, 4, 3)


def test_no_items_is_an_error(tmp_path):
    with pytest.raises(LlavaEdgeError, match="no items"):
        write_answer_grid([], tmp_path / "grid.png")
    assert list(tmp_path.iterdir()) == []


def test_a_missing_image_names_the_file_and_leaves_the_old_grid(tmp_path):
    good = _png(tmp_path, "good.png")
    out = write_answer_grid([_item(good, True)], tmp_path / "grid.png")
    before = out.read_bytes()
    missing = tmp_path / "missing.png"
    with pytest.raises(LlavaEdgeError, match="missing.png"):
        write_answer_grid([_item(good, True), _item(missing, False)], out)
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.png", "grid.png"]


def test_an_unreadable_image_names_the_file(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(LlavaEdgeError, match="bad.png"):
        write_answer_grid([_item(bad, True)], tmp_path / "out" / "grid.png")
    assert not (tmp_path / "out" / "grid.png").exists()


def _sample(i: int, kind: str, with_question: bool = True) -> dict:
    sample = {"id": f"eval-{i}", "image": f"eval/{i}.png", "kind": kind, "answer": "B",
              "choices": ["blue", "red"],
              "conversations": [
                  {"from": "human", "value": f"<image>\nWhich color is shape {i}?\n"
                                             "A. blue\nB. red\nAnswer with the letter."},
                  {"from": "gpt", "value": "B"}]}
    if with_question:
        sample["question"] = f"Which color is shape {i}?"
    return sample


def _prediction(sample: dict, correct: bool) -> Prediction:
    output = "B" if correct else "A"
    return Prediction(sample["id"], sample["kind"], "multiple_choice", "B", output, output,
                      correct)


def test_pick_items_spreads_kinds_and_shows_a_mistake(tmp_path):
    kinds = ["size"] * 4 + ["color"] * 4 + ["position"] * 4
    samples = [_sample(i, kind, with_question=i % 2 == 0) for i, kind in enumerate(kinds)]
    # One mistake only, the last "size" sample: it must still be shown, and first of its kind.
    predictions = [_prediction(s, correct=i != 3) for i, s in enumerate(samples)]

    items = pick_items(predictions, samples, tmp_path, n=5)
    assert len(items) == 5
    assert [item.image.name for item in items] == ["4.png", "8.png", "3.png",
                                                   "5.png", "9.png"]  # color, position, size
    assert [item.correct for item in items].count(False) == 1
    assert items[2] == GridItem(tmp_path / "eval" / "3.png", "Which color is shape 3?",
                                "A", "B (red)", False)  # question from the human turn
    assert pick_items(predictions, samples, tmp_path, n=5) == items  # deterministic
    assert len(pick_items(predictions, samples, tmp_path, n=50)) == 12

    # Fewer places than kinds: the mistake takes the last one.
    few = pick_items(predictions, samples, tmp_path, n=2)
    assert [item.image.name for item in few] == ["4.png", "3.png"]

    with pytest.raises(LlavaEdgeError, match="same order"):
        pick_items(predictions[::-1], samples, tmp_path)


def test_picked_items_draw(tmp_path):
    samples = [_sample(i, kind) for i, kind in enumerate(["color", "size"])]
    for sample in samples:
        _png(tmp_path, sample["image"])
    predictions = [_prediction(samples[0], True), _prediction(samples[1], False)]
    out = write_answer_grid(pick_items(predictions, samples, tmp_path), tmp_path / "g.png")
    with Image.open(out) as grid:
        assert grid.size == grid_size(2)
