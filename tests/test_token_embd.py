"""A prompt's text and image in one batch of embeddings (``LlamaCppLM.eval_prompt``): the
token rows read from the GGUF through ggml's own dequantizer must be the bits llama.cpp's
token path feeds the first layer, so evaluating them as embeddings gives the token path's
logits exactly, for every quant type the exports write, on both architectures."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from llava_edge.runtimes.gguf_check import GGML_TYPES, read_gguf_info
from llava_edge.runtimes.llama_cpp_lm import LlamaCppLM
from llava_edge.runtimes.token_embd import TENSOR, open_token_embeddings

QUANTS = ("F16", "Q8_0", "Q4_K_M")
TEXT = "A chat between a curious human and an artificial intelligence assistant. USER:"


@pytest.fixture(params=["tiny", "tiny-qwen2"])
def gguf(request, tiny_gguf, tiny_qwen2_gguf):
    return {"tiny": tiny_gguf, "tiny-qwen2": tiny_qwen2_gguf}[request.param]


@pytest.mark.parametrize("quant", QUANTS)
def test_token_rows_as_embeddings_give_the_token_paths_logits_bit_for_bit(gguf, quant):
    path = gguf.llm_file(quant)
    info = read_gguf_info(path)
    table = open_token_embeddings(path, info)
    assert table is not None, (info.architecture, quant)
    kind = GGML_TYPES[next(t for t in info.tensors if t.name == TENSOR).ggml_type][0]
    with LlamaCppLM(path, n_ctx=256, n_threads=1) as lm:
        ids = lm.tokenize(TEXT)
        rows = table.rows(ids)
        assert rows.shape == (len(ids), lm.n_embd) and rows.dtype == np.float32
        # The token path asked for the last position's logits only, as eval_embeddings
        # does: the same graph but for its input. Asking for every position's logits
        # keeps all rows through the last layer and the output matmul, and kernels that
        # sum in another order for 17 rows than for one (an AVX-512 EPYC: F16 and Q4_K_M
        # ~1.5e-7 apart; Q8_0 and a Xeon equal) would make this compare two computations.
        lm.eval_tokens(ids)
        by_token = lm.logits().copy()
        lm.reset()
        lm.eval_embeddings(rows)
        assert np.array_equal(lm.logits(), by_token), (quant, kind)
    table.close()


@pytest.mark.parametrize("quant", QUANTS)
def test_a_mixed_prompt_is_one_batch_that_equals_the_token_path(gguf, quant, monkeypatch):
    # Text, then "embeddings" that are the next text's own token rows, then text: one
    # batch, whose logits must be those of the whole text evaluated as tokens.
    path = gguf.llm_file(quant)
    table = open_token_embeddings(path, read_gguf_info(path))
    with LlamaCppLM(path, n_ctx=256, n_threads=1) as lm:
        ids = lm.tokenize(TEXT)
        a, b, c = ids[:5], ids[5:14], ids[14:]
        lm.eval_tokens(ids)
        by_token = lm.logits().copy()
        lm.reset()
        calls = []
        decode = LlamaCppLM._decode
        monkeypatch.setattr(LlamaCppLM, "_decode",
                            lambda self, batch, n: calls.append(n) or decode(self, batch, n))
        lm.eval_prompt([a, table.rows(b), c])
        assert calls == [len(ids)] and lm.n_past == len(ids)
        assert np.array_equal(lm.logits(), by_token)
        # where the rows cannot be had, part by part: the same positions, three batches
        lm.reset()
        calls.clear()
        monkeypatch.setattr(lm, "_token_table", None)
        lm.eval_prompt([a, table.rows(b), c])
        assert calls == [len(a), len(b), len(c)] and lm.n_past == len(ids)
    table.close()


def test_text_alone_or_an_image_alone_stays_as_it_was(tiny_gguf, monkeypatch):
    with LlamaCppLM(tiny_gguf.llm_file("F16"), n_ctx=256, n_threads=1) as lm:
        calls = []
        decode = LlamaCppLM._decode
        monkeypatch.setattr(LlamaCppLM, "_decode",
                            lambda self, batch, n: calls.append(
                                (n, bool(batch.embd))) or decode(self, batch, n))
        lm.eval_prompt([[1, 2, 3], [], [4, 5]])  # text: token batches, as eval_tokens
        lm.eval_prompt([np.zeros((4, lm.n_embd), np.float32)])
        assert calls == [(3, False), (2, False), (4, True)] and lm.n_past == 9


def test_bad_token_ids_in_a_mixed_prompt_are_refused_before_any_decode(tiny_gguf):
    from llava_edge.runtimes.llama_cpp_vocab import LlamaCppError

    with LlamaCppLM(tiny_gguf.llm_file("F16"), n_ctx=256, n_threads=1) as lm:
        with pytest.raises(LlamaCppError, match="token"):
            lm.eval_prompt([[1, lm.n_vocab + 5], np.zeros((2, lm.n_embd), np.float32)])
        assert lm.n_past == 0


def test_other_architectures_and_missing_tables_are_not_guessed(tiny_gguf):
    path = tiny_gguf.llm_file("F16")
    info = read_gguf_info(path)
    gemma = replace(info, metadata={**info.metadata, "general.architecture": "gemma"})
    assert open_token_embeddings(path, gemma) is None  # scales its inputs itself
    untied = replace(info, tensors=tuple(t for t in info.tensors if t.name != TENSOR))
    assert open_token_embeddings(path, untied) is None


def test_the_pipeline_prefills_an_image_prompt_in_one_batch(tiny_bundle, monkeypatch):
    from PIL import Image

    from llava_edge.runtimes.pipeline import LlavaEdge

    image = Image.fromarray(np.full((64, 64, 3), 128, np.uint8))
    calls = []
    decode = LlamaCppLM._decode
    monkeypatch.setattr(LlamaCppLM, "_decode",
                        lambda self, batch, n: calls.append(n) or decode(self, batch, n))
    with LlavaEdge.load(tiny_bundle, vision_precision="fp32", llm_quant="F16", tune=False,
                        reuse_prefix=False) as model:
        answer = model.ask(image, "What is it?", max_new_tokens=3)
        n_prompt = answer.timings.prefill_tokens
        assert calls[0] == n_prompt and n_prompt > model.n_image_tokens
        assert calls[1:] == [1] * (len(calls) - 1)  # then one token at a time
