"""LLaVA-NeXT (LLaVA-1.6) checkpoints and their export: the `tiny-next` preset, the bundle
(per-view vision graph, ``image_newline.npy``, the manifest's ``anyres`` section), the
vision graph against PyTorch per view and packed against transformers, the GGUF's parity
on a tiled and unpadded image, and what is refused.

Figures measured when this was written (`tiny-next`, 12 images of several aspect ratios,
50 views; mean cosine per view / of the packed rows, 724 of them):

    fp32 1.000000 / 1.000000 (max abs 2e-7)   fp16 0.9999997 / 0.9999998
    int8 0.99968  / 0.99971                   int4 0.9908    / 0.9914
    GGUF F16: top-1 100%, KL 2.4e-8, greedy 3/3 identical (44 image positions)
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from llava_edge.bundle import open_bundle
from llava_edge.checkpoint_info import describe_checkpoint
from llava_edge.export.anyres_export import (NEWLINE_FILE, Tiling, hf_packed_features,
                                             packed_parity)
from llava_edge.export.onnx_export import make_session
from llava_edge.export.open_checkpoint import UnsupportedModelError, check_supported
from llava_edge.export.vision import DEFAULT_GATES
from llava_edge.export.vision_graph import load_vision
from llava_edge.export.vision_parity import compare, onnx_embeds, synthetic_images, tiling_images
from llava_edge.presets import get_preset
from llava_edge.runtimes.anyres import AnyresPlan, recipe_from_hf

PINPOINTS = ((64, 128), (128, 64), (128, 128), (64, 192), (192, 64))


def _images():
    return [image for _, image in synthetic_images(4) + tiling_images()]


@pytest.fixture(scope="module")
def vision(tiny_next_checkpoint):
    return load_vision(tiny_next_checkpoint)


# -- the checkpoint -------------------------------------------------------------------------

def test_preset_is_next_with_tile_multiples():
    spec = get_preset("tiny-next")
    assert spec.is_next and not get_preset("tiny").is_next
    assert spec.image_grid_pinpoints == PINPOINTS and spec.n_image_tokens == 16
    assert all(h % 64 == 0 and w % 64 == 0 for h, w in spec.image_grid_pinpoints)


def test_checkpoint_loads_and_generates(tiny_next_checkpoint):
    from transformers import AutoProcessor, LlavaNextForConditionalGeneration

    model, info = LlavaNextForConditionalGeneration.from_pretrained(
        tiny_next_checkpoint, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    config = model.config
    assert [tuple(p) for p in config.image_grid_pinpoints] == list(PINPOINTS)
    assert config.vision_feature_select_strategy == "default"
    assert config.vision_feature_layer == -2
    assert config.llava_edge["preset"] == "tiny-next" and config.llava_edge["random_init"]
    # image_newline is initialised as transformers does (std 1/sqrt(hidden)), not zeros
    assert model.model.image_newline.std().item() == pytest.approx(1 / 16, rel=0.25)

    processor = AutoProcessor.from_pretrained(tiny_next_checkpoint)
    assert type(processor).__name__ == "LlavaNextProcessor"
    assert processor.image_processor.crop_size["height"] == 64  # tiles cut at the tile size
    recipe_from_hf(processor.image_processor.to_dict())  # the runtime's checks pass
    image = Image.new("RGB", (96, 64), (200, 30, 30))
    messages = [{"role": "user", "content": [{"type": "image"},
                                             {"type": "text", "text": "What is it?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert prompt.endswith("USER: <image>\nWhat is it? ASSISTANT:")
    inputs = processor(images=image, text=prompt, return_tensors="pt")
    plan = AnyresPlan.for_image(image, pinpoints=PINPOINTS, tile_size=64, patch_size=16)
    assert (plan.grid, plan.unpadded, plan.n_positions) == ((1, 2), (0, 1, 4, 6), 44)
    assert int((inputs["input_ids"] == config.image_token_id).sum()) == plan.n_positions
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert out.shape[1] > inputs["input_ids"].shape[1]


def test_info_describes_the_tiling(tiny_next_checkpoint, capsys):
    from llava_edge.cli import run

    described = describe_checkpoint(tiny_next_checkpoint)
    assert described.architecture == "LlavaNextForConditionalGeneration"
    assert described.image_tokens_per_image == 16
    # the most views: a 2x2 grid and the base view; the most positions: 16 + 8 rows x 9
    assert described.anyres == {"image_grid_pinpoints": [list(p) for p in PINPOINTS],
                                "tokens_per_view": 16, "max_views": 5, "max_positions": 88}
    assert described.params_by_part["projector"] > 256  # image_newline counts with it
    assert run(["info", str(tiny_next_checkpoint)]) == 0
    out = capsys.readouterr().out
    assert "LlavaNextForConditionalGeneration" in out and "16 per view" in out


@pytest.mark.slow
def test_init_cli_builds_tiny_next(tmp_path, capsys):
    from llava_edge.cli import run

    assert run(["init", "--preset", "tiny-next", str(tmp_path / "ck")]) == 0
    assert "16 image tokens per view" in capsys.readouterr().out
    assert json.loads((tmp_path / "ck" / "config.json").read_text())["model_type"] == "llava_next"


# -- the bundle -----------------------------------------------------------------------------

def test_bundle_anyres_section_and_newline(tiny_next_bundle, tiny_next_checkpoint):
    bundle = open_bundle(tiny_next_bundle)  # every file's hash checked, newline included
    m = bundle.manifest
    config = json.loads((tiny_next_checkpoint / "config.json").read_text())
    a = m.anyres
    assert a is not None and a.merge == "spatial_unpad"
    assert a.pinpoints == tuple(tuple(p) for p in config["image_grid_pinpoints"]) == PINPOINTS
    assert (a.tile_size, a.patch_size, a.strategy, a.num_additional_image_tokens) == \
        (64, 16, "default", 1)
    assert a.newline_file == NEWLINE_FILE and NEWLINE_FILE in m.files
    assert m.image.n_tokens == 16 and m.image.n_embd == 256 and m.image.image_size == 64
    processor = json.loads((tiny_next_checkpoint / "processor_config.json").read_text())
    assert m.preprocess == recipe_from_hf(processor["image_processor"])
    assert not m.preprocess.pad_to_square

    newline = np.load(bundle.file(NEWLINE_FILE), allow_pickle=False)
    with safe_open(tiny_next_checkpoint / "model.safetensors", "np") as f:
        expected = f.get_tensor("image_newline")
    assert newline.dtype == np.float32 and newline.shape == (256,)
    assert np.array_equal(newline, expected)


def test_vision_graph_is_per_view_with_a_dynamic_batch(tiny_next_bundle, vision):
    m = open_bundle(tiny_next_bundle, verify="size").manifest
    graph = onnx.load(str(tiny_next_bundle / m.vision_entry("fp32").file))
    (inp,), (out,) = graph.graph.input, graph.graph.output
    in_dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    out_dims = [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim]
    assert isinstance(in_dims[0], str) and in_dims[1:] == [3, 64, 64]
    assert out_dims[0] == in_dims[0] and out_dims[1:] == [16, 256]

    images = _images()
    tiling = Tiling.of(vision)
    pixels, counts = tiling.views(images)
    assert len(pixels) == sum(counts) and set(counts) == {3, 4, 5}  # 1x2, 1x3, 2x2 grids
    with torch.inference_mode():
        reference = vision.encoder()(torch.from_numpy(pixels)).numpy()
    for precision in ("fp32", "int8"):
        session = make_session(tiny_next_bundle / m.vision_entry(precision).file)
        got = onnx_embeds(session, pixels, batch_size=7)  # batches cut across images
        if precision == "fp32":  # (dynamic int8 scales activations over the whole batch)
            assert np.allclose(onnx_embeds(session, pixels[:1], 1), got[:1], atol=1e-5)
        figures = compare(reference, got)
        assert figures.mean_cosine >= DEFAULT_GATES[precision], (precision, figures)
        recorded = m.vision_entry(precision)
        assert recorded.passed and recorded.parity["n_views"] > recorded.parity["n_images"]
    assert compare(reference, onnx_embeds(make_session(
        tiny_next_bundle / "vision_fp32.onnx"), pixels)).max_abs_err < 1e-5


def test_packed_features_equal_transformers(tiny_next_bundle, vision):
    """Views (runtime numpy) -> ONNX graph -> pack_features with the bundle's newline ==
    transformers' processor + get_image_features, image by image."""
    m = open_bundle(tiny_next_bundle, verify="size").manifest
    packed = m.vision_entry("fp32").parity["packed"]
    assert packed["mean_cosine"] >= DEFAULT_GATES["fp32"] and packed["max_abs_err"] < 1e-5
    assert packed["n_images"] == 12
    assert m.vision_entry("int8").parity["packed"]["mean_cosine"] >= DEFAULT_GATES["int8"]

    images = _images()
    tiling = Tiling.of(vision)
    pixels, counts = tiling.views(images)
    newline = np.load(tiny_next_bundle / NEWLINE_FILE)
    ours = tiling.pack(images, onnx_embeds(make_session(tiny_next_bundle / "vision_fp32.onnx"),
                                           pixels), counts, newline)
    theirs = hf_packed_features(vision, images)
    for image, a, b in zip(images, ours, theirs):
        assert a.shape == b.shape == (tiling.plan(image).n_positions, 256)
        assert np.abs(a - b).max() < 1e-5
    # a row count that disagrees is an error, not a low figure
    with pytest.raises(Exception, match="tiling disagrees with transformers"):
        packed_parity(theirs[:1], [ours[0][:-1]])


