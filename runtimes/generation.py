"""One request's generation: images -> embeddings (cached) -> prefill (reusing the KV
cache's common prefix) -> tokens, with its timings; and ``Stream``, which yields an
answer's text as it is decoded. :class:`llava_edge.runtimes.pipeline.LlavaEdge` makes the
runs and holds the state they share (backends, caches, the lock)."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator

import numpy as np

from llava_edge.errors import Cancelled, StructuredOutputError
from llava_edge.runtimes.embed_cache import pixel_key
from llava_edge.runtimes.image_embeds import encode_images
from llava_edge.runtimes.kv_reuse import position_keys, remaining
from llava_edge.runtimes.prompt import Segment
from llava_edge.runtimes.sampling import Sampler

if TYPE_CHECKING:
    from llava_edge.runtimes.cancel import Cancel
    from llava_edge.runtimes.pipeline import LlavaEdge


@dataclass
class Timings:
    """Milliseconds per stage of one request, and what it reused."""

    preprocess_ms: float = 0.0
    vision_ms: float = 0.0
    prefill_ms: float = 0.0
    decode_ms: float = 0.0
    first_token_ms: float = 0.0  # from the start of the request to the first new token
    total_ms: float = 0.0
    prefill_tokens: int = 0  # prompt positions evaluated by this request
    reused_tokens: int = 0  # prompt positions taken from the KV cache as they were
    images_encoded: int = 0  # images run through the vision graph
    embedding_cache_hits: int = 0  # images whose embeddings came from the cache
    constrain_ms: float = 0.0  # json_schema / choices: masking by the grammar (in decode_ms)
    vision_on: str = ""  # where the vision graph ran: ONNX Runtime's provider (CPU, CUDA, ...)
    llm_on: str = ""     # where the LLM ran: CPU, or GPU (N of M layers)


@dataclass
class Answer:
    text: str
    tokens: list[int]
    n_prompt_tokens: int  # text tokens + image positions
    stop_reason: str  # "eos" | "stop" | "length" | "cancelled" (a Stream that raised Cancelled)
    timings: Timings = field(default_factory=Timings)
    structured: str | None = None  # "json" | "choices": the answer was constrained
    max_new_tokens: int | None = None

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)

    def json(self):
        """The answer parsed as JSON (for ``json_schema=`` answers, a value the schema
        allows). Raises :class:`StructuredOutputError` when a constrained answer did not
        complete (cut at ``max_new_tokens``), or when the text is not JSON."""
        self._check_complete()
        try:
            return json.loads(self.text)
        except ValueError as e:
            raise StructuredOutputError(f"the answer is not JSON ({e})") from None

    def choice(self) -> str:
        """The choice a ``choices=`` answer made (its text); raises
        :class:`StructuredOutputError` when it did not complete."""
        self._check_complete()
        return self.text

    def _check_complete(self) -> None:
        # A constrained answer is complete only when the grammar let it end ("eos"):
        # a cut one may still parse ("12" of "123") and would be wrong.
        if self.structured is None or self.stop_reason == "eos":
            return
        what = "JSON" if self.structured == "json" else "choice"
        if self.max_new_tokens is not None and self.n_tokens >= self.max_new_tokens:
            raise StructuredOutputError(f"the answer was cut at max_new_tokens="
                                        f"{self.max_new_tokens} before the {what} was "
                                        f"complete")
        raise StructuredOutputError(f"the answer ended ({self.stop_reason}: the context "
                                    f"was full or the stream was stopped) before the "
                                    f"{what} was complete")


class _Holder:
    """Something that holds the model's lock; ``superseded`` once another took it over."""

    superseded = False


