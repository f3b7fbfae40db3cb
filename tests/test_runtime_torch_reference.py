"""The PyTorch reference backends against the bundle's own (fp32 ONNX, F16 llama.cpp) and
against ``transformers.generate``, through the runtime's pipeline; and the CLI options."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from llava_edge.cli import run as cli_run
from llava_edge.errors import LlavaEdgeError
from llava_edge.runtimes.pipeline import LlavaEdge
from llava_edge.runtimes.prompt import split_at_images
from llava_edge.runtimes.torch_reference import (TorchLanguageBackend, TorchReferenceError,
                                                 load_reference)
from scene_images import scene

PROMPTS = ("Describe the image.", "What shape is in the image?", "How many shapes are there?")


@pytest.fixture(scope="module")
def bundle_model(tiny_bundle):
    """The bundle's most exact pair: fp32 ONNX + F16 llama.cpp."""
    with LlavaEdge.load(tiny_bundle, vision_precision="fp32", llm_quant="F16",
                        n_threads=1) as model:
        yield model


@pytest.fixture(scope="module")
def torch_model(tiny_bundle, tiny_checkpoint):
    """Both halves in PyTorch, with the bundle's preprocessing, template and sampling."""
    with load_reference(tiny_bundle, tiny_checkpoint, vision="torch", llm="torch",
                        n_threads=1) as model:
        yield model


def _prefill(model, ids, image_token_id, embeds) -> np.ndarray:
    """Evaluate ``ids`` with ``embeds`` at the image, straight on the model's backend."""
    model.clear_cache()  # the pipeline's reuse bookkeeping forgets what the backend held
    llm = model.llm
    for seg in split_at_images(ids, image_token_id):
        if seg.image_index is None:
            llm.eval_tokens(list(seg.tokens))
        else:
            llm.eval_embeddings(embeds)
    return llm.logits()


def test_vision_embeddings_equal_fp32_onnx(torch_model, bundle_model):
    pixels = bundle_model.pixel_values([scene(i) for i in range(4)])
    ref, got = torch_model.vision.encode(pixels), bundle_model.vision.encode(pixels)
    assert ref.shape == got.shape == (4, 16, 256)
    cosine = (ref * got).sum(-1) / (np.linalg.norm(ref, axis=-1) * np.linalg.norm(got, axis=-1))
    # measured: max abs 1.6e-7 on values up to 0.19, min cosine 0.9999999
    assert np.abs(ref - got).max() < 1e-5
    assert cosine.min() > 0.99999
    assert torch_model.vision_precision == "torch" and torch_model.llm_quant == "torch"


def test_language_logits_match_llama_cpp_f16(torch_model, bundle_model):
    embeds = bundle_model.embed(scene(1))  # the same injected rows for both backends
    for prompt in PROMPTS:
        ids = bundle_model.prompt_ids(prompt, 1)
        assert torch_model.prompt_ids(prompt, 1) == ids  # the HF tokenizer = the GGUF's
        ref = _prefill(torch_model, ids, bundle_model.image_token_id, embeds)
        got = _prefill(bundle_model, ids, bundle_model.image_token_id, embeds)
        assert ref.shape == got.shape == (1472,)
        assert ref.argmax() == got.argmax()
        # measured: max abs 7.3e-4 on logits up to 1.24 (the GGUF's weights are F16)
        assert np.abs(ref - got).max() < 1e-2
        assert torch_model.llm.n_past == bundle_model.llm.n_past == len(ids) - 1 + 16


def test_greedy_answers_equal_bundle_and_transformers_generate(torch_model, bundle_model,
                                                                tiny_checkpoint):
    from llava_edge.export.open_checkpoint import load_llava

    loaded = load_llava(tiny_checkpoint)
    n = 16
    for i, prompt in enumerate(PROMPTS):
        image = scene(10 + i)
        ours = torch_model.ask(image, prompt, max_new_tokens=n)
        theirs = bundle_model.ask(image, prompt, max_new_tokens=n)
        assert ours.tokens and ours.tokens == theirs.tokens and ours.text == theirs.text
        assert len(ours.tokens) == n or ours.stop_reason == "eos"

        # transformers' own generate, on its own processor's pixels and prompt ids
        assert ours.tokens == loaded.generate_greedy(image, prompt, n)


