"""GGUF tokenizer metadata for every tokenizer layout seen in the wild: llava-edge's
runtime tokenizes exactly like the checkpoint's Hugging Face tokenizer, and stock
llama.cpp (its own tools, Ollama, llama-cpp-python's ``Llama``) like it on every text
that starts with a word. The tokenizers are trained in the tests (tokenizer_layouts)."""

from __future__ import annotations

import pytest

from llava_edge.export.open_checkpoint import UnsupportedModelError
from llava_edge.export.tokenizer_parity import (TokenizerParityError, check_tokenizer_parity,
                                                starts_with_word, tokenizer_parity)
from llava_edge.runtimes.llama_cpp_vocab import LlamaCppTokenizer

import tokenizer_layouts as layouts

# layout -> (tokenizer.ggml.add_space_prefix, llava_edge.tokenizer.space_prefix)
EXPECTED = {
    "metaspace-first": (True, "first"),
    "metaspace-always": (True, "always"),
    "metaspace-never": (False, None),
    "prepend-normalizer": (True, None),
    "bare-sentencepiece": (True, "first"),
    "byte-level-bpe": (None, None),
}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("tokenizers")


def _tokenizer(directory):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(directory)


@pytest.mark.parametrize("layout", list(EXPECTED))
def test_runtime_exact_and_stock_right_on_words(root, layout):
    directory = layouts.LAYOUTS[layout](root)
    gguf = root / f"{layout}.gguf"
    arch = "qwen2" if layout.startswith("byte") else "llama"
    vocab = layouts.vocab_gguf(directory, gguf, arch)
    assert (vocab.add_space_prefix, vocab.hf_space_prefix) == EXPECTED[layout]

    figures = tokenizer_parity(_tokenizer(directory), gguf)
    assert figures["n_strings"] >= 500 and figures["n_starting_with_word"] >= 350
    assert figures["runtime_mismatches"] == 0, figures["mismatch_examples"]
    assert figures["stock_llama_cpp_word_start_mismatches"] == 0, \
        figures["stock_llama_cpp_examples"]
    assert figures["detokenize_identical"] == figures["n_strings"]
    check_tokenizer_parity(figures, gguf)  # the export's gate passes


def test_first_word_in_stock_llama_cpp(root):
    """The issue's case: a transformers 5 Llama/Mistral tokenizer (Metaspace "first").
    llama-cpp-python's own ``Llama`` class (stock llama.cpp) now gets `▁Hello`."""
    import llama_cpp

    directory = layouts.metaspace_first(root)
    gguf = root / "first-stock.gguf"
    layouts.vocab_gguf(directory, gguf)
    hf = _tokenizer(directory)
    stock = llama_cpp.Llama(str(gguf), vocab_only=True, verbose=False)
    try:
        for text in ("Hello world", "What is in the picture?", "Describe it.\nThen stop."):
            assert stock.tokenize(text.encode(), add_bos=True, special=True) == \
                hf(text).input_ids, text
    finally:
        stock.close()


def test_old_metadata_fails_the_gate_but_still_runs_exactly(root, monkeypatch):
    """Bundles exported before: add_space_prefix false + "first". llava-edge's runtime
    still tokenizes them exactly; stock llama.cpp loses the first word's space, which
    the export's gate now refuses, naming the file and an example."""
    from llava_edge.export.gguf_vocab import read_vocab

    directory = layouts.metaspace_first(root)

    def old_read_vocab(path, n):
        vocab = read_vocab(path, n)
        vocab.add_space_prefix = False
        return vocab

    monkeypatch.setattr(layouts, "_read_vocab_override", old_read_vocab)
    gguf = root / "old-metadata.gguf"
    layouts.vocab_gguf(directory, gguf)
    figures = tokenizer_parity(_tokenizer(directory), gguf)
    assert figures["runtime_mismatches"] == 0
    assert figures["stock_llama_cpp_word_start_mismatches"] > 300
    with pytest.raises(TokenizerParityError, match="old-metadata.gguf: stock llama.cpp"):
        check_tokenizer_parity(figures, gguf)


def test_runtime_mismatch_fails_the_gate(root, monkeypatch):
    """A GGUF written without llava-edge's key for a "first" tokenizer: the runtime is
    stock llama.cpp then, and differs after special tokens."""
    from llava_edge.export.gguf_vocab import read_vocab

    directory = layouts.metaspace_first(root)

    def no_key(path, n):
        vocab = read_vocab(path, n)
        vocab.hf_space_prefix = None
        return vocab

    monkeypatch.setattr(layouts, "_read_vocab_override", no_key)
    gguf = root / "no-key.gguf"
    layouts.vocab_gguf(directory, gguf)
    figures = tokenizer_parity(_tokenizer(directory), gguf)
    assert figures["runtime_mismatches"] > 0
    assert all("<" in e["text"] or e["text"][:1].isspace()
               for e in figures["mismatch_examples"])
    with pytest.raises(TokenizerParityError, match="no-key.gguf: llava-edge's tokenization"):
        check_tokenizer_parity(figures, gguf)


@pytest.mark.parametrize("layout, message", [
    ("metaspace-old-format", "split=true"),
    ("byte-level-bpe-prefix", "add_prefix_space=true"),
])
def test_layouts_llama_cpp_cannot_express_are_refused(root, layout, message):
    directory = layouts.LAYOUTS[layout](root)
    with pytest.raises(UnsupportedModelError, match=message) as info:
        layouts.vocab_gguf(directory, root / f"{layout}.gguf")
    assert str(directory) in str(info.value)
    assert not (root / f"{layout}.gguf").exists()


def test_what_counts_as_starting_with_a_word():
    specials = ("<image>", "</s>")
    assert starts_with_word("Hello world", specials)
    assert starts_with_word("42 apples", specials)
    assert not starts_with_word(" Hello", specials)
    assert not starts_with_word("\nHello", specials)
    assert not starts_with_word("Hello <image> world", specials)
    assert not starts_with_word("e\u0301te\u0301", specials, "NFC")  # NFC changes it
    assert starts_with_word("\u00e9t\u00e9", specials, "NFC")


def test_vocab_only_tokenizer_closes(root):
    directory = layouts.metaspace_first(root)
    gguf = root / "close.gguf"
    layouts.vocab_gguf(directory, gguf)
    tok = LlamaCppTokenizer(gguf)
    assert tok.tokenize("Hello") == _tokenizer(directory)("Hello").input_ids
    tok.close()
    tok.close()
    with pytest.raises(Exception, match="closed"):
        tok.tokenize("Hello")
