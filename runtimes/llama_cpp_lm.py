"""A GGUF language model run by llama.cpp, fed token ids or precomputed embeddings.

A thin, torch-free wrapper over llama-cpp-python's C API: load a GGUF file, tokenize,
evaluate token ids or image embeddings into the KV cache, and read the logits of the last
position. Image embeddings (the projector output, one row per image token) enter through
a ``llama_batch`` whose ``embd`` field is filled instead of ``token``, at the positions
that follow the text already evaluated, so the model sees exactly what the PyTorch LLaVA
model sees when it splices image features into its input embeddings.

Tokenization matches the Hugging Face tokenizer the GGUF was exported from: the rules
the exporter recorded in llava-edge's metadata keys are applied around llama.cpp's
tokenizer (:mod:`llava_edge.runtimes.llama_cpp_vocab`). GGUF files from other converters
carry no such key and tokenize as llama.cpp does.

One instance holds one model, one context and one sequence (seq id 0); it is not
thread-safe, except for :attr:`LlamaCppLM.cancel`'s signal, which any thread may set.
"""

from __future__ import annotations

import codecs
import ctypes
import os
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

import llama_cpp

from llava_edge.errors import StructuredOutputError
from llava_edge.manifest import DEFAULT_N_CTX
from llava_edge.runtimes.compute_thread import for_llama_cpp
from llava_edge.runtimes.gguf_check import check_gguf
from llava_edge.runtimes.llama_cpp_vocab import (HFRules, LlamaCppError, Vocab, load_model,
                                                 set_fields)
from llava_edge.runtimes.llama_log import capture_llama_log, last_error
from llava_edge.runtimes.sampling import checked_token_ids
from llava_edge.runtimes.token_embd import TokenEmbeddings, open_token_embeddings

if TYPE_CHECKING:
    from llava_edge.runtimes.cancel import Cancel

__all__ = ["GrammarConstraint", "LlamaCppLM", "LlamaCppError", "set_fields"]

# KV cache element types: f16 is llama.cpp's default; q8_0 halves the cache (V needs
# flash attention to be quantized).
KV_TYPES = {"f16": llama_cpp.GGML_TYPE_F16, "q8_0": llama_cpp.GGML_TYPE_Q8_0}

# llama_token_data {int32 id; float logit; float p} as numpy sees it (12 bytes, no padding)
_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])
assert _TOKEN_DATA.itemsize == ctypes.sizeof(llama_cpp.llama_token_data)


