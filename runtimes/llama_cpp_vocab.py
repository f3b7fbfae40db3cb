"""Tokenizing with a GGUF's vocabulary in llama.cpp, the way Hugging Face does.

Two ways to tokenize the same GGUF file:

* **as llava-edge does** (``hf_rules=True``, the default): with the Hugging Face rules
  the exporter recorded in llava-edge's own metadata keys (:mod:`gguf_keys`) applied
  around llama.cpp's tokenizer, which makes it equal to the checkpoint's tokenizer;
* **as stock llama.cpp does** (``hf_rules=False``): the file's standard keys only, which
  is what llama.cpp's own tools, Ollama and llama-cpp-python's ``Llama`` see.

The rule that matters is where SentencePiece puts its "▁" (space) prefix. The standard
key ``tokenizer.ggml.add_space_prefix`` makes llama.cpp prefix the text at its start
*and after every special token*. Hugging Face's current Llama tokenizers (Metaspace with
``prepend_scheme="first"``, ``legacy=False``) prefix only the start of the text. The
exporter writes ``add_space_prefix = true`` (so that stock tools tokenize every text that
starts with a word right) plus llava-edge's ``space_prefix = "first"``; here that pair
loads with ``add_space_prefix`` overridden to false (llama.cpp's metadata overrides) and
the text is tokenized piece by piece between special tokens, each prefixed where Hugging
Face prefixes it (:meth:`HFRules.piece`). ``"always"`` (``legacy=True``) differs from
llama.cpp only before a piece that already starts with a space, which Metaspace does not
prefix a second time. GGUF files from other
converters carry no llava-edge key and tokenize exactly as llama.cpp does.

:class:`LlamaCppTokenizer` loads the vocabulary alone (no weights, no context): the
exporter's tokenizer parity check uses it on files of any size.
"""

from __future__ import annotations

import ctypes
import os
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import llama_cpp

from llava_edge.errors import LlavaEdgeError
from llava_edge.runtimes.gguf_check import check_gguf
from llava_edge.runtimes.gguf_keys import HF_NORMALIZER_KEY, HF_SPACE_PREFIX_KEY
from llava_edge.runtimes.llama_log import capture_llama_log, last_error, set_llama_logging

ADD_SPACE_PREFIX_KEY = "tokenizer.ggml.add_space_prefix"
_UNICODE_FORMS = ("NFC", "NFD", "NFKC", "NFKD")
# Tokens llama.cpp matches as whole pieces of text when parsing specials.
_SPECIAL_ATTRS = (llama_cpp.LLAMA_TOKEN_ATTR_CONTROL | llama_cpp.LLAMA_TOKEN_ATTR_USER_DEFINED
                  | llama_cpp.LLAMA_TOKEN_ATTR_UNKNOWN)


class LlamaCppError(LlavaEdgeError):
    """llama.cpp refused a model, a context or an input."""


def set_fields(struct, **values) -> None:
    """Set fields of a llama.cpp ctypes parameter struct. A ctypes ``Structure`` takes any
    attribute name silently, so a field renamed upstream would otherwise be ignored."""
    names = {name for name, *_ in type(struct)._fields_}
    for name, value in values.items():
        if name not in names:
            raise AttributeError(f"{type(struct).__name__} has no field {name!r} in this "
                                 "llama-cpp-python")
        setattr(struct, name, value)


@dataclass(frozen=True)
class HFRules:
    """What the checkpoint's Hugging Face tokenizer does that llama.cpp's does not.

    ``space_prefix``: where the Metaspace pre-tokenizer puts its "▁", ``"first"`` (the
    start of the text only) or ``"always"`` (every piece of text between special
    tokens); either way never a second one before a piece that starts with a space.
    ``normalizer``: a Unicode normalization form (``"NFC"``) applied to each piece."""

    space_prefix: str | None = None
    normalizer: str | None = None

    @classmethod
    def from_metadata(cls, metadata: dict) -> "HFRules":
        prefix = metadata.get(HF_SPACE_PREFIX_KEY)
        normalizer = str(metadata.get(HF_NORMALIZER_KEY) or "").upper()
        return cls(space_prefix=prefix if prefix in ("first", "always") else None,
                   normalizer=normalizer if normalizer in _UNICODE_FORMS else None)

    @property
    def active(self) -> bool:
        return bool(self.space_prefix or self.normalizer)

    @property
    def overrides(self) -> dict[str, bool]:
        """Metadata to override at load: the prefix is placed here, not by llama.cpp."""
        return {ADD_SPACE_PREFIX_KEY: False} if self.space_prefix else {}

    def piece(self, text: str, at_start: bool) -> str:
        """A piece of text between special tokens as the Hugging Face tokenizer sees it
        (``at_start``: the piece begins the whole text)."""
        if self.normalizer:
            text = unicodedata.normalize(self.normalizer, text)
        wants = self.space_prefix == "always" or (self.space_prefix == "first" and at_start)
        if wants and not text.startswith(" "):
            text = " " + text
        return text

    def finish_detokenized(self, text: str) -> str:
        # the prefix space piece() adds; Hugging Face's Metaspace decoder strips it too
        if self.space_prefix and text.startswith(" "):
            text = text[1:]
        return text


