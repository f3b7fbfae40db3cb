"""LLaVA-NeXT through the torch-free runtime: tiled images, packed embeddings of a length
that depends on the image, against transformers on images of many aspect ratios."""

from __future__ import annotations

import numpy as np
import pytest

from llava_edge.errors import PromptError
from llava_edge.runtimes.pipeline import LlavaEdge
from next_reference import SIZES, hf_greedy, hf_packed_features, load_hf
from next_reference import two_block_image as _image


@pytest.fixture(scope="module")
def next_model(tiny_next_bundle):
    with LlavaEdge.load(tiny_next_bundle, vision_precision="fp32", llm_quant="F16",
                        n_threads=1) as model:
        yield model


@pytest.fixture(scope="module")
def hf(tiny_next_checkpoint):
    return load_hf(tiny_next_checkpoint)


@pytest.mark.parametrize("name", list(SIZES))
def test_greedy_answer_and_positions_equal_transformers(name, next_model, hf):
    """The exact pair (fp32 vision graph + F16 GGUF) answers token for token as
    ``transformers.generate`` does, and the prompt takes as many positions as the HF
    processor expands it to."""
    image, prompt, n = _image(SIZES[name], seed=len(name)), "Describe the image.", 16
    torch_tokens, n_prompt = hf_greedy(hf, image, prompt, n)

    answer = next_model.ask(image, prompt, max_new_tokens=n)
    assert answer.n_prompt_tokens == n_prompt
    assert answer.tokens == torch_tokens[: len(answer.tokens)]
    assert len(answer.tokens) == n or answer.stop_reason == "eos"


@pytest.mark.parametrize("name", ["tall", "wide", "odd"])
def test_embed_is_the_packed_sequence_transformers_injects(name, next_model, hf):
    image = _image(SIZES[name])
    ref = hf_packed_features(hf, image)
    ours = next_model.embed(image)
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() < 1e-4


def test_max_tiles_trades_positions_for_detail(tiny_next_bundle):
    image = _image(SIZES["odd"])
    counts = []
    for max_tiles in (None, 3, 1):
        with LlavaEdge.load(tiny_next_bundle, llm_quant="F16", n_threads=1,
                            max_tiles=max_tiles) as model:
            answer = model.ask(image, "What is it?", max_new_tokens=2)
            counts.append(answer.n_prompt_tokens)
            assert model.embed(image).shape[0] == model.layout.n_positions(image)
    assert counts[0] > counts[1] > counts[2]


def test_reuse_chat_and_two_images(next_model):
    """Variable-length image rows through the KV-prefix reuse, the embedding cache and a
    chat: the same answers as from scratch."""
    tall, wide = _image(SIZES["tall"], 1), _image(SIZES["wide"], 2)
    first = next_model.ask(tall, "What is on the left?", max_new_tokens=6)
    again = next_model.ask(tall, "What is on the left?", max_new_tokens=6)
    assert again.tokens == first.tokens
    assert again.timings.reused_tokens >= next_model.layout.n_positions(tall)
    assert again.timings.embedding_cache_hits == 1 or again.timings.images_encoded == 0

    both = next_model.ask([tall, wide], "<image> and <image>: which is wider?", max_new_tokens=6)
    next_model.clear_cache()
    fresh = next_model.ask([tall, wide], "<image> and <image>: which is wider?", max_new_tokens=6)
    assert both.tokens == fresh.tokens
    assert both.n_prompt_tokens == fresh.n_prompt_tokens

    chat = next_model.chat(max_new_tokens=4)
    one = chat.ask("Describe it.", image=wide)
    two = chat.ask("And the colours?")
    assert one.tokens and two.n_prompt_tokens > one.n_prompt_tokens


def test_context_check_counts_the_tiles(tiny_next_bundle):
    with LlavaEdge.load(tiny_next_bundle, llm_quant="F16", n_threads=1, n_ctx=256) as model:
        odd, tiny = _image(SIZES["odd"]), _image(SIZES["tiny"])
        rows = model.layout.n_positions(odd), model.layout.n_positions(tiny)
        k = model.llm.n_ctx // rows[0] + 1  # llama.cpp may round n_ctx up
        with pytest.raises(PromptError, match=rf"positions \({k} image\(s\) x {rows[0]} \+"):
            model.ask([odd] * k, "Describe them.", max_new_tokens=2)
        with pytest.raises(PromptError, match=rf"image\(s\) of {rows[0]}, .*{rows[1]} positions \+ \d+ text"):
            model.ask([odd] * (k - 1) + [tiny] * 3, "Describe them.", max_new_tokens=2)


