"""A GGUF language model run by llama.cpp, fed token ids or precomputed embeddings.

A thin, torch-free wrapper over llama-cpp-python's C API: load a GGUF file, tokenize,
evaluate token ids or image embeddings into the KV cache, and read the logits of the last
position. Image embeddings (the projector output, one row per image token) enter through
a ``llama_batch`` whose ``embd`` field is filled instead of ``token``, at the positions
that follow the text already evaluated, so the model sees exactly what the PyTorch LLaVA
model sees when it splices image features into its input embeddings.

Tokenization matches the Hugging Face tokenizer the GGUF was exported from: llama.cpp's
SentencePiece tokenizer always adds a space after every special token, while Hugging
Face's (``legacy=False``) adds one only at the start of the text, and llama.cpp does not
apply a tokenizer's Unicode normalizer. The exporter records what the Hugging Face
tokenizer does in two metadata keys (:mod:`llava_edge.runtimes.gguf_keys`) and
:meth:`LlamaCppLM.tokenize` applies them. GGUF files from other converters carry neither
key and tokenize as llama.cpp does.

One instance holds one model, one context and one sequence (seq id 0); it is not
thread-safe.
"""

from __future__ import annotations

import ctypes
import os
import unicodedata
from pathlib import Path

import numpy as np

import llama_cpp

from llava_edge.errors import LlavaEdgeError
from llava_edge.manifest import DEFAULT_N_CTX
from llava_edge.runtimes.gguf_check import check_gguf
from llava_edge.runtimes.gguf_keys import HF_NORMALIZER_KEY, HF_SPACE_PREFIX_KEY
from llava_edge.runtimes.llama_log import capture_llama_log, last_error, set_llama_logging
from llava_edge.runtimes.sampling import checked_token_ids

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