class _Run(_Holder):
    """One request's generation: images -> prefill -> tokens, with its timings."""

    def __init__(self, model: LlavaEdge, images: list, image_rows: list[int],
                 segments: list[Segment], n_prompt: int, sampler: Sampler, max_new_tokens: int,
                 stop: tuple[str, ...], t0: float, load_ms: float = 0.0,
                 structured: str | None = None, cancel: Cancel | None = None):
        # images: decoded RGB; image_rows: the positions each takes in the sequence
        self.model, self.images, self.image_rows, self.segments = (model, images, image_rows,
                                                                   segments)
        self.n_prompt, self.sampler, self.max_new_tokens, self.stop = (n_prompt, sampler,
                                                                      max_new_tokens, stop)
        self.t0, self.structured, self.cancel = t0, structured, cancel
        self.timings = Timings(preprocess_ms=load_ms, **model.placement())
        self.generated: list[int] = []
        self.reason = "length"
        self.superseded = False  # set when a later request of the same thread took over

    def tokens(self) -> Iterator[int]:
        """Evaluate the prompt, then yield each new token as it is chosen."""
        m, t, rgb, rows = self.model, self.timings, self.images, self.image_rows
        start = time.perf_counter()
        # the layout's tag: the same pixels tiled another way are other rows
        image_keys = [pixel_key(img) + m.layout.cache_tag for img in rgb]
        t.preprocess_ms += _ms(start)
        m._acquire(self)
        start = time.perf_counter()
        try:
            m._set_cancel(self.cancel)
            self._check_cancel()
            keys = position_keys(self.segments, image_keys, rows)
            keep = m._keep_prefix(keys)
            todo = remaining(self.segments, rows, keep)
            embeds = self._embeddings(rgb, image_keys, {s.image_index for s, _ in todo
                                                        if s.image_index is not None})
            start = time.perf_counter()
            try:
                parts = [list(seg.tokens[skip:]) if seg.image_index is None
                         else embeds[seg.image_index][skip:] for seg, skip in todo]
                eval_prompt = getattr(m.llm, "eval_prompt", None)
                if eval_prompt is not None:  # text and images in as few batches as it can
                    self._check_cancel()
                    eval_prompt(parts)
                else:
                    for part in parts:
                        self._check_cancel()
                        if isinstance(part, list):
                            m.llm.eval_tokens(part)
                        else:
                            m.llm.eval_embeddings(part)
            finally:
                # Also after a prefill cut short: a cancelled llama_decode keeps the
                # ubatches it finished, and n_past says how many positions that is.
                m._kv_holds(keys)
            t.prefill_ms = _ms(start)
            t.reused_tokens, t.prefill_tokens = keep, len(keys) - keep
            start = time.perf_counter()
            yield from self._decode()
        except Cancelled:
            self.reason = "cancelled"
            raise
        finally:
            if m._holder is self:  # not superseded: the backends' signal is ours
                m._set_cancel(None)
            m._release(self)
            self.sampler.close()  # the grammar's C state; the answer is decided
            t.constrain_ms = self.sampler.constrain_ms
            t.decode_ms = _ms(start)
            t.total_ms = _ms(self.t0)

    def _embeddings(self, rgb: list, image_keys: list[bytes],
                    needed: set[int]) -> dict[int, np.ndarray]:
        """Embeddings of the images ``needed`` (indices): from the cache, else encoded
        in one batch (and cached)."""
        m, t = self.model, self.timings
        out: dict[int, np.ndarray] = {}
        todo: dict[bytes, list[int]] = {}  # the same picture twice is encoded once
        for i in sorted(needed):
            cached = m.embed_cache.get(image_keys[i])
            if cached is not None:
                out[i] = cached
                t.embedding_cache_hits += 1
            else:
                todo.setdefault(image_keys[i], []).append(i)
        if todo:
            start = time.perf_counter()

            def views_made() -> None:
                nonlocal start
                t.preprocess_ms += _ms(start)
                start = time.perf_counter()

            encoded = encode_images(m.layout, [rgb[idx[0]] for idx in todo.values()],
                                    m._encode, on_views=views_made)
            t.vision_ms = _ms(start)
            t.images_encoded = len(todo)
            for (key, idx), embeds in zip(todo.items(), encoded):
                m.embed_cache.put(key, embeds)
                for i in idx:
                    out[i] = embeds
        return out

    def _decode(self) -> Iterator[int]:
        """Choose tokens from the logits, yield each, evaluate it, until a stop."""
        m, t = self.model, self.timings
        while True:
            token = self.sampler(m.llm.logits(), self.generated)
            if not self.generated:
                t.first_token_ms = _ms(self.t0)
            if m.llm.is_eog(token):
                self.reason = "eos"
                return
            self.generated.append(token)
            if self.stop and any(s in m.llm.detokenize(self.generated) for s in self.stop):
                self.reason = "stop"
                return
            yield token
            if self.superseded:
                return
            m._holder_thread = threading.get_ident()  # a stream may resume elsewhere
            if (len(self.generated) >= self.max_new_tokens
                    or m.llm.n_past >= m.llm.n_ctx):
                self.reason = "length"
                return
            self._check_cancel()
            m.llm.eval_tokens([token])
            m._kv.extend([token])

    def _check_cancel(self) -> None:
        if self.cancel is not None:
            self.cancel.check()

    def text(self) -> str:
        text = self.model.llm.detokenize(self.generated)
        for s in self.stop:
            if s in text:
                text = text[: text.index(s)]
        return text

    def answer(self) -> Answer:
        return Answer(text=self.text().strip(), tokens=list(self.generated),
                      n_prompt_tokens=self.n_prompt, stop_reason=self.reason,
                      timings=self.timings, structured=self.structured,
                      max_new_tokens=self.max_new_tokens)


class Stream:
    """Iterates over an answer's text pieces; ``answer`` holds the result afterwards.

    Stopping early (``break``, ``close()`` on the iterator, an exception) ends decoding
    and frees the model at once; what was evaluated stays reusable. A request's ``cancel``
    signal ends the iteration with :class:`~llava_edge.errors.Cancelled` (``answer``:
    what was decoded so far, stop_reason "cancelled").
    """

    def __init__(self, run: _Run, on_done=None):
        self._run = run
        self._on_done = on_done  # on_done(answer, completed), once the iteration ends
        self.answer: Answer | None = None

    def __iter__(self) -> Iterator[str]:
        sent = ""
        tokens = self._run.tokens()
        completed = False
        try:
            for _ in tokens:
                text = self._run.text()
                # Hold back a piece that ends inside a multi-byte character, or that could
                # be the start of a stop string.
                if text.endswith("\ufffd") or any(
                        text.endswith(s[:k]) for s in self._run.stop for k in range(1, len(s))):
                    continue
                if len(text) > len(sent) and text.startswith(sent):
                    yield text[len(sent):]
                    sent = text
            completed = not self._run.superseded
            text = self._run.text()
            if len(text) > len(sent) and text.startswith(sent):
                yield text[len(sent):]
        finally:
            tokens.close()  # stopped early: release the model now, not at garbage collection
            self.answer = self._run.answer()
            if self._on_done is not None:
                self._on_done(self.answer, completed)


def _ms(t: float) -> float:
    return (time.perf_counter() - t) * 1000.0