def test_reuse_truncate_and_reset_give_the_same_answer(torch_model):
    image, prompt = scene(20), "What shape is in the image?"
    first = torch_model.ask(image, prompt, max_new_tokens=12)
    again = torch_model.ask(image, prompt, max_new_tokens=12)
    assert again.tokens == first.tokens
    # everything but the last prompt position came from the cache (cropped to it)
    assert again.timings.reused_tokens == first.n_prompt_tokens - 1
    assert again.timings.images_encoded == 0

    other = torch_model.ask(image, "Describe the image.", max_new_tokens=12)
    assert 0 < other.timings.reused_tokens < other.n_prompt_tokens  # shared prefix only
    torch_model.reuse_prefix = False
    try:
        fresh = torch_model.ask(image, "Describe the image.", max_new_tokens=12)
    finally:
        torch_model.reuse_prefix = True
    assert fresh.timings.reused_tokens == 0 and fresh.tokens == other.tokens


def test_truncate_then_reevaluate_gives_the_same_logits(torch_model):
    torch_model.clear_cache()
    llm = torch_model.llm
    ids = llm.tokenize("USER: hello there, what is this? ASSISTANT:")
    llm.reset()
    llm.eval_tokens(ids)
    whole = llm.logits()
    assert llm.truncate(5) and llm.n_past == 5
    with pytest.raises(TorchReferenceError, match="no logits"):
        llm.logits()
    llm.eval_tokens(ids[5:])
    assert llm.n_past == len(ids)
    np.testing.assert_allclose(llm.logits(), whole, atol=1e-5)
    llm.reset()
    assert llm.n_past == 0
    with pytest.raises(TorchReferenceError, match="no logits"):
        llm.logits()


def test_tokenizer_semantics_match_llama_cpp(torch_model, bundle_model):
    ref, gguf = torch_model.llm, bundle_model.llm
    texts = ("hello <image> x", "<s>USER: <image>\nWhat? ASSISTANT:", " leading space",
             "é naïve café 123", "a</s>b", "", "\n\nnew\tlines")
    for text in texts:
        for add_bos in (None, True, False):
            for special in (True, False):
                assert ref.tokenize(text, add_bos, special) == \
                    gguf.tokenize(text, add_bos, special), (text, add_bos, special)
        ids = gguf.tokenize(text)
        for special in (True, False):
            assert ref.detokenize(ids, special) == gguf.detokenize(ids, special)
    assert ref.tokenize("<image>")[-1] == torch_model.image_token_id
    assert torch_model.image_token_id not in ref.tokenize("<image>", special=False)
    assert [t for t in range(ref.n_vocab) if ref.is_eog(t)] == \
        [t for t in range(gguf.n_vocab) if gguf.is_eog(t)] == [ref.eos_token]


def test_backend_errors_are_typed(torch_model):
    torch_model.clear_cache()
    llm = torch_model.llm
    with pytest.raises(TorchReferenceError, match="out of range"):
        llm.eval_tokens([llm.n_vocab])
    with pytest.raises(TorchReferenceError, match=r"shape \[n, 256\]"):
        llm.eval_embeddings(np.zeros((2, 3), np.float32))
    with pytest.raises(TorchReferenceError, match="context is full"):
        llm.reset()
        llm.eval_embeddings(np.zeros((llm.n_ctx + 1, 256), np.float32))
    assert issubclass(TorchReferenceError, LlavaEdgeError)


def test_mixed_pairs_and_a_checkpoint_that_does_not_fit(tiny_bundle, tiny_checkpoint,
                                                        bundle_model, tmp_path):
    image, prompt = scene(30), "Describe the image."
    expected = bundle_model.ask(image, prompt, max_new_tokens=10).tokens
    for vision, llm in (("torch", "llama.cpp"), ("onnx", "torch")):
        with load_reference(tiny_bundle, tiny_checkpoint, vision=vision, llm=llm,
                            n_threads=1, vision_precision="fp32", llm_quant="F16") as model:
            assert model.ask(image, prompt, max_new_tokens=10).tokens == expected
            assert "torch" in (model.vision_precision, model.llm_quant)
    with pytest.raises(TorchReferenceError, match="is not one of"):
        load_reference(tiny_bundle, tiny_checkpoint, vision="trt")
    with pytest.raises(LlavaEdgeError, match="no TensorRT engine can run here"):
        load_reference(tiny_bundle, tiny_checkpoint, vision="tensorrt", llm="torch")
    # the same weights with another image token: the bundle's prompt ids would not fit
    import shutil

    other = shutil.copytree(tiny_checkpoint, tmp_path / "other")
    config = json.loads((other / "config.json").read_text())
    config["image_token_index"] = 5
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(TorchReferenceError, match="does not fit the bundle"):
        load_reference(tiny_bundle, other, llm="torch", n_threads=1)