def load_model(path: Path, params, overrides: dict[str, bool], verbose: bool):
    """``llama_model_load_from_file`` with boolean metadata ``overrides``; raises
    :class:`LlamaCppError` with llama.cpp's last log line when it fails."""
    items = (llama_cpp.llama_model_kv_override * (len(overrides) + 1))()  # zero-terminated
    for item, (key, value) in zip(items, overrides.items()):
        item.tag = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_BOOL
        item.key = key.encode("utf-8")
        item.value.val_bool = value
    if overrides:
        params.kv_overrides = ctypes.cast(items, ctypes.POINTER(llama_cpp.llama_model_kv_override))
    set_llama_logging(verbose)
    llama_cpp.llama_backend_init()
    with capture_llama_log(verbose=verbose) as log:
        model = llama_cpp.llama_model_load_from_file(str(path).encode("utf-8"), params)
    if not model:
        raise LlamaCppError(f"{path}: llama.cpp could not load the model "
                            f"({last_error(log) or 'no message'})")
    return model


class Vocab:
    """Tokenize and detokenize with one loaded model's vocabulary and ``rules``."""

    def __init__(self, model, rules: HFRules):
        self._vocab = llama_cpp.llama_model_get_vocab(model)
        self.rules = rules
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self._vocab)
        self._special_texts: tuple[str, ...] | None = None
        self._special_re: re.Pattern | None = None

    @property
    def bos_token(self) -> int:
        return llama_cpp.llama_vocab_bos(self._vocab)

    @property
    def eos_token(self) -> int:
        return llama_cpp.llama_vocab_eos(self._vocab)

    @property
    def add_bos(self) -> bool:
        return bool(llama_cpp.llama_vocab_get_add_bos(self._vocab))

    def is_eog(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self._vocab, token))

    def tokenize(self, text: str, add_bos: bool | None = None, special: bool = True) -> list[int]:
        """Token ids of ``text``; ``add_bos``: add the vocabulary's BOS/EOS as its
        tokenizer does (default: when the vocabulary says so); ``special``: parse special
        tokens in the text."""
        if add_bos is None:
            add_bos = self.add_bos
        if not self.rules.active:
            return self._tokenize(text, add_bos, special)
        # Piece by piece, as Hugging Face does: special tokens split the text first,
        # then each piece is normalized and prefixed on its own.
        ids = [self.bos_token] if add_bos and self.add_bos else []
        for i, piece in enumerate(self._split_special(text) if special else [text]):
            if i % 2:  # a special token's text
                ids += self._tokenize(piece, False, True)
            elif piece:
                ids += self._tokenize(self.rules.piece(piece, at_start=i == 0), False, False)
        if add_bos and llama_cpp.llama_vocab_get_add_eos(self._vocab):
            ids.append(self.eos_token)
        return ids

    def _split_special(self, text: str) -> list[str]:
        """``[text, special, text, special, ..., text]`` (longest special token first,
        as llama.cpp matches them)."""
        if self._special_re is None:
            texts = sorted(self.special_texts(), key=len, reverse=True)
            self._special_re = re.compile("(" + "|".join(map(re.escape, texts)) + ")") \
                if texts else re.compile("(?!)")
        return self._special_re.split(text)

    def _tokenize(self, text: str, add_special: bool, special: bool) -> list[int]:
        data = text.encode("utf-8")
        n_max = len(data) + 2
        while True:
            tokens = (llama_cpp.llama_token * n_max)()
            n = llama_cpp.llama_tokenize(self._vocab, data, len(data), tokens, n_max,
                                         add_special, special)
            if n >= 0:
                return list(tokens[:n])
            n_max = -n  # the buffer was too small; llama.cpp says how many are needed

    def special_texts(self) -> tuple[str, ...]:
        """The texts of the tokens llama.cpp parses as specials."""
        if self._special_texts is None:
            texts = []
            for token in range(self.n_vocab):
                if llama_cpp.llama_vocab_get_attr(self._vocab, token) & _SPECIAL_ATTRS:
                    texts.append(llama_cpp.llama_vocab_get_text(self._vocab, token)
                                 .decode("utf-8", errors="replace"))
            self._special_texts = tuple(t for t in texts if t)
        return self._special_texts

    def detokenize(self, tokens: list[int], special: bool = False) -> str:
        if not tokens:
            return ""
        arr = (llama_cpp.llama_token * len(tokens))(*tokens)
        size = 16 * len(tokens) + 16
        while True:
            buf = ctypes.create_string_buffer(size)
            n = llama_cpp.llama_detokenize(self._vocab, arr, len(tokens), buf, size,
                                           False, special)
            if n >= 0:
                text = buf.raw[:n].decode("utf-8", errors="replace")
                break
            size = -n
        return self.rules.finish_detokenized(text)


class LlamaCppTokenizer:
    """A GGUF file's tokenizer alone (llama.cpp's ``vocab_only`` load: no weights).

    ``hf_rules``: tokenize as llava-edge's runtime does (True) or as stock llama.cpp
    does (False); see the module docstring."""

    def __init__(self, gguf_path: str | os.PathLike, hf_rules: bool = True,
                 verbose: bool = False):
        self.path = Path(gguf_path)
        self._model = None
        metadata = check_gguf(self.path).metadata
        rules = HFRules.from_metadata(metadata) if hf_rules else HFRules()
        params = llama_cpp.llama_model_default_params()
        set_fields(params, vocab_only=True)
        self._model = load_model(self.path, params, rules.overrides, verbose)
        self.vocab = Vocab(self._model, rules)

    def tokenize(self, text: str, add_bos: bool | None = None, special: bool = True) -> list[int]:
        self._check_open()
        return self.vocab.tokenize(text, add_bos, special)

    def detokenize(self, tokens: list[int], special: bool = False) -> str:
        self._check_open()
        return self.vocab.detokenize(tokens, special)

    def _check_open(self) -> None:
        if self._model is None:
            raise LlamaCppError(f"{self.path}: the tokenizer is closed")

    def close(self) -> None:
        if self._model is not None:
            llama_cpp.llama_model_free(self._model)
            self._model = None

    def __enter__(self) -> "LlamaCppTokenizer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
