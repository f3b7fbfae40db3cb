"""The torch-free llama.cpp backend: tokens, injected embeddings, KV cache, errors, logs,
and the GGUF header check that runs before llama.cpp sees a file."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from llava_edge.runtimes.gguf_check import GGML_TYPES, GGUFFormatError, check_gguf
from llava_edge.runtimes.llama_cpp_lm import LlamaCppError, LlamaCppLM


@pytest.fixture(scope="module")
def lm(tiny_gguf):
    with LlamaCppLM(tiny_gguf.llm_file("F16"), n_ctx=128, n_batch=512) as model:
        yield model


def test_runtime_modules_do_not_import_torch():
    code = ("import sys, llava_edge.runtimes.llama_cpp_lm, llava_edge.runtimes.gguf_check; "
            "bad = [m for m in ('torch', 'transformers', 'gguf') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_model_facts_and_tokens(lm, tiny_checkpoint):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(tiny_checkpoint)
    assert (lm.n_embd, lm.n_vocab) == (256, 1472)
    assert lm.add_bos and lm.bos_token == hf.bos_token_id and lm.eos_token == hf.eos_token_id
    assert lm.is_eog(hf.eos_token_id) and not lm.is_eog(hf.bos_token_id)
    text = "USER: <image>\nWhat is it? ASSISTANT:"
    ids = lm.tokenize(text)
    assert ids == hf(text).input_ids
    assert ids.count(hf.convert_tokens_to_ids("<image>")) == 1
    assert lm.tokenize(text, add_bos=False) == ids[1:]
    assert "<image>" not in lm.tokenize(text, special=False)
    assert lm.detokenize(ids[1:], special=True) == text
    assert lm.detokenize(ids) == hf.decode(ids, skip_special_tokens=True)
    assert lm.tokenize("") == [hf.bos_token_id] and lm.detokenize([]) == ""


def test_eval_tokens_matches_pytorch(lm, tiny_checkpoint):
    import torch

    from llava_edge.export.open_checkpoint import load_llava

    loaded = load_llava(tiny_checkpoint)
    ids = lm.tokenize("A chat between a curious user and an artificial intelligence assistant.")
    with torch.no_grad():
        expected = loaded.model(input_ids=torch.tensor([ids])).logits[0, -1].numpy()
    lm.reset()
    lm.eval_tokens(ids)
    got = lm.logits()
    assert lm.n_past == len(ids)
    assert got.shape == (lm.n_vocab,) and got.dtype == np.float32
    assert got.argmax() == expected.argmax()
    assert np.abs(got - expected).max() < 5e-3  # F16 weights vs float32 PyTorch

    # the same inputs as embeddings (rows of the embedding table) give the same logits
    table = loaded.model.get_input_embeddings().weight.detach().numpy()
    lm.reset()
    lm.eval_embeddings(table[ids])
    assert np.abs(lm.logits() - got).max() < 5e-3


def test_embeddings_are_chunked_by_n_batch_and_positions_continue(tiny_gguf):
    rng = np.random.default_rng(0)
    image = rng.normal(0, 0.02, size=(16, 256)).astype(np.float32)
    results = []
    for n_batch in (512, 5):  # 16 image rows in one batch, or in chunks of 5, 5, 5, 1
        with LlamaCppLM(tiny_gguf.llm_file("F16"), n_ctx=64, n_batch=n_batch) as model:
            before = model.tokenize("USER: ")
            model.eval_tokens(before)
            model.eval_embeddings(image)
            assert model.n_past == len(before) + 16
            model.eval_tokens(model.tokenize("\nWhat is it?", add_bos=False))
            results.append(model.logits())
    assert np.abs(results[0] - results[1]).max() < 1e-3


def test_all_logits_are_every_positions_in_batches_of_n_batch(tiny_gguf):
    with LlamaCppLM(tiny_gguf.llm_file("F16"), n_ctx=64, n_batch=4) as model:
        ids = model.tokenize("the red circle is left of the blue square")
        rows = model.eval_tokens(ids, all_logits=True)  # chunks of 4, 4, ..., the rest
        assert rows.shape == (len(ids), model.n_vocab) and model.n_past == len(ids)
        np.testing.assert_array_equal(rows[-1], model.logits())
        assert model.eval_tokens([], all_logits=True).shape == (0, model.n_vocab)
        model.reset()
        one_at_a_time = []
        for token in ids:
            model.eval_tokens([token])
            one_at_a_time.append(model.logits())
    # the same positions, computed in another order: close, not necessarily equal
    assert np.abs(rows - np.stack(one_at_a_time)).max() < 1e-2


def test_reset_clears_the_cache(lm):
    ids = lm.tokenize("the red circle")
    lm.reset()
    lm.eval_tokens(ids)
    first = lm.logits()
    lm.eval_tokens(ids)  # a longer sequence now: different logits
    assert not np.allclose(lm.logits(), first)
    lm.reset()
    assert lm.n_past == 0
    lm.eval_tokens(ids)
    np.testing.assert_allclose(lm.logits(), first, atol=1e-5)


def test_bad_inputs_are_refused_with_a_reason(tiny_gguf):
    with LlamaCppLM(tiny_gguf.llm_file("F16"), n_ctx=32) as model:
        with pytest.raises(LlamaCppError, match="no logits yet"):
            model.logits()
        with pytest.raises(LlamaCppError, match=r"shape \[n, 256\], got \[4, 128\]"):
            model.eval_embeddings(np.zeros((4, 128), np.float32))
        with pytest.raises(LlamaCppError, match="NaN"):
            model.eval_embeddings(np.full((2, 256), np.nan, np.float32))
        with pytest.raises(LlamaCppError, match="token id 5000 is out of range"):
            model.eval_tokens([1, 5000])
        too_many = model.n_ctx + 1  # llama.cpp may round n_ctx up (to 256 here)
        with pytest.raises(LlamaCppError, match=f"context is full: 0 positions used "
                                                f"\\+ {too_many} new > n_ctx={model.n_ctx}"):
            model.eval_embeddings(np.zeros((too_many, 256), np.float32))
        assert model.n_past == 0
        model.eval_embeddings(np.zeros((40, 256), np.float32))  # > the requested 32: fine
        assert model.n_past == 40
    with pytest.raises(LlamaCppError, match="closed"):
        model.tokenize("x")
    with pytest.raises(LlamaCppError, match="must be positive"):
        LlamaCppLM(tiny_gguf.llm_file("F16"), n_ctx=0)


def test_llama_cpp_logs_only_when_verbose(tiny_gguf, capfd):
    with LlamaCppLM(tiny_gguf.llm_file("Q4_K_M"), n_ctx=32) as model:
        model.eval_tokens(model.tokenize("hello"))
    assert capfd.readouterr().err == ""
    with LlamaCppLM(tiny_gguf.llm_file("Q4_K_M"), n_ctx=32, verbose=True):
        pass
    assert "llama" in capfd.readouterr().err
    with LlamaCppLM(tiny_gguf.llm_file("Q4_K_M"), n_ctx=32):  # quiet again
        pass
    assert capfd.readouterr().err == ""


# -- the GGUF check ---------------------------------------------------------------------


def test_check_accepts_exported_files(tiny_gguf):
    info = check_gguf(tiny_gguf.llm_file("Q4_K_M"), architectures=("llama",))
    assert info.version == 3 and info.architecture == "llama"
    assert info.required_size <= info.file_size
    assert {t.type_name for t in info.tensors} >= {"Q4_K", "F32"}
    assert info.metadata["tokenizer.ggml.tokens"].count == 1472  # long arrays summarised
    with pytest.raises(GGUFFormatError, match="architecture 'llama' is not one of clip"):
        check_gguf(tiny_gguf.llm_file("F16"), architectures=("clip",))


def _corrupt(src, dst, edit):
    data = bytearray(src.read_bytes())
    dst.write_bytes(bytes(edit(data)))
    return dst


@pytest.mark.parametrize("edit, message", [
    (lambda d: d[:-1000],
     r"truncated GGUF file: \d+ bytes, but its tensors need \d+ \(tensor 'blk"),
    (lambda d: d[:200], "truncated GGUF file: it ends at byte 200 while reading"),
    (lambda d: b"GGML" + d[4:], r"not a GGUF file \(starts with b'GGML'"),
    (lambda d: d[:4] + (7).to_bytes(4, "little") + d[8:], "GGUF version 7 is not supported"),
    (lambda d: d[:8] + (2**40).to_bytes(8, "little") + d[16:], "corrupt GGUF header"),
    (lambda d: d[:10], "not a GGUF file \\(10 bytes"),
])
def test_corrupt_gguf_is_refused_before_llama_cpp(tiny_gguf, tmp_path, edit, message):
    bad = _corrupt(tiny_gguf.llm_file("Q8_0"), tmp_path / "bad.gguf", edit)
    with pytest.raises(GGUFFormatError, match=message):
        check_gguf(bad)
    with pytest.raises(GGUFFormatError, match=str(bad)):
        LlamaCppLM(bad)


def test_missing_file(tmp_path):
    with pytest.raises(GGUFFormatError, match="GGUF file not found"):
        LlamaCppLM(tmp_path / "nope.gguf")


def test_ggml_type_table_matches_the_gguf_package():
    import gguf

    for type_id, (name, block, size) in GGML_TYPES.items():
        quant = gguf.GGMLQuantizationType(type_id)
        assert quant.name == name
        assert gguf.GGML_QUANT_SIZES[quant] == (block, size), name


@pytest.mark.parametrize("quant", ["Q8_0", "Q4_K_M"])
def test_reading_or_mapping_the_file_gives_the_same_logits(tiny_gguf, quant):
    """A repacked model reads the GGUF by default (the mapping would hold the weights a
    second time); mapping it instead changes nothing in what it computes."""
    logits = []
    for mmap in (None, True):
        with LlamaCppLM(tiny_gguf.llm_file(quant), n_ctx=64, mmap=mmap) as model:
            assert model.mmap is (mmap is True)
            model.eval_tokens(model.tokenize("USER: the red circle is at the top"))
            logits.append(model.logits())
    np.testing.assert_array_equal(logits[0], logits[1])
    with LlamaCppLM(tiny_gguf.llm_file(quant), n_ctx=64, repack=False) as model:
        assert model.mmap is True  # nothing is copied: mapping costs no second copy


@pytest.mark.parametrize("quant", ["Q8_0", "Q4_K_M"])
def test_weight_repacking_off_gives_the_same_answer(tiny_gguf, quant):
    """``repack=False`` keeps llama.cpp's weights as stored (less memory, a different
    kernel): the next-token logits stay those of the repacked model, up to rounding."""
    logits = []
    for repack in (True, False):
        with LlamaCppLM(tiny_gguf.llm_file(quant), n_ctx=64, repack=repack) as model:
            model.eval_tokens(model.tokenize("USER: the red circle is at the top"))
            logits.append(model.logits())
    assert np.argmax(logits[0]) == np.argmax(logits[1])
    assert np.abs(logits[0] - logits[1]).max() < 0.05 * np.abs(logits[0]).max()


def test_set_fields_refuses_a_name_the_struct_does_not_have():
    import llama_cpp

    from llava_edge.runtimes.llama_cpp_lm import set_fields

    params = llama_cpp.llama_model_default_params()
    set_fields(params, n_gpu_layers=3)
    assert params.n_gpu_layers == 3
    # ctypes would take this silently (llama.cpp replaced use_mmap with load_mode).
    with pytest.raises(AttributeError, match="no field 'use_mmap'"):
        set_fields(params, use_mmap=False)
