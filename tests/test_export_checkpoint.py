"""Unsupported checkpoints fail early with a message naming the part at fault."""

from __future__ import annotations

import json

import pytest

from llava_edge.export.open_checkpoint import UnsupportedModelError, check_supported, load_llava


def _config(tmp_path, **over):
    config = {"model_type": "llava", "vision_config": {"model_type": "clip_vision_model"},
              "text_config": {"model_type": "llama"}, "projector_hidden_act": "gelu"}
    for key, value in over.items():
        if key in ("vision_config", "text_config"):
            config[key] = {"model_type": value}
        else:
            config[key] = value
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path


@pytest.mark.parametrize("over, message", [
    ({"model_type": "idefics2"}, "model_type 'idefics2' is not supported"),
    ({"vision_config": "dinov2"}, "vision tower 'dinov2' is not supported"),
    ({"text_config": "gemma2"}, "language model 'gemma2' is not supported"),
    ({"projector_hidden_act": "swish_glu"}, "projector activation 'swish_glu'"),
])
def test_unsupported_parts_are_named(tmp_path, over, message):
    with pytest.raises(UnsupportedModelError, match=message):
        check_supported(_config(tmp_path, **over))


def test_supported_config_passes(tmp_path):
    assert check_supported(_config(tmp_path, text_config="qwen2"))["model_type"] == "llava"


def test_load_tiny(tiny_checkpoint):
    loaded = load_llava(tiny_checkpoint)
    assert loaded.vision_kind == "clip" and not loaded.model.training
