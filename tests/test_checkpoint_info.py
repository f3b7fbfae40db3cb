"""`describe_checkpoint` reads configs the way the Hub writes them, defaults left out."""

from __future__ import annotations

import json
import struct

from llava_edge.checkpoint_info import describe_checkpoint
from llava_edge.presets import get_preset


def _fake_safetensors(path, tensors: dict[str, tuple[str, list[int]]]) -> None:
    """A safetensors file whose header declares ``tensors`` (data is zeros)."""
    header, offset = {}, 0
    for name, (dtype, shape) in tensors.items():
        size = 2
        for d in shape:
            size *= d
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * offset)


def test_llava_hf_style_config_with_defaults_left_out(tmp_path):
    # The shape of llava-hf/llava-1.5-7b-hf's config.json: the LLM's hidden size, layer
    # count and heads are absent because they equal LlamaConfig's defaults.
    config = {
        "architectures": ["LlavaForConditionalGeneration"],
        "ignore_index": -100, "image_token_index": 32000, "model_type": "llava",
        "pad_token_id": 32001, "projector_hidden_act": "gelu",
        "text_config": {"architectures": ["LlamaForCausalLM"], "max_position_embeddings": 4096,
                        "model_type": "llama", "rms_norm_eps": 1e-05, "vocab_size": 32064},
        "vision_config": {"hidden_size": 1024, "image_size": 336, "intermediate_size": 4096,
                          "model_type": "clip_vision_model", "num_attention_heads": 16,
                          "num_hidden_layers": 24, "patch_size": 14, "projection_dim": 768},
        "vision_feature_layer": -2, "vision_feature_select_strategy": "default",
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    _fake_safetensors(tmp_path / "model.safetensors", {
        "language_model.model.embed_tokens.weight": ("F16", [64, 8]),
        "vision_tower.vision_model.embeddings.class_embedding": ("F16", [8]),
        "multi_modal_projector.linear_1.weight": ("F16", [8, 8]),
    })
    info = describe_checkpoint(tmp_path)
    assert info.text["hidden_size"] == 4096 and info.text["num_hidden_layers"] == 32
    assert info.text["num_key_value_heads"] == 32
    assert info.image_tokens_per_image == 576  # (336 / 14)^2, CLS dropped
    assert info.params_by_part == {"vision_tower": 8, "projector": 64, "language_model": 512}
    assert info.weight_dtypes == ["F16"] and not info.random_init


def test_tiny_checkpoint_described_from_files(tiny_checkpoint):
    spec = get_preset("tiny")
    info = describe_checkpoint(tiny_checkpoint)
    assert info.vision["type"] == "clip" and info.text["type"] == "llama"
    assert info.text["hidden_size"] == spec.text.hidden_size
    assert info.image_tokens_per_image == spec.n_image_tokens == 16
    assert info.tokenizer["kind"] == "SentencePiece BPE (byte fallback)"
    assert "<image>" in info.tokenizer["added_tokens"]
    assert info.random_init and info.preset == "tiny"
    assert "model.safetensors" in info.files


def test_tiny_qwen2_described(tiny_qwen2_checkpoint):
    info = describe_checkpoint(tiny_qwen2_checkpoint)
    assert info.vision["type"] == "siglip" and info.text["type"] == "qwen2"
    assert info.tokenizer["kind"] == "byte-level BPE"
    assert info.image_tokens_per_image == 16  # SigLIP has no CLS token to drop or keep
    assert info.projector["vision_feature_select_strategy"] == "full"


def test_image_aspect_ratio_follows_training():
    from llava_edge.checkpoint_info import image_aspect_ratio

    assert image_aspect_ratio({}) == "square"  # a foreign or untrained checkpoint
    trained = {"llava_edge": {"training": {"image_aspect_ratio": "pad"}}}
    assert image_aspect_ratio(trained) == "pad"  # what the bundle and the eval must apply
    assert image_aspect_ratio({"llava_edge": {"training": {"image_aspect_ratio": "square"}}}) \
        == "square"