def test_constructing_without_torch_raises_missing_extra(tiny_checkpoint):
    code = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None  # as if torch were not installed
        from llava_edge.errors import MissingExtraError
        from llava_edge.runtimes.torch_reference import TorchLanguageBackend, TorchVisionBackend
        for cls in (TorchVisionBackend, TorchLanguageBackend):
            try:
                cls({str(tiny_checkpoint)!r})
            except MissingExtraError as e:
                print(e)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 2
    assert all("needs the [export] extra (torch is not installed)" in line for line in lines)


def test_cli_run_and_embed_with_torch_backends(tiny_bundle, tiny_checkpoint, bundle_model,
                                               tmp_path, capsys):
    image = tmp_path / "img.png"
    scene(40).save(image)
    base = ["run", str(tiny_bundle), "--image", str(image), "--prompt", "Describe the image.",
            "--max-new-tokens", "8", "--threads", "1"]

    assert cli_run(base + ["--llm-backend", "torch"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == ("Error: --llm-backend torch needs --reference-checkpoint DIR "
                   "(the PyTorch checkpoint)")

    assert cli_run(base + ["--llm-backend", "torch", "--vision-backend", "torch",
                           "--reference-checkpoint", str(tiny_checkpoint), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    expected = bundle_model.ask(str(image), "Describe the image.", max_new_tokens=8)
    assert result["text"] == expected.text and result["n_tokens"] == expected.n_tokens
    assert result["vision_precision"] == result["llm_quant"] == "torch"

    assert cli_run(["embed", str(tiny_bundle), "--image", str(image), "--out",
                    str(tmp_path / "e.npy"), "--vision-backend", "torch"]) == 1
    assert "--vision-backend torch needs --reference-checkpoint" in capsys.readouterr().err
    assert cli_run(["embed", str(tiny_bundle), "--image", str(image), "--out",
                    str(tmp_path / "e.npy"), "--vision-backend", "torch", "--threads", "1",
                    "--reference-checkpoint", str(tiny_checkpoint)]) == 0
    capsys.readouterr()
    np.testing.assert_allclose(np.load(tmp_path / "e.npy"), bundle_model.embed(str(image)),
                               atol=1e-5)


def test_language_backend_alone_tokenizes_like_the_processor(tiny_checkpoint):
    from transformers import AutoProcessor

    llm = TorchLanguageBackend(tiny_checkpoint, n_ctx=64)
    processor = AutoProcessor.from_pretrained(tiny_checkpoint)
    text = "USER: a <image> b ASSISTANT:"
    hf = processor.tokenizer(text)["input_ids"]
    assert llm.tokenize(text) == hf and llm.n_ctx == 64 and llm.add_bos
    assert llm.detokenize(hf) == processor.tokenizer.decode(hf, skip_special_tokens=True)


def test_qwen2_tokenizer_and_end_of_turn_match_llama_cpp(tiny_qwen2_checkpoint, tiny_qwen2_gguf):
    from llava_edge.runtimes.llama_cpp_lm import LlamaCppLM

    ref = TorchLanguageBackend(tiny_qwen2_checkpoint, n_ctx=256)
    with LlamaCppLM(tiny_qwen2_gguf.llm_file("F16"), n_ctx=256, n_threads=1) as gguf:
        for text in ("<|im_start|>user\n<image>\nWhat?<|im_end|>\n<|im_start|>assistant\n",
                     "a<|im_end|>b", "é naïve café 123"):
            for add_bos in (None, True, False):
                for special in (True, False):
                    assert ref.tokenize(text, add_bos, special) == \
                        gguf.tokenize(text, add_bos, special), (text, add_bos, special)
            ids = gguf.tokenize(text)
            assert ref.detokenize(ids) == gguf.detokenize(ids)
        eog = [t for t in range(ref.n_vocab) if ref.is_eog(t)]
        assert eog == [t for t in range(gguf.n_vocab) if gguf.is_eog(t)]
    im_end = ref.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert im_end in eog and not ref.add_bos