def test_gguf_f16_matches_pytorch_on_a_tiled_image(tiny_next_bundle):
    m = open_bundle(tiny_next_bundle, verify="size").manifest
    llm = m.parity["llm"]
    assert llm["reference"]["image"].endswith("96x64")
    assert llm["reference"]["image_positions"] == 44  # base 16 + 4 rows x (6 + newline)
    f16 = llm["logits"]["F16"]
    assert f16["top1_agreement"] == 1.0 and f16["ok"]
    assert f16["greedy_identical"] == f16["n_prompts"] == 3
    assert f16["batched_prefill_top1"] == 1.0
    assert llm["tokenization"]["parity_prompts_identical"]
    assert llm["tokenization"]["runtime_mismatches"] == 0
    assert m.llm_entry("Q4_K_M").n_embd == 256


def test_the_newline_file_is_part_of_the_bundle(tiny_next_bundle, tmp_path):
    """A copied bundle opens (the newline travels with it); without the file it is refused
    by name."""
    copy = tmp_path / "copy"
    shutil.copytree(tiny_next_bundle, copy)
    assert open_bundle(copy).manifest.anyres.newline_file == NEWLINE_FILE
    (copy / NEWLINE_FILE).unlink()
    with pytest.raises(Exception, match=NEWLINE_FILE):
        open_bundle(copy)