def test_max_tiles_is_refused_for_llava_1_5_bundles(tiny_bundle):
    with pytest.raises(PromptError, match="max_tiles applies to LLaVA-NeXT"):
        LlavaEdge.load(tiny_bundle, max_tiles=2)


def test_cli_embed_writes_the_packed_rows(tiny_next_bundle, tmp_path):
    from llava_edge.cli import run

    image = tmp_path / "odd.png"
    _image(SIZES["odd"]).save(image)
    out = tmp_path / "e.npy"
    assert run(["embed", str(tiny_next_bundle), "--image", str(image), "--out", str(out),
                "--max-tiles", "2"]) == 0
    with LlavaEdge.load(tiny_next_bundle, n_threads=1, max_tiles=2) as model:
        assert np.load(out).shape == (model.layout.n_positions(_image(SIZES["odd"])),
                                      model.bundle.manifest.image.n_embd)


def test_server_answers_about_a_tiled_image_like_the_pipeline(tiny_next_bundle, next_model):
    """The OpenAI-compatible server on a LLaVA-NeXT bundle: same answer and prompt-token
    count (which depends on the image's size) as the pipeline."""
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    pytest.importorskip("openai")
    from llava_edge.runtimes.serve.app import ServeConfig, create_app
    from llava_edge.runtimes.serve.worker import Worker
    from test_serve import Served, _data_url, _png, _user
    from uvicorn_thread import serving

    model = LlavaEdge.load(tiny_next_bundle, vision_precision="fp32", llm_quant="F16",
                           n_threads=1)
    worker = Worker(model, max_queue=1).start()
    config = ServeConfig(model_name="next", api_key="k", max_body_bytes=8 << 20,
                         timeout_s=300.0, max_pixels=4_000_000)
    try:
        with serving(create_app(worker, config)) as port:
            image = _image(SIZES["wide"], 3)
            client = Served(port, worker, config).client(api_key="k")
            r = client.chat.completions.create(model="next", messages=[
                _user(_data_url(_png(image)), "Describe the image.")], max_tokens=6,
                temperature=0)
            expected = next_model.ask(image, "Describe the image.", max_new_tokens=6)
            assert r.choices[0].message.content == expected.text
            assert r.usage.prompt_tokens == expected.n_prompt_tokens
    finally:
        worker.close()


def test_bench_tiling_reports_views_and_positions_per_limit(tiny_next_bundle):
    import json

    from click.testing import CliRunner

    from llava_edge.cli import cli

    result = CliRunner().invoke(cli, ["bench-tiling", str(tiny_next_bundle), "--max-tiles",
                                      "1,none", "--repeats", "1", "--threads", "1",
                                      "--llm-quant", "F16", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)["rows"]
    by = {(r["image"], r["max_tiles"]): r for r in rows}
    for (image, limit), r in by.items():
        assert r["first_token_ms"] > 0 and r["vision_ms"] > 0
        if limit == 1:
            assert r["views"] == 1 and r["positions"] == 17  # 16 features + one newline
            assert by[(image, None)]["positions"] > r["positions"]
    bad = CliRunner().invoke(cli, ["bench-tiling", str(tiny_next_bundle), "--max-tiles", "0"])
    assert bad.exit_code == 2 and "at least 1" in bad.output

    # a subset of the images (a 7B model takes minutes per tiled request), no warm-up
    some = CliRunner().invoke(cli, ["bench-tiling", str(tiny_next_bundle), "--max-tiles",
                                    "none", "--images", "panorama,square", "--warmup", "0",
                                    "--repeats", "1", "--threads", "1", "--json"])
    assert some.exit_code == 0, some.output
    report = json.loads(some.output)
    assert [r["image"] for r in report["rows"]] == ["square 1:1", "panorama 3:1"]
    assert report["warmup"] == 0
    assert [by[(r["image"], None)]["positions"] for r in report["rows"]] == \
        [r["positions"] for r in report["rows"]]

def test_bench_tiling_names_an_unknown_image(tiny_next_bundle, capsys):
    from llava_edge.cli import run

    assert run(["bench-tiling", str(tiny_next_bundle), "--images", "square,round"]) == 1
    err = capsys.readouterr().err
    assert "unknown image(s) round; choose from: square, wide, tall, panorama, portrait" in err
