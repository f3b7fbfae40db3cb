"""Tests for the synthetic shapes generator and the LLaVA-format validator.

Answers are checked against the pixels: the test decodes every image back into shapes
(colour by exact RGB match, kind by how much of its bounding box a shape fills, size by
its width, position by its grid cell) and answers the questions from that, without using
the generator's scene objects.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from llava_edge.data.llava_format import LlavaFormatError, load_llava_json, validate_samples
from llava_edge.data.shapes import (
    BACKGROUND,
    COLORS,
    KINDS,
    MC_INSTRUCTION,
    ShapesConfig,
    ShapesDataset,
    generate_shapes,
)

N_TRAIN, N_EVAL, IMAGE_SIZE = 30, 10, 64
CELL_NAMES = (
    ("top left", "top", "top right"),
    ("left", "center", "right"),
    ("bottom left", "bottom", "bottom right"),
)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> ShapesDataset:
    out = tmp_path_factory.mktemp("shapes") / "ds"
    return generate_shapes(
        out, ShapesConfig(n_train=N_TRAIN, n_eval=N_EVAL, seed=0, image_size=IMAGE_SIZE)
    )


@pytest.fixture(scope="module")
def bigger_dataset(tmp_path_factory: pytest.TempPathFactory) -> ShapesDataset:
    """Enough samples that every question template shows up, for the pixel checks."""
    out = tmp_path_factory.mktemp("shapes_big") / "ds"
    return generate_shapes(out, ShapesConfig(n_train=200, n_eval=80, seed=3, image_size=IMAGE_SIZE))


def _load(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))


# --------------------------------------------------------------------------------------
# Decoding images and answering questions independently of the generator
# --------------------------------------------------------------------------------------


def decode_image(path: Path) -> list[dict[str, str]]:
    """The shapes drawn in ``path``: kind, color, size and position, read from pixels."""
    pixels = np.asarray(Image.open(path).convert("RGB"))
    size = pixels.shape[0]
    palette = {name: np.all(pixels == rgb, axis=-1) for name, rgb in COLORS.items()}
    background = np.all(pixels == BACKGROUND, axis=-1)
    # Flat colours only: every pixel is the background or a palette colour.
    assert (background | np.any(list(palette.values()), axis=0)).all(), f"{path}: stray colours"

    edges = [round(k * size / 3) for k in range(4)]
    shapes = []
    for row in range(3):
        for col in range(3):
            cell = (slice(edges[row], edges[row + 1]), slice(edges[col], edges[col + 1]))
            present = [(name, mask[cell]) for name, mask in palette.items() if mask[cell].any()]
            if not present:
                continue
            assert len(present) == 1, f"{path}: two colours in cell {row},{col}"
            color, mask = present[0]
            # A background border all round the cell: shapes never touch or overlap.
            assert not (mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())
            ys, xs = np.nonzero(mask)
            height, width = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
            fill = mask.sum() / (height * width)
            kind = "square" if fill > 0.95 else "circle" if fill > 0.68 else "triangle"
            shapes.append(
                {
                    "kind": kind,
                    "color": color,
                    "size": "large" if width > 0.65 * (size // 3) else "small",
                    "position": CELL_NAMES[row][col],
                    "row": ("top", "middle", "bottom")[row],
                    "col": ("left", "middle", "right")[col],
                    "r": row,
                    "c": col,
                }
            )
    return shapes


COLOR_WORDS = "|".join(COLORS)


def ref_pattern(tag: str = "") -> str:
    """Regex for a referring expression ("small red shape on the left"), groups tagged."""
    return (
        rf"(?P<ref{tag}>(?:(?P<size{tag}>small|large) )?(?:(?P<color{tag}>{COLOR_WORDS}) )?"
        rf"(?P<kind{tag}>circle|square|triangle|shape|object)"
        rf"(?: (?:at|on|in) the (?P<position{tag}>[a-z ]+))?)"
    )


REF = ref_pattern()


def resolve(match: re.Match, shapes: list[dict], tag: str = "", excluded: str = "") -> dict:
    """The one decoded shape that the referring expression in ``match`` describes.

    Also checks that the expression does not use ``excluded`` (the attribute asked about).
    """
    wanted = {a: match[a + tag] for a in ("size", "color", "kind", "position") if match[a + tag]}
    if wanted.get("kind") in ("shape", "object"):
        del wanted["kind"]
    assert excluded not in wanted, f"{match.string!r} gives the answer away"
    found = [s for s in shapes if all(s[k] == v for k, v in wanted.items())]
    assert len(found) == 1, f"{match.string!r} is ambiguous or wrong: {found}"
    return found[0]


def answer_from_pixels(question: str, shapes: list[dict]) -> str:
    """Answer a direct question from the decoded shapes; fail on an unknown template."""
    if question == "How many shapes are there in the image?":
        return str(len(shapes))
    if m := re.fullmatch(rf"How many ({COLOR_WORDS}) shapes are there\?", question):
        return str(sum(s["color"] == m[1] for s in shapes))
    if m := re.fullmatch(r"How many (circle|square|triangle)s are there\?", question):
        return str(sum(s["kind"] == m[1] for s in shapes))
    if m := re.fullmatch(
        rf"Is there a ({COLOR_WORDS}) (circle|square|triangle) in the image\?", question
    ):
        return "yes" if any(s["color"] == m[1] and s["kind"] == m[2] for s in shapes) else "no"
    # Questions about one shape: (attribute the reference must not use, decoded key to answer)
    templates = {
        rf"What color is the {REF}\?": ("color", "color"),
        rf"What shape is the {REF}\?": ("kind", "kind"),
        rf"Where is the {REF}\?": ("position", "position"),
        rf"Is the {REF} (?:large or small|small or large)\?": ("size", "size"),
        rf"Is the {REF} on the left, in the middle, or on the right\?": ("position", "col"),
        rf"Is the {REF} at the top, in the middle, or at the bottom\?": ("position", "row"),
    }
    for pattern, (excluded, asked) in templates.items():
        if m := re.fullmatch(pattern, question):
            return resolve(m, shapes, excluded=excluded)[asked]
    raise AssertionError(f"unknown question template: {question!r}")


def relation_from_pixels(a: dict, b: dict) -> str:
    """Where shape ``a`` is relative to ``b``, from their grid cells."""
    parts = []
    if a["r"] != b["r"]:
        parts.append("above" if a["r"] < b["r"] else "below")
    if a["c"] != b["c"]:
        parts.append("to the left of" if a["c"] < b["c"] else "to the right of")
    return " and ".join(parts)


def count_condition(condition: str, shape: dict) -> bool:
    """Whether ``shape`` satisfies a reasoning count condition ("not red", "in the top row")."""
    if m := re.fullmatch(r"in the (top|middle|bottom) row", condition):
        return shape["row"] == m[1]
    if m := re.fullmatch(r"in the (left|middle|right) column", condition):
        return shape["col"] == m[1]
    if condition in ("small", "large"):
        return shape["size"] == condition
    if condition.startswith("not "):
        return shape["color"] != condition.removeprefix("not ")
    assert condition in COLORS, condition
    return shape["color"] == condition


def check_reasoning(question: str, answer: str, shapes: list[dict]) -> str:
    """Check a complex-reasoning answer against the decoded shapes; return its type."""
    a_ref, b_ref = ref_pattern("a"), ref_pattern("b")
    if m := re.fullmatch(r"How many of the shapes are ([a-z ]+)\?", question):
        n = sum(count_condition(m[1], s) for s in shapes)
        assert answer.endswith(f"So the answer is {n}."), (question, answer)
        return "count"
    if m := re.fullmatch(rf"Where is the {a_ref} relative to the {b_ref}\?", question):
        a, b = (resolve(m, shapes, tag, excluded="position") for tag in "ab")
        relation = relation_from_pixels(a, b)
        assert answer.endswith(f"so the {m['refa']} is {relation} the {m['refb']}."), answer
        return "relative"
    relations = "above|below|to the left of|to the right of"
    if m := re.fullmatch(rf"Is the {a_ref} (?P<rel>{relations}) the {b_ref}\?", question):
        a, b = (resolve(m, shapes, tag, excluded="position") for tag in "ab")
        holds = m["rel"] in relation_from_pixels(a, b).split(" and ")
        assert answer.startswith("Yes." if holds else "No."), (question, answer)
        return "relative yes/no"
    if m := re.fullmatch(rf"Which is larger, the {a_ref} or the {b_ref}\?", question):
        a, b = (resolve(m, shapes, tag, excluded="size") for tag in "ab")
        if a["size"] == b["size"]:
            assert answer.endswith("so they are the same size."), answer
        else:
            bigger = m["refa"] if a["size"] == "large" else m["refb"]
            assert answer.endswith(f"so the {bigger} is larger."), answer
        return "larger"
    raise AssertionError(f"unknown reasoning template: {question!r}")


# --------------------------------------------------------------------------------------
# Generated files
# --------------------------------------------------------------------------------------


def test_files_validate_and_counts_match(dataset: ShapesDataset) -> None:
    assert dataset.stage1 == dataset.root / "stage1_captions.json"
    assert dataset.stage2 == dataset.root / "stage2_instruct.json"
    assert dataset.eval == dataset.root / "eval_mc.json"
    assert dataset.image_folder == dataset.root / "images"
    stage1, stage2, evals = (
        load_llava_json(path, dataset.image_folder, check_images=True, unique_ids=True)
        for path in (dataset.stage1, dataset.stage2, dataset.eval)
    )

    assert dataset.n_images == N_TRAIN + N_EVAL
    assert len(list((dataset.image_folder / "train").glob("*.png"))) == N_TRAIN
    assert len(list((dataset.image_folder / "eval").glob("*.png"))) == N_EVAL
    assert dataset.counts == {"stage1": len(stage1), "stage2": len(stage2), "eval": len(evals)}
    assert len(stage1) == N_TRAIN
    assert len(evals) == N_EVAL
    # Stage 1 and stage 2 share the train images; eval images are separate.
    train_images = {f"train/{i:06d}.png" for i in range(N_TRAIN)}
    assert {s["image"] for s in stage1} == train_images
    assert {s["image"] for s in stage2 if "image" in s} == train_images
    assert {s["image"] for s in evals} == {f"eval/{i:06d}.png" for i in range(N_EVAL)}

    info = json.loads((dataset.root / "dataset.json").read_text())
    assert info["config"] == {
        "n_train": N_TRAIN,
        "n_eval": N_EVAL,
        "seed": 0,
        "image_size": IMAGE_SIZE,
        "mc_options": "fixed",
    }
    assert info["counts"] == dataset.counts
    readme = (dataset.root / "README.txt").read_text()
    assert "synthetic" in readme.lower() and "seed: 0" in readme and "version" in readme
    leftovers = [p.name for p in dataset.root.parent.iterdir()
                 if ".tmp-" in p.name or ".old-" in p.name]
    assert leftovers == []


def test_images_are_rgb_with_one_to_three_shapes(dataset: ShapesDataset) -> None:
    for path in sorted(dataset.image_folder.glob("*/*.png")):
        with Image.open(path) as image:
            assert image.mode == "RGB" and image.size == (IMAGE_SIZE, IMAGE_SIZE)
        assert 1 <= len(decode_image(path)) <= 3


def _all_bytes(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_same_seed_gives_identical_bytes(dataset: ShapesDataset, tmp_path: Path) -> None:
    again = generate_shapes(
        tmp_path / "again", ShapesConfig(n_train=N_TRAIN, n_eval=N_EVAL, seed=0)
    )
    assert _all_bytes(again.root) == _all_bytes(dataset.root)


def test_different_seed_differs(dataset: ShapesDataset, tmp_path: Path) -> None:
    other = generate_shapes(
        tmp_path / "other", ShapesConfig(n_train=N_TRAIN, n_eval=N_EVAL, seed=1)
    )
    for name in ("stage1_captions.json", "stage2_instruct.json", "eval_mc.json"):
        assert (other.root / name).read_bytes() != (dataset.root / name).read_bytes()
    assert (other.image_folder / "train/000000.png").read_bytes() != (
        dataset.image_folder / "train/000000.png"
    ).read_bytes()


def test_samples_do_not_depend_on_set_size(dataset: ShapesDataset, tmp_path: Path) -> None:
    small = generate_shapes(tmp_path / "small", ShapesConfig(n_train=5, n_eval=2, seed=0))
    for rel in ("train/000004.png", "eval/000000.png"):
        assert (small.image_folder / rel).read_bytes() == (dataset.image_folder / rel).read_bytes()
    assert _load(small.stage1) == _load(dataset.stage1)[:5]


def test_stage1_captions_match_pixels(bigger_dataset: ShapesDataset) -> None:
    prompts = set()
    for sample in _load(bigger_dataset.stage1):
        human, gpt = (turn["value"] for turn in sample["conversations"])
        assert human.startswith("<image>\n")
        prompts.add(human)
        shape_phrase = (
            rf"a (small|large) ({COLOR_WORDS}) (circle|square|triangle) (?:at|on|in) the "
            r"([a-z ]+?)(?=, | and a |\.$)"
        )
        described = re.findall(shape_phrase, gpt)
        drawn = decode_image(bigger_dataset.image_folder / sample["image"])
        assert sorted(described) == sorted(
            (s["size"], s["color"], s["kind"], s["position"]) for s in drawn
        ), gpt
    assert len(prompts) >= 3  # phrasings vary


def test_stage2_mixes_all_sample_kinds(dataset: ShapesDataset) -> None:
    samples = _load(dataset.stage2)
    ids = [s["id"] for s in samples]
    assert len(ids) == len(set(ids))
    text_only = [s for s in samples if "image" not in s]
    multi_turn = [s for s in samples if len(s["conversations"]) >= 4]
    details = [s for s in samples if s["id"].endswith("-detail")]
    reasoning = [s for s in samples if s["id"].endswith("-reasoning")]
    assert text_only and multi_turn and details and reasoning
    assert 0.02 <= len(text_only) / len(samples) <= 0.10

    for s in samples:
        turns = s["conversations"]
        # The marker starts the first human turn of image samples, and appears nowhere else.
        assert turns[0]["value"].startswith("<image>\n") == ("image" in s)
        assert sum(t["value"].count("<image>") for t in turns) == ("image" in s)
    for s in details:
        drawn = decode_image(dataset.image_folder / s["image"])
        text = s["conversations"][1]["value"]
        for shape in drawn:
            assert f"{shape['size']} {shape['color']} {shape['kind']}" in text
    for s in reasoning:
        assert len(s["conversations"][1]["value"].split()) > 5  # explained, not one word


def test_direct_answers_match_pixels(bigger_dataset: ShapesDataset) -> None:
    checked = 0
    for s in _load(bigger_dataset.stage2):
        if not s["id"].endswith("-conversation"):
            continue
        drawn = decode_image(bigger_dataset.image_folder / s["image"])
        turns = s["conversations"]
        for human, gpt in zip(turns[::2], turns[1::2], strict=True):
            question = human["value"].removeprefix("<image>\n")
            assert len(gpt["value"].split()) == 1  # one word or number
            assert gpt["value"] == answer_from_pixels(question, drawn), question
            checked += 1
    assert checked > 100


def test_reasoning_answers_match_pixels(bigger_dataset: ShapesDataset) -> None:
    seen = set()
    for s in _load(bigger_dataset.stage2):
        if s["id"].endswith("-reasoning"):
            question, answer = (t["value"] for t in s["conversations"])
            drawn = decode_image(bigger_dataset.image_folder / s["image"])
            seen.add(check_reasoning(question.removeprefix("<image>\n"), answer, drawn))
    assert seen == {"count", "relative", "relative yes/no", "larger"}


def _check_mc_samples(samples: list[dict], image_folder: Path) -> None:
    """The prompt is the ScienceQA format, the letter names an option, and that option is
    the answer read back from the pixels."""
    for s in samples:
        letters = "ABCDEFGHI"[: len(s["choices"])]
        assert s["answer"] in letters and len(s["answer"]) == 1
        assert len(set(s["choices"])) == len(s["choices"])
        options = "\n".join(
            f"{letter}. {c}" for letter, c in zip(letters, s["choices"], strict=True)
        )
        expected_prompt = f"<image>\n{s['question']}\n{options}\n{MC_INSTRUCTION}"
        assert s["conversations"] == [
            {"from": "human", "value": expected_prompt},
            {"from": "gpt", "value": s["answer"]},
        ]
        drawn = decode_image(image_folder / s["image"])
        assert s["choices"][ord(s["answer"]) - 65] == answer_from_pixels(s["question"], drawn)


def test_eval_answers_match_pixels(bigger_dataset: ShapesDataset) -> None:
    samples = _load(bigger_dataset.eval)
    kinds = [s["kind"] for s in samples]
    assert {kind: kinds.count(kind) for kind in set(kinds)} == {
        "color": 20,
        "shape": 20,
        "count": 20,
        "position": 20,
    }
    _check_mc_samples(samples, bigger_dataset.image_folder)
    # Fixed options: every possible answer of the kind, always in the same order.
    fixed = {"color": list(COLORS), "shape": [*KINDS, "star"],
             "position": [name for row in CELL_NAMES for name in row]}
    for s in samples:
        if s["kind"] in fixed:
            assert s["choices"] == fixed[s["kind"]]
        else:  # counts: four consecutive numbers, ascending
            assert s["choices"] == [str(v) for v in range(int(s["choices"][0]), int(s["choices"][0]) + 4)]
    assert len({s["answer"] for s in samples}) >= 4


def test_shuffled_eval_options(tmp_path: Path) -> None:
    ds = generate_shapes(tmp_path / "ds", ShapesConfig(n_train=2, n_eval=40, seed=5,
                                                       image_size=IMAGE_SIZE,
                                                       mc_options="shuffled"))
    samples = _load(ds.eval)
    _check_mc_samples(samples, ds.image_folder)
    assert all(len(s["choices"]) == 4 for s in samples)
    # Shuffled: the correct letter is not always the same, nor the option order.
    assert len({s["answer"] for s in samples}) == 4
    assert len({tuple(s["choices"]) for s in samples if s["kind"] == "color"}) > 1
    with pytest.raises(ValueError, match="mc_options"):
        ShapesConfig(mc_options="sorted")


# --------------------------------------------------------------------------------------
# Output folder handling and config validation
# --------------------------------------------------------------------------------------


def test_existing_non_empty_out_dir_raises(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=re.escape(str(out))):
        generate_shapes(out, ShapesConfig(n_train=2, n_eval=1))
    assert (out / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_overwrite_replaces_and_empty_dir_is_used(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    out.mkdir()  # empty: fine without overwrite
    generate_shapes(out, ShapesConfig(n_train=2, n_eval=1))
    (out / "stale.txt").write_text("old")
    ds = generate_shapes(out, ShapesConfig(n_train=3, n_eval=1), overwrite=True)
    assert not (out / "stale.txt").exists()
    assert ds.counts["stage1"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"n_train": 0}, "n_train"),
        ({"n_eval": -1}, "n_eval"),
        ({"image_size": 16}, "image_size"),
        ({"image_size": 2048}, "image_size"),
        ({"n_train": 2.5}, "n_train"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_config_raises_value_error(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        ShapesConfig(**kwargs)


def test_no_eval_images_is_allowed(tmp_path: Path) -> None:
    ds = generate_shapes(tmp_path / "ds", ShapesConfig(n_train=2, n_eval=0))
    assert load_llava_json(ds.eval) == []


def test_progress_reports_every_image(tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    generate_shapes(
        tmp_path / "ds",
        ShapesConfig(n_train=4, n_eval=2),
        progress=lambda d, t: calls.append((d, t)),
    )
    assert calls == [(i, 6) for i in range(1, 7)]


def test_failure_leaves_no_partial_output(tmp_path: Path) -> None:
    def fail_midway(done: int, total: int) -> None:
        if done == 5:
            raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        generate_shapes(tmp_path / "ds", ShapesConfig(n_train=8, n_eval=2), progress=fail_midway)
    assert list(tmp_path.iterdir()) == []

    # With overwrite, a failed run keeps the previous dataset as it was.
    old = generate_shapes(tmp_path / "ds", ShapesConfig(n_train=2, n_eval=1))
    before = _all_bytes(old.root)
    with pytest.raises(RuntimeError):
        generate_shapes(
            tmp_path / "ds", ShapesConfig(n_train=8, n_eval=2), progress=fail_midway, overwrite=True
        )
    assert _all_bytes(old.root) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


# --------------------------------------------------------------------------------------
# The validator
# --------------------------------------------------------------------------------------

GOOD = {
    "id": "ok",
    "image": "a.png",
    "conversations": [
        {"from": "human", "value": "<image>\nWhat?"},
        {"from": "gpt", "value": "red"},
    ],
}


def _turns(*pairs: tuple[str, str]) -> list[dict[str, str]]:
    return [{"from": role, "value": value} for role, value in pairs]


BAD_SAMPLES = {
    "missing conversations": ({"id": "bad", "image": "a.png"}, "missing 'conversations'"),
    "empty conversations": ({"id": "bad", "conversations": []}, "non-empty list"),
    "starts with gpt": (
        {"id": "bad", "conversations": _turns(("gpt", "hi"), ("human", "hello"))},
        "should be from 'human'",
    ),
    "two human turns in a row": (
        {"id": "bad", "conversations": _turns(("human", "a"), ("human", "b"))},
        "should be from 'gpt'",
    ),
    "unknown role": ({"id": "bad", "conversations": _turns(("user", "a"), ("gpt", "b"))}, "'user'"),
    "no answer": ({"id": "bad", "conversations": _turns(("human", "a"))}, "no gpt answer"),
    "value not a string": (
        {
            "id": "bad",
            "conversations": [{"from": "human", "value": 3}, {"from": "gpt", "value": "b"}],
        },
        "'value' must be a string",
    ),
    "image without marker": (
        {
            "id": "bad",
            "image": "a.png",
            "conversations": _turns(("human", "What?"), ("gpt", "red")),
        },
        "no <image> marker",
    ),
    "marker twice": (
        {
            "id": "bad",
            "image": "a.png",
            "conversations": _turns(("human", "<image>\n<image>\nWhat?"), ("gpt", "red")),
        },
        "2 times",
    ),
    "marker in gpt turn": (
        {
            "id": "bad",
            "image": "a.png",
            "conversations": _turns(("human", "What?"), ("gpt", "<image> red")),
        },
        "marker in gpt turn 1",
    ),
    "marker in later human turn": (
        {
            "id": "bad",
            "image": "a.png",
            "conversations": _turns(
                ("human", "Hi"), ("gpt", "Hi"), ("human", "<image>\nWhat?"), ("gpt", "red")
            ),
        },
        "not in the first human turn",
    ),
    "marker without image": (
        {"id": "bad", "conversations": _turns(("human", "<image>\nWhat?"), ("gpt", "red"))},
        "no 'image'",
    ),
    "image not a string": (
        {"id": "bad", "image": ["a.png"], "conversations": GOOD["conversations"]},
        "'image' must be a non-empty string",
    ),
    "id not str or int": ({"id": ["bad"], "conversations": GOOD["conversations"]}, "'id'"),
    "duplicate id": (
        {"id": "ok", "conversations": _turns(("human", "a"), ("gpt", "b"))},
        "duplicate id",
    ),
}


@pytest.mark.parametrize("name", list(BAD_SAMPLES))
def test_validator_rejects_bad_sample(name: str) -> None:
    bad, message = BAD_SAMPLES[name]
    with pytest.raises(LlavaFormatError, match=re.escape(message)) as info:
        validate_samples([GOOD, bad], source="data.json", unique_ids=True)
    # The message names the file and the sample (its index, and its id when it has one).
    assert str(info.value).startswith("data.json: sample 1")
    if isinstance(bad.get("id"), str):
        assert repr(bad["id"]) in str(info.value)


def test_duplicate_ids_are_only_checked_on_request() -> None:
    validate_samples([GOOD, GOOD])
    with pytest.raises(LlavaFormatError, match=r"sample 1 \(id 'ok'\): duplicate id"):
        validate_samples([GOOD, GOOD], unique_ids=True)


def test_validator_accepts_text_only_and_int_ids(tmp_path: Path) -> None:
    text_only = {
        "id": 7,
        "conversations": _turns(("human", "How many sides does a square have?"), ("gpt", "4")),
    }
    no_id = {
        "image": "b.png",
        "conversations": _turns(("human", "What?\n<image>"), ("gpt", "blue")),
    }
    samples = [GOOD, text_only, no_id]
    # Accepted with every check on: a text-only sample needs no image file (only the two
    # images exist), and an int id counts as an id (unique here).
    for name in ("a.png", "b.png"):
        Image.new("RGB", (4, 4)).save(tmp_path / name)
    data = tmp_path / "data.json"
    data.write_text(json.dumps(samples))
    loaded = load_llava_json(data, tmp_path, check_images=True, unique_ids=True)
    assert loaded == samples and type(loaded[1]["id"]) is int

    # An int id is checked like a string one: a repeat is a duplicate, named as an int,
    # while 7 and "7" are different ids.
    validate_samples([text_only, {**text_only, "id": "7"}], unique_ids=True)
    with pytest.raises(LlavaFormatError, match=r"sample 1 \(id 7\): duplicate id"):
        validate_samples([text_only, text_only], unique_ids=True)
    # bool is an int in Python, but not an id.
    with pytest.raises(LlavaFormatError, match="'id' must be a string or an integer"):
        validate_samples([{**text_only, "id": True}])


def test_validator_rejects_non_list_and_non_dict() -> None:
    with pytest.raises(LlavaFormatError, match="top level must be a list"):
        validate_samples({"conversations": []}, source="x.json")
    with pytest.raises(LlavaFormatError, match=r"x.json: sample 0: must be an object"):
        validate_samples(["not a sample"], source="x.json")


def test_load_llava_json_errors_name_the_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text("[{")
    with pytest.raises(LlavaFormatError, match=re.escape(f"{broken}: not valid JSON")):
        load_llava_json(broken)
    missing = tmp_path / "missing.json"
    with pytest.raises(LlavaFormatError, match=re.escape(f"{missing}: cannot read")):
        load_llava_json(missing)
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe\x00[")
    with pytest.raises(LlavaFormatError, match=re.escape(str(binary))):
        load_llava_json(binary)

    data = tmp_path / "data.json"
    data.write_text(json.dumps([GOOD]))
    (tmp_path / "images").mkdir()
    assert load_llava_json(data) == [GOOD]  # images not checked by default
    with pytest.raises(LlavaFormatError, match=r"sample 0 \(id 'ok'\): image 'a.png' not found"):
        load_llava_json(data, tmp_path / "images", check_images=True)
    Image.new("RGB", (4, 4)).save(tmp_path / "images" / "a.png")
    assert load_llava_json(data, tmp_path / "images", check_images=True) == [GOOD]