# -- refusals -------------------------------------------------------------------------------

def _edited(checkpoint, tmp_path, **changes):
    config = json.loads((checkpoint / "config.json").read_text())
    config.update(changes)
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path


@pytest.mark.parametrize("changes, message", [
    ({"mm_patch_merge_type": "flat"}, "mm_patch_merge_type 'flat' is not supported"),
    ({"image_grid_pinpoints": [[64, 100]]}, r"grid pinpoints \[\(64, 100\)\] are not multiples"),
    ({"vision_feature_select_strategy": "full"}, "cannot be laid out as a grid"),
    ({"model_type": "llava_onevision"}, "model_type 'llava_onevision' is not supported"),
])
def test_unsupported_next_configs_are_named(tiny_next_checkpoint, tmp_path, changes, message):
    with pytest.raises(UnsupportedModelError, match=message):
        check_supported(_edited(tiny_next_checkpoint, tmp_path, **changes))


def test_spatial_unpad_is_accepted(tiny_next_checkpoint, tmp_path):
    edited = _edited(tiny_next_checkpoint, tmp_path, mm_patch_merge_type="spatial_unpad")
    assert check_supported(edited)["model_type"] == "llava_next"


# -- the slow suite -------------------------------------------------------------------------

@pytest.mark.slow
def test_all_precisions_hold_their_gates_per_view_and_packed(tiny_next_checkpoint, tmp_path):
    from llava_edge.export.vision import export_vision

    result = export_vision(tiny_next_checkpoint, tmp_path / "out",
                           precisions=("fp32", "fp16", "int8", "int4"))
    for v in result.variants:
        assert v.passed and v.written, v
        assert v.parity["mean_cosine"] >= DEFAULT_GATES[v.precision]
        assert v.parity["packed"]["mean_cosine"] >= DEFAULT_GATES[v.precision]
    assert result.anyres["newline_file"] == NEWLINE_FILE
    assert (tmp_path / "out" / NEWLINE_FILE).is_file()


@pytest.mark.slow
def test_verify_measures_a_next_bundle(tiny_next_bundle, tiny_next_checkpoint, tmp_path):
    from llava_edge.export.verify import verify_bundle

    report = verify_bundle(tiny_next_bundle, tiny_next_checkpoint, n_images=2,
                           max_new_tokens=8)
    fp32 = report["vision"]["fp32"]["measured"]
    assert fp32["mean_cosine"] >= DEFAULT_GATES["fp32"] and fp32["preprocess_max_abs_err"] < 1e-5
    assert report["llm"]["measured"]["logits"]["F16"]["top1_agreement"] == 1.0
    assert report["ok"], report["greedy"]