def gpu_layers(value: int | str | None) -> int:
    """Layers to offload: ``"auto"`` (or None) is every layer where llama.cpp was built
    with a GPU backend that found a device (``llama_supports_gpu_offload``), else 0; a
    number is taken as given (llama.cpp caps it at the model's layer count)."""
    if value is None or value == "auto":
        return 999 if llama_cpp.llama_supports_gpu_offload() else 0
    if isinstance(value, str):
        try:
            value = int(value)
        except ValueError:
            raise LlamaCppError(f"n_gpu_layers must be a number or 'auto' (got {value!r})")
    if value < 0:
        raise LlamaCppError(f"n_gpu_layers must be >= 0 or 'auto' (got {value})")
    return value


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
    ``verbose`` (the log callback is process-wide). ``n_threads`` decodes,
    ``n_threads_batch`` (default: ``n_threads``) evaluates batches (the prefill).
    ``kv_type``: the KV cache's element type, ``f16`` or ``q8_0`` (with flash attention).
    ``n_gpu_layers``: layers offloaded to a GPU, or ``"auto"`` (see :func:`gpu_layers`).

    :attr:`cancel`: while set to a :class:`~llava_edge.runtimes.cancel.Cancel`, an
    evaluation stops within one ubatch of the signal (llama.cpp's abort callback) and
    raises :class:`Cancelled`; :attr:`n_past` then counts what the KV cache holds.
    """

    def __init__(self, gguf_path: str | os.PathLike, n_ctx: int = DEFAULT_N_CTX,
                 n_threads: int | None = None, n_batch: int = 512, n_ubatch: int | None = None,
                 n_gpu_layers: int | str = 0, flash_attn: bool = False, repack: bool = True,
                 mmap: bool | None = None, verbose: bool = False,
                 n_threads_batch: int | None = None, kv_type: str = "f16"):
        if kv_type not in KV_TYPES:
            raise LlamaCppError(f"kv_type must be one of {', '.join(KV_TYPES)} (got {kv_type!r})")
        if kv_type != "f16" and not flash_attn:
            raise LlamaCppError(f"a {kv_type} KV cache needs flash attention (llama.cpp "
                                "quantizes the V cache only with it)")
        if n_ctx < 1 or n_batch < 1 or (n_ubatch is not None and n_ubatch < 1):
            raise LlamaCppError(f"n_ctx, n_batch and n_ubatch must be positive "
                                f"(got {n_ctx}, {n_batch}, {n_ubatch})")
        self.path = Path(gguf_path)
        self.verbose = verbose
        self._model = self._ctx = None
        # The load (weight repacking) and every llama_decode run on the process's llama.cpp
        # thread: one OpenMP pool whoever calls, and no other AMX code on it
        # (runtimes/compute_thread.py).
        self._compute = for_llama_cpp()
        self._token_batch = self._embd_batch = None
        # The request's Cancel, which the abort callback reads. The callback refers to
        # this list, not to self (a cycle would keep the model alive until the garbage
        # collector runs), and self keeps the callback alive for llama.cpp.
        slot: list[Cancel | None] = [None]
        self._cancel_slot = slot
        self._abort_cb = llama_cpp.ggml_abort_callback(
            lambda _data: slot[0] is not None and slot[0].cancelled)
        # Before llama.cpp sees the file: a truncated or corrupt one would crash it.
        info = check_gguf(self.path)
        self.metadata, self._info = info.metadata, info
        self._token_table: TokenEmbeddings | None | bool = False  # False: not opened yet
        rules = HFRules.from_metadata(info.metadata)

        model_params = llama_cpp.llama_model_default_params()
        self.mmap = (not repack) if mmap is None else mmap
        self.n_gpu_layers = gpu_layers(n_gpu_layers)
        set_fields(model_params, n_gpu_layers=self.n_gpu_layers, use_extra_bufts=repack,
                    load_mode=(llama_cpp.LLAMA_LOAD_MODE_MMAP if self.mmap
                               else llama_cpp.LLAMA_LOAD_MODE_NONE))
        self._model = self._compute.run(load_model, self.path, model_params, rules.overrides,
                                        verbose)

        ctx_params = llama_cpp.llama_context_default_params()
        threads = n_threads or max(1, os.cpu_count() or 1)
        set_fields(ctx_params, n_ctx=n_ctx, n_batch=n_batch,
                    n_ubatch=min(n_batch, n_ubatch or 512), n_seq_max=1, n_threads=threads,
                    n_threads_batch=n_threads_batch or threads, no_perf=not verbose,
                    type_k=KV_TYPES[kv_type], type_v=KV_TYPES[kv_type],
                    flash_attn_type=(llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn
                                     else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED))
        with capture_llama_log(verbose=verbose) as log:
            self._ctx = self._compute.run(llama_cpp.llama_init_from_model, self._model,
                                          ctx_params)
        if not self._ctx:
            self.close()
            raise LlamaCppError(f"{self.path}: llama.cpp could not create a context with "
                                f"n_ctx={n_ctx} ({last_error(log) or 'no message'})")

        self._vocab = Vocab(self._model, rules)
        # llama.cpp may round n_ctx up and clamp n_batch to it; a batch larger than
        # the context's n_batch would abort the process, so use what it settled on.
        self.n_ctx = llama_cpp.llama_n_ctx(self._ctx)
        self.n_batch = min(n_batch, llama_cpp.llama_n_batch(self._ctx))
        self.n_embd = llama_cpp.llama_model_n_embd(self._model)
        self.n_vocab = self._vocab.n_vocab
        self.n_past = 0
        self._has_logits = False
        self._token_batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        self._embd_batch = llama_cpp.llama_batch_init(self.n_batch, self.n_embd, 1)

    # -- tokens ---------------------------------------------------------------------

    @property
    def placement(self) -> str:
        """Where the model runs: ``CPU``, or ``GPU (N layers)``."""
        if not self.n_gpu_layers:
            return "CPU"
        n = llama_cpp.llama_model_n_layer(self._model)
        return f"GPU ({min(self.n_gpu_layers, n + 1)} of {n + 1} layers)"

    @property
    def bos_token(self) -> int:
        return self._vocab.bos_token

    @property
    def eos_token(self) -> int:
        return self._vocab.eos_token

    @property
    def add_bos(self) -> bool:
        """Whether the model's tokenizer starts a prompt with BOS."""
        return self._vocab.add_bos

    def is_eog(self, token: int) -> bool:
        """True for tokens that end generation (EOS, EOT, ``<|im_end|>``, ...)."""
        return self._vocab.is_eog(token)

    def tokenize(self, text: str, add_bos: bool | None = None, special: bool = True) -> list[int]:
        """Token ids of ``text`` (with BOS first when ``add_bos``, default: as the model's
        tokenizer does). ``special``: recognise special tokens such as ``<image>`` in the
        text, as Hugging Face tokenizers do."""
        self._check_open()
        return self._vocab.tokenize(text, add_bos, special)

    def detokenize(self, tokens: list[int], special: bool = False) -> str:
        """The text of ``tokens``; special tokens are rendered only when ``special``."""
        self._check_open()
        return self._vocab.detokenize(tokens, special)

    def grammar(self, gbnf: str, root: str = "root") -> "GrammarConstraint":
        """A :class:`GrammarConstraint` for one generation: llama.cpp's grammar sampler
        over this model's vocabulary. Raises :class:`StructuredOutputError` (with
        llama.cpp's message) for a grammar it cannot parse."""
        self._check_open()
        if getattr(self, "_tokens_table", None) is None:  # once per model
            self._tokens_table = TokenTable(self._vocab)
        return GrammarConstraint(self._vocab, gbnf, root, self._tokens_table, self.verbose)

    # -- evaluation -----------------------------------------------------------------

    def eval_tokens(self, tokens: list[int], all_logits: bool = False) -> np.ndarray | None:
        """Append ``tokens`` to the sequence (positions ``n_past``, ``n_past + 1``, ...).
        ``all_logits``: also return every position's logits, ``[len(tokens), n_vocab]``
        (computed in the same batches: what a batched evaluation gives, to set beside
        one token at a time)."""
        self._check_open()
        tokens = checked_token_ids(tokens, self.n_vocab, LlamaCppError)
        if not tokens:
            return np.zeros((0, self.n_vocab), np.float32) if all_logits else None
        self._check_room(len(tokens))
        batch = self._token_batch
        rows = []
        for start in range(0, len(tokens), self.n_batch):
            self._check_cancel()
            chunk = tokens[start:start + self.n_batch]
            last_chunk = start + self.n_batch >= len(tokens)
            for i, token in enumerate(chunk):
                batch.token[i] = token
                self._fill_position(batch, i,
                                    all_logits or (last_chunk and i == len(chunk) - 1))
            self._decode(batch, len(chunk))
            if all_logits:
                rows += [self._logits_row(i) for i in range(len(chunk))]
        return np.stack(rows) if all_logits else None

    def eval_prompt(self, parts: Sequence[Sequence[int] | np.ndarray]) -> None:
        """Append a prompt's parts in order: lists of token ids and ``[n, n_embd]``
        embeddings (an image's rows). Where they mix and this model's token rows can be had
        exactly as llama.cpp's token path has them (:mod:`.token_embd`: CPU, a checked
        architecture), as one batch of embeddings: ubatches as full as one batch of text
        would give, where a ``llama_decode`` per part leaves a few nearly empty ones
        (tinyllava-1.1b, 617 positions: 35 + 512 + 64 + 6 -> 512 + 105, prefill -4-5%).
        Else part by part."""
        parts = [p for p in parts if len(p)]
        embeds = [isinstance(p, np.ndarray) and p.ndim == 2 for p in parts]
        table = self._token_rows() if any(embeds) and not all(embeds) else None
        if table is None:
            for p, is_embeds in zip(parts, embeds):
                if is_embeds:
                    self.eval_embeddings(p)
                else:
                    self.eval_tokens(list(p))
            return
        rows = [np.asarray(p, np.float32) if is_embeds
                else table.rows(checked_token_ids(list(p), self.n_vocab, LlamaCppError))
                for p, is_embeds in zip(parts, embeds)]
        self.eval_embeddings(np.concatenate(rows))

    def _token_rows(self) -> "TokenEmbeddings | None":
        # Off with GPU layers: a GPU backend may dequantize the rows itself (its own
        # rounding), and the two paths could then differ; not measured there.
        if self._token_table is False:
            self._token_table = (None if self.n_gpu_layers
                                 else open_token_embeddings(self.path, self._info))
        return self._token_table

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
            self._check_cancel()
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
        rc = self._compute.run(llama_cpp.llama_decode, self._ctx, batch)
        cancel = self._cancel_slot[0]
        if rc == 2 and cancel is not None and cancel.cancelled:
            # Aborted by the callback: llama.cpp keeps the ubatches it finished and rolls
            # back the one it was in, so the cache holds a prefix of this batch.
            self._has_logits = False
            self.n_past = self._positions_held()
            cancel.check()
        if rc != 0:
            self._has_logits = False
            raise LlamaCppError(f"llama_decode failed with code {rc} at position "
                                f"{self.n_past} ({n} inputs; n_ctx={self.n_ctx})")
        self.n_past += n
        self._last_index = n - 1
        self._has_logits = True

    # -- cancellation ---------------------------------------------------------------

    @property
    def cancel(self) -> "Cancel | None":
        """The signal that stops evaluations (None: none can be stopped)."""
        return self._cancel_slot[0]

    @cancel.setter
    def cancel(self, cancel: "Cancel | None") -> None:
        self._cancel_slot[0] = cancel
        if self._ctx is None:  # closed (a stream ending after the model): nothing to do
            return
        # Installed only while a signal is set: llama.cpp calls it after every graph
        # node, and each call takes the GIL (~0.1 ms a token on the tiny test model).
        llama_cpp.llama_set_abort_callback(
            self._ctx, self._abort_cb if cancel is not None else llama_cpp.ggml_abort_callback(),
            None)

    def _check_cancel(self) -> None:
        cancel = self._cancel_slot[0]
        if cancel is not None:
            cancel.check()

    def _positions_held(self) -> int:
        """How many positions of sequence 0 llama.cpp's memory holds (0, 1, ... n-1)."""
        last = llama_cpp.llama_memory_seq_pos_max(llama_cpp.llama_get_memory(self._ctx), 0)
        return max(0, last + 1)  # -1 when empty

    def _check_room(self, n: int) -> None:
        if self.n_past + n > self.n_ctx:
            raise LlamaCppError(f"context is full: {self.n_past} positions used + {n} new "
                                f"> n_ctx={self.n_ctx}")

    def logits(self) -> np.ndarray:
        """Logits (float32, ``[n_vocab]``) of the last position evaluated."""
        self._check_open()
        if not self._has_logits:
            raise LlamaCppError("no logits yet: evaluate tokens or embeddings first")
        return self._logits_row(self._last_index)

    def _logits_row(self, i: int) -> np.ndarray:
        """A copy of the logits of the last batch's ``i``-th input (asked for in it)."""
        ptr = llama_cpp.llama_get_logits_ith(self._ctx, i)
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
        if getattr(self, "_token_table", None):
            self._token_table.close()
        self._token_table = None

    def __enter__(self) -> "LlamaCppLM":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


class TokenTable:
    """What constrained decoding must know of a vocabulary beyond llama.cpp's grammar.

    * Control and unknown tokens that do not end generation are never picked: llama.cpp's
      grammar matches a token by its text *with* specials rendered (``<image>``,
      ``<|im_start|>``), answers are detokenized without them, so inside a JSON string
      they would be text the grammar counted and the answer lacks.
    * The grammar decodes UTF-8 loosely (overlong forms, surrogates, lead bytes F5-FF
      pass), and bytes Python cannot decode become U+FFFD in the answer: a string the
      grammar held to ``maxLength`` 8 could come out 11 characters long. So a token is
      allowed only where its bytes, after the incomplete character the answer ends with
      (if any), stay valid, completable UTF-8. Byte tokens and multi-byte pieces make
      such tails; the masks per tail are computed on first use.
    """

    def __init__(self, vocab):
        v = vocab._vocab
        n = vocab.n_vocab
        attrs = llama_cpp.LLAMA_TOKEN_ATTR_CONTROL | llama_cpp.LLAMA_TOKEN_ATTR_UNKNOWN
        self.pieces = [_piece(v, t) for t in range(n)]
        self.unprintable = np.fromiter(
            (bool(llama_cpp.llama_vocab_get_attr(v, t) & attrs)
             and not llama_cpp.llama_vocab_is_eog(v, t) for t in range(n)), dtype=bool, count=n)
        self._masks: dict[bytes, np.ndarray] = {}

    def forbidden(self, tail: bytes) -> np.ndarray:
        """Per token: True where it cannot follow an answer ending in ``tail`` (the bytes
        of an incomplete character, b"" when none)."""
        mask = self._masks.get(tail)
        if mask is None:
            bad = np.fromiter((self.after(tail, piece) is None for piece in self.pieces),
                              dtype=bool, count=len(self.pieces))
            mask = self._masks[tail] = bad | self.unprintable
        return mask

    @staticmethod
    def after(tail: bytes, piece: bytes) -> bytes | None:
        """The incomplete character after ``tail + piece``, or None when those bytes are
        not valid UTF-8 or end in a character no byte can complete."""
        decoder = codecs.getincrementaldecoder("utf-8")()
        try:
            decoder.decode(tail + piece, final=False)
        except UnicodeDecodeError:
            return None
        rest = decoder.getstate()[0]
        return rest if not rest or _completable(rest) else None


def _piece(vocab, token: int) -> bytes:
    """A token's bytes as llama.cpp's grammar sees them (special tokens rendered)."""
    buf = ctypes.create_string_buffer(64)
    n = llama_cpp.llama_token_to_piece(vocab, token, buf, len(buf), 0, True)
    if n < 0:
        buf = ctypes.create_string_buffer(-n)
        n = llama_cpp.llama_token_to_piece(vocab, token, buf, len(buf), 0, True)
    return buf.raw[:max(n, 0)]


def _completable(rest: bytes) -> bool:
    # Only the byte after a lead byte has a narrowed range (E0: A0-BF, ED: 80-9F,
    # F0: 90-BF, F4: 80-8F); any later one is 80-BF. Try a byte from each range.
    for nxt in (0x80, 0x90, 0xA0):
        data = rest + bytes([nxt])
        for _ in range(3):
            try:
                data.decode("utf-8")
                return True
            except UnicodeDecodeError as e:
                if e.end != len(data):  # invalid, not merely unfinished
                    break
            data += b"\x80"
    return False


class GrammarConstraint:
    """llama.cpp's grammar sampler applied to logits we sample ourselves.

    :meth:`mask` returns a copy of the logits with every token the grammar forbids next
    at ``-inf`` (end-of-generation tokens included until the grammar is complete);
    :meth:`accept` advances the grammar by the token chosen. The candidate array covers
    the whole vocabulary and is allocated once: each step copies the logits in, lets
    llama.cpp mark the forbidden ones, and reads them back, all through numpy views.

    Only ever :meth:`accept` a token :meth:`mask` left finite: llama.cpp aborts the
    process on a token its grammar cannot take.
    """

    def __init__(self, vocab, gbnf: str, root: str, table: TokenTable,
                 verbose: bool = False):
        self._vocab = vocab
        self._smpl = None
        if not gbnf.strip():  # llama.cpp reads an empty grammar as "no constraint"
            raise StructuredOutputError("the grammar is empty")
        with capture_llama_log(verbose=verbose) as log:
            smpl = llama_cpp.llama_sampler_init_grammar(vocab._vocab, gbnf.encode("utf-8"),
                                                        root.encode("utf-8"))
        if not smpl:
            raise StructuredOutputError(f"llama.cpp could not parse the grammar "
                                        f"({last_error(log) or 'no message'})")
        self._smpl = smpl
        n = vocab.n_vocab
        self._data = np.zeros(n, dtype=_TOKEN_DATA)
        self._data["id"] = np.arange(n, dtype=np.int32)
        self._logits = self._data["logit"]  # a strided view into the C array
        self._table = table
        self._tail = b""  # an incomplete UTF-8 character the answer ends with
        self._array = llama_cpp.llama_token_data_array(
            data=self._data.ctypes.data_as(llama_cpp.llama_token_data_p), size=n,
            selected=-1, sorted=False)
        self._array_p = ctypes.byref(self._array)

    def mask(self, logits: np.ndarray) -> np.ndarray:
        """``logits`` (``[n_vocab]``) with the tokens the grammar forbids at -inf (a
        float32 copy)."""
        if self._smpl is None:
            raise StructuredOutputError("the grammar constraint is closed")
        self._logits[:] = logits
        self._logits[self._table.forbidden(self._tail)] = -np.inf
        # Samplers may change size/selected/sorted; each step starts from the whole
        # vocabulary in id order (the grammar sampler itself only writes logits).
        a = self._array
        a.size, a.selected, a.sorted = len(self._data), -1, False
        llama_cpp.llama_sampler_apply(self._smpl, self._array_p)
        return self._logits.copy()

    def accept(self, token: int) -> None:
        """Advance the grammar by ``token`` (one :meth:`mask` left finite). An
        end-of-generation token ends the answer and is not fed to the grammar."""
        if self._vocab.is_eog(token):
            return
        llama_cpp.llama_sampler_accept(self._smpl, token)
        self._tail = self._table.after(self._tail, self._table.pieces[token]) or b""

    def close(self) -> None:
        """Free llama.cpp's sampler (idempotent)."""
        if self._smpl is not None:
            llama_cpp.llama_sampler_free(self._smpl)
            self._smpl = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
