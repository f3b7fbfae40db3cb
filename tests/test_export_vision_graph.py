"""The torch vision graph: truncated tower + selection + projector == transformers' own."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from llava_edge.export.open_checkpoint import UnsupportedModelError
from llava_edge.export.vision_graph import (VisionEncoder, graph_spec, load_vision,
                                            reference_features)


@pytest.mark.parametrize("fixture, n_run, n_layers, n_tokens", [
    ("tiny_checkpoint", 3, 4, 16),        # CLIP, layer -2, CLS dropped
    ("tiny_qwen2_checkpoint", 4, 4, 16),  # SigLIP, layer -1, 'full' (no CLS to keep)
])
def test_encoder_matches_get_image_features(request, fixture, n_run, n_layers, n_tokens):
    loaded = load_vision(request.getfixturevalue(fixture))
    encoder = loaded.encoder()
    assert loaded.spec.num_layers == n_layers
    assert len(encoder.layers) == n_run  # layers past the feature layer are not in the graph
    pixels = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ours = encoder(pixels)
    theirs = reference_features(loaded.model, pixels)
    assert ours.shape == (3, n_tokens, loaded.spec.n_embd) == theirs.shape
    assert torch.equal(ours, theirs)  # the same ops in the same order: bit-identical


def test_language_model_weights_are_never_loaded(tiny_checkpoint):
    loaded = load_vision(tiny_checkpoint)
    assert all(p.is_meta for p in loaded.model.model.language_model.parameters())
    assert not any(p.is_meta for p in loaded.encoder().parameters())


def _random_llava(vision_kind: str, feature_layer, strategy: str):
    from transformers import (CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, SiglipVisionConfig)

    kwargs = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=5,
                  num_attention_heads=4, image_size=32, patch_size=8)
    vision = (CLIPVisionConfig(**kwargs) if vision_kind == "clip"
              else SiglipVisionConfig(vision_use_head=False, **kwargs))
    text = LlamaConfig(hidden_size=48, intermediate_size=64, num_hidden_layers=1,
                       num_attention_heads=4, num_key_value_heads=2, vocab_size=128)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=3,
                         vision_feature_layer=feature_layer,
                         vision_feature_select_strategy=strategy)
    config.vision_config._attn_implementation = "eager"
    torch.manual_seed(0)
    return LlavaForConditionalGeneration(config).eval()


@pytest.mark.parametrize("kind, layers, strategy, n_run", [
    ("clip", [1, 3], "default", 3),
    ("clip", [-4, -2], "full", 4),
    ("siglip", [0, 2], "full", 2),
    ("clip", [0], "full", 0),  # the embeddings alone (an int 0 trips transformers itself)
])
def test_layer_lists_concatenate_like_transformers(kind, layers, strategy, n_run):
    model = _random_llava(kind, layers, strategy)
    spec = graph_spec(model.config)
    inner = model.model
    encoder = VisionEncoder(inner.vision_tower, inner.multi_modal_projector, spec).eval()
    assert len(encoder.layers) == n_run == spec.n_layers_run
    pixels = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        ours = encoder(pixels)
    assert torch.equal(ours, reference_features(model, pixels))
    assert ours.shape[1] == spec.n_image_tokens


@pytest.mark.parametrize("change, message", [
    ({"vision_feature_layer": -9}, "vision_feature_layer -9 is out of range for a 5-layer tower"),
    ({"vision_feature_layer": [1, 6]}, "vision_feature_layer 6 is out of range"),
    ({"mm_projector_type": "qformer"}, "projector type 'qformer'"),
])
def test_graph_spec_names_what_it_cannot_build(change, message):
    config = _random_llava("clip", -2, "default").config
    for key, value in change.items():
        setattr(config, key, value)
    with pytest.raises(UnsupportedModelError, match=message):
        graph_spec(config)


def _edited_copy(src, dst, edit):
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    edit(config)
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def test_unsupported_vision_tower_is_named(tiny_checkpoint, tmp_path):
    ckpt = _edited_copy(tiny_checkpoint, tmp_path / "ckpt",
                        lambda c: c["vision_config"].update(model_type="dinov2"))
    with pytest.raises(UnsupportedModelError, match="vision tower 'dinov2' is not supported"):
        load_vision(ckpt)


def test_unsupported_projector_is_named(tiny_checkpoint, tmp_path):
    ckpt = _edited_copy(tiny_checkpoint, tmp_path / "ckpt",
                        lambda c: c.update(projector_hidden_act="swiglu"))
    with pytest.raises(UnsupportedModelError, match="projector activation 'swiglu'"):
        load_vision(ckpt)


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.update(vision_feature_select_strategy="cls_patch"),
     "vision_feature_select_strategy 'cls_patch' is not supported"),
    (lambda c: c.update(mm_projector_type="qformer"), "projector type 'qformer'"),
    (lambda c: c.update(vision_feature_layer=7), "vision_feature_layer 7 is out of range"),
])
def test_unsupported_graph_settings_are_named(tiny_checkpoint, tmp_path, edit, message):
    ckpt = _edited_copy(tiny_checkpoint, tmp_path / "ckpt", edit)
    with pytest.raises(UnsupportedModelError, match=message):
        load_vision(ckpt)


def test_mismatched_weights_are_named(tiny_checkpoint, tmp_path):
    # A config that promises a wider tower than the weights hold.
    ckpt = _edited_copy(tiny_checkpoint, tmp_path / "ckpt",
                        lambda c: c["vision_config"].update(intermediate_size=256))
    from llava_edge.errors import LlavaEdgeError

    with pytest.raises(LlavaEdgeError,
                       match=r"vision tower weights do not match.*mlp\.fc1\.weight"):
        load_vision(ckpt)


def test_vision_flops_count_only_computed_layers(tiny_checkpoint):
    from llava_edge.export.vision_graph import vision_flops

    flops = vision_flops(load_vision(tiny_checkpoint).spec)
    # 17 tokens (16 patches + CLS), width 128, MLP 512, 3 of 4 layers computed.
    per_layer = 2 * 17 * (4 * 128 * 128 + 2 * 17 * 128 + 2 * 128 * 512)
    assert flops["encoder_layers"] == 3 * per_layer
    assert flops["patch_embed"] == 2 * 16 * (3 * 16 * 16) * 128
    assert flops["projector"] == 2 * 16 * (128 * 256 + 256 * 256)
    assert flops["total"] == sum(v for k, v in flops.items() if k != "total")