class LlamaCppLM:
    """A GGUF language model in llama.cpp, evaluated incrementally on one sequence.

    ``n_batch`` is the most positions handed to ``llama_decode`` at once (inputs are
    split into chunks of that size); ``n_ubatch`` the physical batch llama.cpp computes
    in one go (default: ``min(n_batch, 512)``). ``repack``: let llama.cpp copy the weights
    into its interleaved CPU layouts at load (its default; on this project's 2-core AVX-512
    machine, with tinyllava-1.1b Q4_K_M, repacking decoded ~10% faster but prefilled 512
    tokens ~35% slower and peaked ~450 MB higher, see benchmarks/results). ``mmap``: map
    the GGUF rather than read it; default: only when not repacking, since a repacked model
    holds its own copy of most weights and the mapped file's pages would count a second
    time (tinyllava-1.1b Q4_K_M, repacked: peak RSS 824 MB read against 1280 MB mapped,
    same prefill and decode speed within the noise). llama.cpp's log is silenced unless
    ``verbose`` (the log callback is process-wide).
    """

    def __init__(self, gguf_path: str | os.PathLike, n_ctx: int = DEFAULT_N_CTX,
                 n_threads: int | None = None, n_batch: int = 512, n_ubatch: int | None = None,
                 n_gpu_layers: int = 0, flash_attn: bool = False, repack: bool = True,
                 mmap: bool | None = None, verbose: bool = False):
        if n_ctx < 1 or n_batch < 1 or (n_ubatch is not None and n_ubatch < 1):
            raise LlamaCppError(f"n_ctx, n_batch and n_ubatch must be positive "
                                f"(got {n_ctx}, {n_batch}, {n_ubatch})")
        self.path = Path(gguf_path)
        self.verbose = verbose
        self._model = self._ctx = None
        self._token_batch = self._embd_batch = None
        # Before llama.cpp sees the file: a truncated or corrupt one would crash it.
        info = check_gguf(self.path)
        self.metadata = info.metadata
        self._space_prefix = info.metadata.get(HF_SPACE_PREFIX_KEY)
        self._normalizer = info.metadata.get(HF_NORMALIZER_KEY)

        set_llama_logging(verbose)
        llama_cpp.llama_backend_init()
        model_params = llama_cpp.llama_model_default_params()
        self.mmap = (not repack) if mmap is None else mmap
        set_fields(model_params, n_gpu_layers=n_gpu_layers, use_extra_bufts=repack,
                    load_mode=(llama_cpp.LLAMA_LOAD_MODE_MMAP if self.mmap
                               else llama_cpp.LLAMA_LOAD_MODE_NONE))
        with capture_llama_log(verbose=verbose) as log:
            self._model = llama_cpp.llama_model_load_from_file(
                str(self.path).encode("utf-8"), model_params)
        if not self._model:
            raise LlamaCppError(f"{self.path}: llama.cpp could not load the model "
                                f"({last_error(log) or 'no message'})")

        ctx_params = llama_cpp.llama_context_default_params()
        threads = n_threads or max(1, os.cpu_count() or 1)
        set_fields(ctx_params, n_ctx=n_ctx, n_batch=n_batch,
                    n_ubatch=min(n_batch, n_ubatch or 512), n_seq_max=1, n_threads=threads,
                    n_threads_batch=threads, no_perf=not verbose,
                    flash_attn_type=(llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn
                                     else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED))
        with capture_llama_log(verbose=verbose) as log:
            self._ctx = llama_cpp.llama_init_from_model(self._model, ctx_params)
        if not self._ctx:
            self.close()
            raise LlamaCppError(f"{self.path}: llama.cpp could not create a context with "
                                f"n_ctx={n_ctx} ({last_error(log) or 'no message'})")

        self._vocab = llama_cpp.llama_model_get_vocab(self._model)
        # llama.cpp may round n_ctx up and clamp n_batch to it; a batch larger than
        # the context's n_batch would abort the process, so use what it settled on.
        self.n_ctx = llama_cpp.llama_n_ctx(self._ctx)
        self.n_batch = min(n_batch, llama_cpp.llama_n_batch(self._ctx))
        self.n_embd = llama_cpp.llama_model_n_embd(self._model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self._vocab)
        self.n_past = 0
        self._has_logits = False
        self._special_texts: tuple[str, ...] | None = None
        self._token_batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        self._embd_batch = llama_cpp.llama_batch_init(self.n_batch, self.n_embd, 1)

    # -- tokens ---------------------------------------------------------------------

    @property
    def bos_token(self) -> int:
        return llama_cpp.llama_vocab_bos(self._vocab)

    @property
    def eos_token(self) -> int:
        return llama_cpp.llama_vocab_eos(self._vocab)

    @property
    def add_bos(self) -> bool:
        """Whether the model's tokenizer starts a prompt with BOS."""
        return bool(llama_cpp.llama_vocab_get_add_bos(self._vocab))

    def is_eog(self, token: int) -> bool:
        """True for tokens that end generation (EOS, EOT, ``<|im_end|>``, ...)."""
        return bool(llama_cpp.llama_vocab_is_eog(self._vocab, token))

    def tokenize(self, text: str, add_bos: bool | None = None, special: bool = True) -> list[int]:
        """Token ids of ``text`` (with BOS first when ``add_bos``, default: as the model's
        tokenizer does). ``special``: recognise special tokens such as ``<image>`` in the
        text, as Hugging Face tokenizers do."""
        self._check_open()
        if add_bos is None:
            add_bos = self.add_bos
        text = self._hf_compatible(text, special)
        data = text.encode("utf-8")
        n_max = len(data) + 2
        while True:
            tokens = (llama_cpp.llama_token * n_max)()
            n = llama_cpp.llama_tokenize(self._vocab, data, len(data), tokens, n_max,
                                         add_bos, special)
            if n >= 0:
                return list(tokens[:n])
            n_max = -n  # the buffer was too small; llama.cpp says how many are needed

    def _hf_compatible(self, text: str, special: bool) -> str:
        if self._normalizer and self._normalizer.upper() in ("NFC", "NFD", "NFKC", "NFKD"):
            text = unicodedata.normalize(self._normalizer.upper(), text)
        # Metaspace "first": one space before the text, unless it starts with a space or
        # with a special token (then the first piece is not at offset 0 of the input).
        if (self._space_prefix == "first" and text and not text.startswith(" ")
                and not (special and text.startswith(self._special_token_texts()))):
            text = " " + text
        return text

    def _special_token_texts(self) -> tuple[str, ...]:
        if self._special_texts is None:
            texts = []
            for token in range(self.n_vocab):
                if llama_cpp.llama_vocab_get_attr(self._vocab, token) & _SPECIAL_ATTRS:
                    texts.append(llama_cpp.llama_vocab_get_text(self._vocab, token)
                                 .decode("utf-8", errors="replace"))
            self._special_texts = tuple(t for t in texts if t)
        return self._special_texts

    def detokenize(self, tokens: list[int], special: bool = False) -> str:
        """The text of ``tokens``; special tokens are rendered only when ``special``."""
        self._check_open()
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
        if self._space_prefix == "first" and text.startswith(" "):
            # the prefix space tokenize() adds; Hugging Face's decoder strips it too
            text = text[1:]
        return text

    # -- evaluation -----------------------------------------------------------------

    def eval_tokens(self, tokens: list[int]) -> None:
        """Append ``tokens`` to the sequence (positions ``n_past``, ``n_past + 1``, ...)."""
        self._check_open()
        tokens = checked_token_ids(tokens, self.n_vocab, LlamaCppError)
        if not tokens:
            return
        self._check_room(len(tokens))
        batch = self._token_batch
        for start in range(0, len(tokens), self.n_batch):
            chunk = tokens[start:start + self.n_batch]
            last_chunk = start + self.n_batch >= len(tokens)
            for i, token in enumerate(chunk):
                batch.token[i] = token
                self._fill_position(batch, i, last_chunk and i == len(chunk) - 1)
            self._decode(batch, len(chunk))

    def eval_embeddings(self, embeds: np.ndarray) -> None:
        """Append one position per row of ``embeds`` (``[n, n_embd]`` float32): input
        embeddings that bypass the token embedding table, e.g. projected image features."""
        self._check_open()
        embeds = np.asarray(embeds)
        if embeds.ndim != 2 or embeds.shape[1] != self.n_embd:
            raise LlamaCppError(f"embeddings must have shape [n, {self.n_embd}], "
                                f"got {list(embeds.shape)}")
        if not np.issubdtype(embeds.dtype, np.floating):
            raise LlamaCppError(f"embeddings must be floating point, got {embeds.dtype}")
        embeds = np.ascontiguousarray(embeds, dtype=np.float32)
        if not np.isfinite(embeds).all():
            raise LlamaCppError("embeddings contain NaN or infinite values")
        n = embeds.shape[0]
        if n == 0:
            return
        self._check_room(n)
        batch = self._embd_batch
        row_bytes = self.n_embd * 4
        for start in range(0, n, self.n_batch):
            chunk = embeds[start:start + self.n_batch]
            last_chunk = start + self.n_batch >= n
            ctypes.memmove(batch.embd, chunk.ctypes.data, chunk.shape[0] * row_bytes)
            for i in range(chunk.shape[0]):
                self._fill_position(batch, i, last_chunk and i == chunk.shape[0] - 1)
            self._decode(batch, chunk.shape[0])

    def _fill_position(self, batch, i: int, want_logits: bool) -> None:
        batch.pos[i] = self.n_past + i
        batch.n_seq_id[i] = 1
        batch.seq_id[i][0] = 0
        batch.logits[i] = want_logits

    def _decode(self, batch, n: int) -> None:
        batch.n_tokens = n
        rc = llama_cpp.llama_decode(self._ctx, batch)
        if rc != 0:
            self._has_logits = False
            raise LlamaCppError(f"llama_decode failed with code {rc} at position "
                                f"{self.n_past} ({n} inputs; n_ctx={self.n_ctx})")
        self.n_past += n
        self._last_index = n - 1
        self._has_logits = True

    def _check_room(self, n: int) -> None:
        if self.n_past + n > self.n_ctx:
            raise LlamaCppError(f"context is full: {self.n_past} positions used + {n} new "
                                f"> n_ctx={self.n_ctx}")

    def logits(self) -> np.ndarray:
        """Logits (float32, ``[n_vocab]``) of the last position evaluated."""
        self._check_open()
        if not self._has_logits:
            raise LlamaCppError("no logits yet: evaluate tokens or embeddings first")
        ptr = llama_cpp.llama_get_logits_ith(self._ctx, self._last_index)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy()

    def reset(self) -> None:
        """Forget the sequence: clear the KV cache and start again at position 0."""
        self._check_open()
        if hasattr(llama_cpp, "llama_memory_clear"):
            llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self._ctx), True)
        else:  # llama.cpp before the memory API
            llama_cpp.llama_kv_self_clear(self._ctx)
        self.n_past = 0
        self._has_logits = False

    def truncate(self, n: int) -> bool:
        """Keep the first ``n`` positions of the sequence and forget the rest, so the next
        input goes to position ``n``. Returns False (and changes nothing) where llama.cpp's
        memory cannot drop part of a sequence (recurrent models); callers then ``reset``.

        The logits of position ``n - 1`` are not kept: evaluate at least one more input
        before reading :meth:`logits`.
        """
        self._check_open()
        if not 0 <= n <= self.n_ctx:
            raise LlamaCppError(f"cannot truncate to {n} positions (n_ctx={self.n_ctx})")
        if n == 0:
            self.reset()
            return True
        # Always from n to the end, even when n >= n_past: a decode interrupted between
        # llama_decode and the n_past update leaves positions we do not count.
        if hasattr(llama_cpp, "llama_memory_seq_rm"):
            ok = llama_cpp.llama_memory_seq_rm(llama_cpp.llama_get_memory(self._ctx), 0, n, -1)
        else:  # llama.cpp before the memory API
            ok = llama_cpp.llama_kv_self_seq_rm(self._ctx, 0, n, -1)
        if not ok:
            return False
        self.n_past = min(self.n_past, n)
        self._has_logits = False
        return True

    # -- lifetime -------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._ctx is None:
            raise LlamaCppError(f"{self.path}: the model is closed")

    def close(self) -> None:
        """Free the context, the model and the batches (idempotent)."""
        if self._token_batch is not None:
            llama_cpp.llama_batch_free(self._token_batch)
            self._token_batch = None
        if self._embd_batch is not None:
            llama_cpp.llama_batch_free(self._embd_batch)
            self._embd_batch = None
        if self._ctx is not None:
            llama_cpp.llama_free(self._ctx)
            self._ctx = None
        if self._model is not None:
            llama_cpp.llama_model_free(self._model)
            self._model = None

    def __enter__(self) -> "LlamaCppLM":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
