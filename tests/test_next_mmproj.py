"""The LLaVA-NeXT mmproj: llama.cpp's LLaVA-1.6 keys, loaded and run by the vendored mtmd,
and how far that path is from transformers (issue #20). Figures measured, bounds honest:
where llama.cpp differs (no unpadding, no newline, tiles before the overview, no tiling of
a small image, CLS after the patches), the tests assert the difference, so that an
upstream fix shows up here as a failure asking for the README and results to change."""

from __future__ import annotations

import numpy as np
import pytest

from llava_edge.export.gguf_parity import mmproj_parity, next_image_sizes, reference_image
from llava_edge.export.mmproj import llama_cpp_pinpoints
from llava_edge.export.mtmd_encode import mtmd_chunks
from llava_edge.export.open_checkpoint import load_llava

THREADS = 2


@pytest.fixture(scope="module")
def next_gguf(tiny_next_checkpoint, tmp_path_factory):
    """`tiny-next` as an F16 GGUF + mmproj (the --mmproj refusal is lifted)."""
    from llava_edge.export.gguf import export_gguf

    return export_gguf(tiny_next_checkpoint, tmp_path_factory.mktemp("gguf") / "tiny-next",
                       quants=("F16",), mmproj=True, parity=False)


@pytest.fixture(scope="module")
def figures(tiny_next_checkpoint, next_gguf):
    return mmproj_parity(load_llava(tiny_next_checkpoint), next_gguf.mmproj_file,
                         next_gguf.llm_file("F16"), n_threads=THREADS)


def test_pinpoints_are_written_width_first():
    # transformers reads [[height, width], ...]; clip.cpp reads pairs as {width, height}
    assert llama_cpp_pinpoints([[64, 128], [192, 64]]) == [128, 64, 64, 192]


def test_next_mmproj_carries_the_llava_1_6_keys(tiny_next_checkpoint, next_gguf):
    import gguf
    from transformers import AutoConfig

    reader = gguf.GGUFReader(next_gguf.mmproj_file)
    meta = {k: f.contents() for k, f in reader.fields.items()}
    tensors = {t.name: t for t in reader.tensors}
    config = AutoConfig.from_pretrained(tiny_next_checkpoint)
    assert meta["clip.projector_type"] == "mlp"
    assert meta["clip.vision.image_grid_pinpoints"] == llama_cpp_pinpoints(
        config.image_grid_pinpoints) == [128, 64, 64, 128, 128, 128, 192, 64, 64, 192]
    assert meta["clip.vision.mm_patch_merge_type"] == "spatial_unpad"
    assert meta["clip.vision.image_crop_resolution"] == 64
    newline = tensors["v.image_newline"]
    assert newline.tensor_type == gguf.GGMLQuantizationType.F32
    assert int(np.prod(newline.shape)) == meta["clip.vision.projection_dim"] == 256


@pytest.mark.parametrize("width, height, tiles", [(96, 64, 2), (64, 96, 2), (128, 128, 4),
                                                  (200, 60, 3)])
def test_mtmd_loads_and_tiles_images_of_several_aspect_ratios(next_gguf, width, height,
                                                              tiles):
    image = np.asarray(reference_image(max(width, height)).resize((width, height)))
    chunks = mtmd_chunks(next_gguf.mmproj_file, next_gguf.llm_file("F16"), image,
                         n_threads=THREADS)
    views = [c for c in chunks if isinstance(c, np.ndarray)]
    # one image chunk per tile plus the overview, each a whole 4x4 view, nothing between
    assert len(chunks) == len(views) == tiles + 1
    assert all(v.shape == (16, 256) and np.isfinite(v).all() for v in views)


def test_llama_cpp_next_divergence_is_measured(figures):
    images = {e["image"]: e for e in figures["images"]}
    assert list(images) == [f"{w}x{h}" for w, h in next_image_sizes(64)]
    counts = {k: (e["n_positions_torch"], e["n_positions_llama_cpp"]) for k, e in images.items()}
    # transformers: base + unpadded grid + a newline per feature row; llama.cpp: 16 per
    # view (no unpad, no newline), and no tiling at all for an image of one tile's size
    assert counts == {"64x64": (36, 16), "96x64": (44, 48), "64x96": (46, 48),
                      "128x128": (88, 80), "200x60": (68, 64)}
    assert figures["n_positions_equal"] == 0
    assert images["64x64"]["n_views_llama_cpp"] == 1 and "views_differ" in images["64x64"]
    for name, entry in images.items():
        assert entry["n_text_tokens_between_views_llama_cpp"] == 0
        if name == "64x64":
            continue
        n = entry["n_views_llama_cpp"]
        assert n == entry["n_views_torch"]
        # the tiles come first, the overview (transformers' view 0) last
        assert entry["view_order_llama_cpp"] == list(range(1, n)) + [0]
        # the same views, CLS after the patches: equal once shifted by one
        assert entry["per_view_cosine_min_shifted_by_one"] > 0.99
        assert entry["per_view_cosine_mean"] < 0.95


def test_stock_llama_cpp_generation_is_compared(figures):
    gen = figures["generation"]
    # llama.cpp's prompt: 33 + 48 (three whole views) + 11 text positions; transformers':
    # 33 + 44 (base + unpadded 1x2 grid + newlines) + 10. The extra text token is the
    # tokenizer's leading space on the text mtmd splits off after the image marker.
    assert (gen["n_prompt_positions_torch"], gen["n_prompt_positions_llama_cpp"]) == (87, 92)
    assert gen["n_text_tokens_llama_cpp"] == gen["n_text_tokens_torch"] + 1
    assert not gen["text_tokens_identical"]
    assert len(gen["greedy_torch"]) == len(gen["greedy_llama_cpp"]) == 16
    # random weights: near-flat distributions, so these say little (see the results README)
    assert 0 <= gen["first_token_kl"] < 0.1


def test_the_generation_check_reuses_the_parity_reference(tiny_next_checkpoint, next_gguf):
    """Export frees the language model after PyTorch's parity references; LLaVA-NeXT's
    generation check then takes the first reference instead of running the model again,
    with the same figures."""
    from test_export_gguf_parity import _parity_kept_and_dropped

    files = {"F16": next_gguf.llm_file("F16")}
    kept, dropped, loaded = _parity_kept_and_dropped(tiny_next_checkpoint, files,
                                                     next_gguf.mmproj_file)
    assert dropped == kept and "generation" in dropped["mmproj"]
    assert loaded.model.model.language_model is None
