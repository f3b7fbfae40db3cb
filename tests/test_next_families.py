"""LLaVA-NeXT beyond CLIP + Llama: a SigLIP tower with a Qwen2 LLM (byte-level BPE, ChatML),
and Yi's layout (LLaVA-1.6-34B: a Llama-architecture LLM whose SentencePiece vocab carries
ChatML's tokens, no BOS, ``<|im_end|>`` as EOS). Each is exported and answered by the
torch-free runtime, against transformers on images of six aspect ratios."""

from __future__ import annotations

import json

import numpy as np
import pytest

from llava_edge.bundle import open_bundle
from llava_edge.runtimes.pipeline import LlavaEdge
from next_reference import SIZES, hf_greedy, hf_inputs, hf_packed_features, load_hf
from next_reference import two_block_image

FAMILIES = ["tiny-next-qwen2", "tiny-next-yi"]
ASPECTS = ["tall", "wide", "square", "tiny", "huge", "odd"]


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, tmp_path_factory):
    """(preset, checkpoint, bundle) with fp32 + int8 graphs and F16 + Q4_K_M GGUFs, the
    LLM's parity measured, and an mmproj for stock llama.cpp."""
    from llava_edge.export.bundle_export import ExportOptions, export_bundle
    from llava_edge.presets import get_preset
    from llava_edge.trainer.init_checkpoint import build_checkpoint

    preset = request.param
    root = tmp_path_factory.mktemp(preset)
    checkpoint = build_checkpoint(get_preset(preset), root / "ckpt").path
    bundle = root / "bundle"
    export_bundle(checkpoint, bundle, ExportOptions(
        vision_precisions=("fp32", "int8"), llm_quants=("F16", "Q4_K_M"), mmproj=True))
    return preset, checkpoint, bundle


@pytest.fixture(scope="module")
def exact(family):
    with LlavaEdge.load(family[2], vision_precision="fp32", llm_quant="F16",
                        n_threads=1) as model:
        yield model


@pytest.fixture(scope="module")
def hf(family):
    return load_hf(family[1])


@pytest.mark.parametrize("name", ASPECTS)
def test_greedy_answer_and_positions_equal_transformers(name, exact, hf):
    image, prompt, n = two_block_image(SIZES[name], seed=len(name)), "Describe the image.", 12
    torch_tokens, n_prompt = hf_greedy(hf, image, prompt, n)
    answer = exact.ask(image, prompt, max_new_tokens=n)
    assert answer.n_prompt_tokens == n_prompt
    assert answer.tokens == torch_tokens[: len(answer.tokens)]
    assert len(answer.tokens) == n or answer.stop_reason == "eos"


def test_prompt_ids_are_the_processors(family, exact, hf):
    """The runtime's prompt (llama.cpp's tokenizer on the bundle's template) is the HF
    processor's, with each image's run of positions as one ``<image>``: no BOS for Yi, its
    ChatML markers as single tokens."""
    _, processor = hf
    ids = hf_inputs(processor, two_block_image(SIZES["odd"]), "What is it?")["input_ids"][0]
    image_id = exact.image_token_id
    collapsed = [t for i, t in enumerate(ids.tolist())
                 if t != image_id or i == 0 or ids[i - 1] != image_id]
    ours = exact.prompt_ids("What is it?", 1)
    assert ours == collapsed
    tokenizer = processor.tokenizer
    if family[0] == "tiny-next-yi":
        assert ours[0] != tokenizer.bos_token_id
        assert tokenizer.convert_tokens_to_ids("<|im_start|>") in ours
        assert exact.llm.eos_token == tokenizer.convert_tokens_to_ids("<|im_end|>")
    else:
        assert tokenizer.bos_token_id is None


@pytest.mark.parametrize("name", ["tall", "odd"])
def test_embed_is_the_packed_sequence_transformers_injects(name, exact, hf):
    ref = hf_packed_features(hf, two_block_image(SIZES[name]))
    ours = exact.embed(two_block_image(SIZES[name]))
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() < 1e-4


def test_bundle_records_the_family(family):
    preset, checkpoint, bundle = family
    m = open_bundle(bundle).manifest  # every file's hash checked, newline included
    config = json.loads((checkpoint / "config.json").read_text())
    assert m.anyres is not None and m.anyres.pinpoints == \
        tuple(tuple(p) for p in config["image_grid_pinpoints"])
    if preset == "tiny-next-qwen2":
        # SigLIP: no CLS to drop, every patch kept ("full"): 4x4 patches per view
        assert (m.source.vision, m.source.text) == ("siglip", "qwen2")
        assert (m.anyres.strategy, m.anyres.num_additional_image_tokens) == ("full", 0)
        assert m.prompt.template == "chatml"
    else:
        assert (m.source.vision, m.source.text) == ("clip", "llama")
        assert (m.anyres.strategy, m.anyres.num_additional_image_tokens) == ("default", 1)
        assert m.prompt.template == "chatml_direct" and m.prompt.stop == ("<|im_end|>",)
    assert m.image.n_tokens == 16
    assert m.mmproj is not None
    f16 = m.llm_parity("F16")  # measured at export on tiled images
    assert f16["top1_agreement"] == 1.0 and f16["greedy_identical"] == f16["n_prompts"]


def test_stock_llama_cpp_next_path_is_measured(family):
    """Stock llama.cpp (the vendored mtmd) on each family's mmproj: the image rows never
    take transformers' positions (no unpad, no newline; measured on five images). Within a
    view its rows are transformers' own for SigLIP (no CLS to misplace) and shifted by one
    for CLIP (CLS after the patches), so only the packing is wrong for SigLIP."""
    from llava_edge.export.gguf_parity import mmproj_parity
    from llava_edge.export.open_checkpoint import load_llava

    preset, checkpoint, bundle = family
    m = open_bundle(bundle, verify="size").manifest
    figures = mmproj_parity(load_llava(checkpoint), bundle / m.mmproj.file,
                            bundle / m.llm_entry("F16").file, n_threads=2)
    assert figures["n_positions_equal"] == 0
    aligned = [e for e in figures["images"] if "view_order_llama_cpp" in e]
    assert len(aligned) == 4  # 64x64 is not tiled by llama.cpp at all
    for entry in aligned:
        n = entry["n_views_llama_cpp"]
        assert entry["view_order_llama_cpp"] == list(range(1, n)) + [0]  # overview last
        if preset == "tiny-next-qwen2":
            assert entry["per_view_cosine_min"] > 0.9999
        else:
            assert entry["per_view_cosine_min_shifted_by_one"] > 0.99
            assert entry["per_view_cosine_mean"] < 0.95
    gen = figures["generation"]
    assert gen["n_prompt_positions_torch"] != gen["n_prompt_positions_llama_cpp"]
    # byte-level BPE has no leading-space token to add where mtmd splits the text at the
    # image; Yi's SentencePiece vocab does (the count differs by one)
    assert gen["text_tokens_identical"] == (preset == "tiny-next-qwen2")
