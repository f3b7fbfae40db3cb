"""Stage 0 (``pretrain-vision``): the tower is trained, the rest copied, the figures
recorded, the result cached and reused, errors named."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from llava_edge.cli import run
from llava_edge.errors import LlavaEdgeError
from llava_edge.trainer import pretrain_vision as pv
from llava_edge.trainer.pretrain_vision import (TARGETS, VisionPretrainConfig,
                                                 pretrain_vision)

SMALL = VisionPretrainConfig(steps=30, batch_size=16, n_scenes=200, warmup_steps=10)


@pytest.fixture(autouse=True)
def small_probe(monkeypatch, tmp_path):
    """A quick probe, and a tower cache of the test's own."""
    monkeypatch.setattr(pv, "_PROBE_TRAIN", 200)
    monkeypatch.setattr(pv, "_PROBE_TEST", 50)
    monkeypatch.setattr(pv, "_PROBE_STEPS", 20)
    monkeypatch.setenv("LLAVA_EDGE_TOWER_CACHE", str(tmp_path / "towers"))


def _weights(folder) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def _split(weights: dict) -> tuple[dict, dict]:
    tower = {k: v for k, v in weights.items() if "vision_tower" in k}
    return tower, {k: v for k, v in weights.items() if "vision_tower" not in k}


def test_only_the_tower_changes_and_the_figures_are_recorded(tiny_checkpoint, tmp_path):
    result = pretrain_vision(tiny_checkpoint, tmp_path / "stage0", SMALL)
    assert not result.cached and result.seconds > 0 and result.steps == 30
    assert set(result.probe_before) == set(result.probe_after) == {n for n, _ in TARGETS}
    assert all(0.0 <= v <= 1.0 for v in result.probe_after.values())
    before_tower, before_rest = _split(_weights(tiny_checkpoint))
    after_tower, after_rest = _split(_weights(tmp_path / "stage0"))
    assert before_rest.keys() == after_rest.keys()
    assert all(torch.equal(before_rest[k], after_rest[k]) for k in before_rest)
    changed = [k for k in before_tower if not torch.equal(before_tower[k], after_tower[k])]
    assert any("encoder.layers.0." in k for k in changed)
    config = json.loads((tmp_path / "stage0" / "config.json").read_text())
    recorded = config["llava_edge"]["vision_pretraining"]
    assert recorded["probe_after"] == result.probe_after and recorded["steps"] == 30
    for name in ("tokenizer.model", "tokenizer_config.json", "chat_template.jinja",
                 "preprocessor_config.json"):
        if (tiny_checkpoint / name).exists():
            assert (tmp_path / "stage0" / name).read_bytes() == (
                tiny_checkpoint / name).read_bytes()


def test_a_second_run_takes_the_tower_from_the_cache(tiny_checkpoint, tmp_path):
    first = pretrain_vision(tiny_checkpoint, tmp_path / "a", SMALL)
    second = pretrain_vision(tiny_checkpoint, tmp_path / "b", SMALL)
    assert second.cached and second.seconds == 0.0 and second.cache_file == first.cache_file
    assert second.probe_after == first.probe_after
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # another config is another tower; --no-cache trains and leaves the cache alone
    other = pretrain_vision(tiny_checkpoint, tmp_path / "c",
                            VisionPretrainConfig(**{**SMALL.__dict__, "steps": 31}))
    assert not other.cached and other.cache_file != first.cache_file
    fresh = pretrain_vision(tiny_checkpoint, tmp_path / "d", SMALL, use_cache=False)
    assert not fresh.cached and fresh.cache_file is None


def test_errors_name_what_is_wrong(tiny_checkpoint, tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(LlavaEdgeError, match="exists and is not empty"):
        pretrain_vision(tiny_checkpoint, tmp_path / "full", SMALL)
    first = pretrain_vision(tiny_checkpoint, tmp_path / "ok", SMALL)
    with open(first.cache_file, "r+b") as f:  # a damaged cache entry
        f.write(b"\0" * 64)
    with pytest.raises(LlavaEdgeError, match="cached vision tower .* cannot be read"):
        pretrain_vision(tiny_checkpoint, tmp_path / "again", SMALL)
    assert not (tmp_path / "again").exists()
    with pytest.raises(LlavaEdgeError, match="steps must be a positive integer"):
        VisionPretrainConfig(steps=0)


def test_cli_prints_the_probe_and_exits_1_on_a_bad_output(tiny_checkpoint, tmp_path,
                                                           capsys):
    args = ["pretrain-vision", str(tiny_checkpoint), "-o", str(tmp_path / "s0"),
            "--steps", "5"]
    assert run([*args, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["output_dir"] == str(tmp_path / "s0") and set(out["probe_after"])
    assert run(args) == 1  # the folder exists now
    assert "exists and is not empty" in capsys.readouterr().err
    assert run([*args, "--force"]) == 0
    assert "from the cache" in capsys.readouterr().out


@pytest.mark.parametrize("targets", ["cell", "object"])
def test_token_labels_follow_the_scenes(tiny_checkpoint, targets):
    """``cell``: every token whose patch centre lies in a shape's cell carries the shape
    (1-4 tokens on the tiny tower's 4x4 patches over the 3x3 grid); ``object``: the one
    token whose patch holds the shape's centre."""
    from llava_edge.export.open_checkpoint import load_llava

    loaded = load_llava(tiny_checkpoint)
    tower = pv._tower(loaded.model)
    data = pv._Scenes(loaded.processor, tower.config,
                      VisionPretrainConfig(n_scenes=300, targets=targets))
    cells = data.token_cell.tolist()
    assert sorted(set(cells)) == list(range(9)) and len(cells) == 16
    assert cells[:4] == [0, 1, 1, 2] and cells[5] == cells[6] == 4  # the centre cell: 4 tokens
    occupied = data.labels[..., 0]
    if targets == "cell":  # a token's cell label is where the token is
        assert (data.labels[..., 4] == data.token_cell).all()
    per_image = occupied.sum(1).float()
    if targets == "cell":
        assert per_image.min() >= 1 and per_image.max() <= 4 * 3
    else:  # one token per shape (two small shapes near a border may share a patch)
        assert per_image.min() >= 1 and per_image.max() <= 3
    attrs = data.labels[occupied == 1][:, 1:4]
    assert (attrs >= 0).all() and (data.labels[occupied == 0][:, 1:4] == -100).all()
    with pytest.raises(LlavaEdgeError, match="targets must be"):
        VisionPretrainConfig(targets="pixels")
