"""Does the exported GGUF tokenize like the checkpoint's Hugging Face tokenizer?

Measured three ways on the fixed corpus of :mod:`parity_corpus` (first words, leading and
repeated spaces, newlines, tabs, digits, accents, CJK, emoji, special tokens inside text)
plus the chat template rendered on its conversations:

* the Hugging Face tokenizer (the reference);
* llava-edge's runtime: llama.cpp with the rules the exporter recorded
  (:class:`~llava_edge.runtimes.llama_cpp_vocab.LlamaCppTokenizer`, ``hf_rules=True``);
* stock llama.cpp: the file's standard keys alone, as llama.cpp's tools and Ollama read it.

The export fails (:func:`check_tokenizer_parity`) when the runtime differs on any string,
or stock llama.cpp on a string that starts with a word (:func:`starts_with_word`). Stock
llama.cpp cannot match everywhere: with ``add_space_prefix`` it prefixes text after every
special token, which Hugging Face's ``legacy=False`` tokenizers do not, it adds a second
"▁" before text that starts with a space where Metaspace does not, and it applies no
Unicode normalizer; those differences are counted, not failed.
"""

from __future__ import annotations

import unicodedata
from pathlib import Path

from llava_edge.errors import LlavaEdgeError
from llava_edge.export.parity_corpus import corpus_conversations, corpus_strings
from llava_edge.runtimes.llama_cpp_vocab import LlamaCppTokenizer

_MAX_EXAMPLES = 5


class TokenizerParityError(LlavaEdgeError):
    """The GGUF's tokenizer does not reproduce the checkpoint's."""


def starts_with_word(text: str, special_texts: tuple[str, ...],
                     normalizer: str | None = None) -> bool:
    """Plain text whose first character is a letter or digit, with no special token in
    it and already in the tokenizer's Unicode normal form (llama.cpp normalizes
    nothing): the strings stock llama.cpp must tokenize exactly like Hugging Face."""
    return (text[:1].isalnum() and not any(s in text for s in special_texts)
            and (normalizer is None or unicodedata.normalize(normalizer, text) == text))


def parity_strings(tokenizer) -> list[str]:
    """The corpus for ``tokenizer``: fixed strings around its added tokens, plus its chat
    template's renderings when it has one."""
    specials = sorted({t.content for t in tokenizer.added_tokens_decoder.values()})
    strings = corpus_strings(specials)
    if tokenizer.chat_template:
        for i, messages in enumerate(corpus_conversations()):
            strings.append(tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=i % 2 == 0))
    return strings


def tokenizer_parity(tokenizer, gguf_path: str | Path) -> dict:
    """Tokenize the corpus with the Hugging Face ``tokenizer``, llava-edge's runtime and
    stock llama.cpp; count the strings each differs on (JSON figures for the manifest)."""
    strings = parity_strings(tokenizer)
    specials = tuple(sorted({t.content for t in tokenizer.added_tokens_decoder.values()
                             if t.special}))
    runtime_diff, stock_diff, stock_word_diff = [], [], []
    same_text = n_word = 0
    with LlamaCppTokenizer(gguf_path) as runtime, \
            LlamaCppTokenizer(gguf_path, hf_rules=False) as stock:
        for text in strings:
            expected = tokenizer(text).input_ids
            word = starts_with_word(text, specials, runtime.vocab.rules.normalizer)
            n_word += word
            got = runtime.tokenize(text)
            if got != expected:
                runtime_diff.append({"text": text, "hf": expected, "llava_edge": got})
            got_stock = stock.tokenize(text)
            if got_stock != expected:
                example = {"text": text, "hf": expected, "llama_cpp": got_stock}
                stock_diff.append(example)
                if word:
                    stock_word_diff.append(example)
            if runtime.detokenize(expected, special=True) == tokenizer.decode(expected):
                same_text += 1
    n = len(strings)
    return {
        "n_strings": n,
        "n_starting_with_word": n_word,
        "runtime_mismatches": len(runtime_diff),
        "stock_llama_cpp_mismatches": len(stock_diff),
        "stock_llama_cpp_word_start_mismatches": len(stock_word_diff),
        "identical": n - len(runtime_diff),
        "agreement": (n - len(runtime_diff)) / n,
        "detokenize_identical": same_text,
        "mismatch_examples": runtime_diff[:_MAX_EXAMPLES],
        "stock_llama_cpp_examples": (stock_word_diff or stock_diff)[:_MAX_EXAMPLES],
    }


def check_tokenizer_parity(figures: dict, gguf_path: str | Path) -> None:
    """Raise :class:`TokenizerParityError` when llava-edge's runtime differs from the
    checkpoint's tokenizer on any corpus string, or stock llama.cpp on one that starts
    with a word."""
    name = Path(gguf_path).name
    if figures["runtime_mismatches"]:
        ex = figures["mismatch_examples"][0]
        raise TokenizerParityError(
            f"{name}: llava-edge's tokenization differs from the checkpoint's tokenizer on "
            f"{figures['runtime_mismatches']} of {figures['n_strings']} test strings, e.g. "
            f"{ex['text'][:60]!r}: {ex['hf'][:12]} expected, {ex['llava_edge'][:12]} got")
    if figures["stock_llama_cpp_word_start_mismatches"]:
        ex = figures["stock_llama_cpp_examples"][0]
        raise TokenizerParityError(
            f"{name}: stock llama.cpp would tokenize {figures['stock_llama_cpp_word_start_mismatches']} "
            f"of {figures['n_starting_with_word']} texts that start with a word differently "
            f"from the checkpoint's tokenizer, e.g. {ex['text'][:60]!r}: {ex['hf'][:12]} "
            f"expected, {ex['llama_cpp'][:12]} got")
