"""``LlavaEdge``: a bundle loaded and ready to answer questions about images.

    from llava_edge import LlavaEdge
    model = LlavaEdge.load("bundle/")
    answer = model.ask("photo.jpg", "What is in the image?")
    print(answer.text, answer.timings)

One pipeline, no torch: preprocess (numpy + Pillow) -> vision graph (ONNX Runtime) ->
image embeddings -> llama.cpp with the embeddings injected where the ``<image>`` token
stands -> tokens. The vision and language backends are small interfaces
(``encode(pixel_values)``; ``tokenize / eval_tokens / eval_embeddings / logits``), so a
TensorRT engine or a PyTorch reference can stand in for either.

Reuse (on by default, token-identical under greedy decoding): what the KV cache already
holds is kept where the next request starts the same way (:mod:`.kv_reuse`) -- the
system prompt, an image and the text before it, a chat's history -- and image
embeddings are cached by pixel hash (:mod:`.embed_cache`). ``Answer.timings`` says what
was reused. ``load(..., reuse_prefix=False, embed_cache_size=0)`` turns both off.

Thread safety: one instance may be shared by threads. Requests run one at a time under
an internal lock, held from a request's first evaluation to its end (a stream holds it
until it is exhausted, broken out of or closed). A request started by a thread whose own
earlier stream of this instance is still open ends that stream first.

Cancellation: ``ask``, ``stream``, ``ask_messages`` and ``stream_messages`` take
``cancel=``, a :class:`~llava_edge.runtimes.cancel.Cancel` any thread may set. The
request then raises :class:`~llava_edge.errors.Cancelled` within one vision-graph node
(ONNX Runtime's ``terminate``), one llama.cpp ubatch (its abort callback) or one token;
the KV cache keeps what was evaluated, the prefix bookkeeping agrees with it, and the
next request is answered as on a fresh model.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Protocol, Sequence

import numpy as np

from llava_edge.bundle import Bundle, open_bundle
from llava_edge.cpu_features import vision_graph_warning
from llava_edge.errors import PromptError
from llava_edge.manifest import VisionGraph
from llava_edge.runtimes.embed_cache import DEFAULT_EMBED_CACHE_MB, EmbeddingCache
from llava_edge.runtimes.generation import Answer, Stream, Timings, _Holder, _Run
from llava_edge.runtimes.image_embeds import encode_images, image_layout
from llava_edge.runtimes.images import DEFAULT_MAX_PIXELS, ImageInput, load_image
from llava_edge.runtimes.kv_reuse import KVPrefix
from llava_edge.runtimes.prompt import render, split_at_images, user_message
from llava_edge.runtimes.sampling import Sampler, SamplingParams
from llava_edge.runtimes.structured import constraint_for

if TYPE_CHECKING:
    from llava_edge.runtimes.cancel import Cancel

__all__ = ["Answer", "LanguageBackend", "LlavaEdge", "Stream", "Timings", "VisionBackend"]

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from llava_edge.runtimes.chat import ChatSession
    from llava_edge.runtimes.watch import WatchRecord


class VisionBackend(Protocol):
    def encode(self, pixel_values: np.ndarray) -> np.ndarray: ...
    # Optional: a ``cancel`` attribute, set to the running request's Cancel (or None),
    # whose signal stops ``encode``; else the signal is seen between stages.


class LanguageBackend(Protocol):
    n_ctx: int
    n_past: int

    def tokenize(self, text: str, add_bos: bool | None = None,
                 special: bool = True) -> list[int]: ...
    def detokenize(self, tokens: list[int], special: bool = False) -> str: ...
    def is_eog(self, token: int) -> bool: ...
    def eval_tokens(self, tokens: list[int]) -> None: ...
    def eval_embeddings(self, embeds: np.ndarray) -> None: ...
    def logits(self) -> np.ndarray: ...
    def reset(self) -> None: ...
    # Optional: ``eval_prompt(parts)`` evaluates token lists and embeddings in order, in
    # as few batches as it can (else each part is evaluated on its own).
    # Optional: ``truncate(n) -> bool`` keeps the first n positions (prefix reuse);
    # a backend without it is reset before every request. Optional: a ``cancel``
    # attribute, as for the vision backend; after a stopped evaluation ``n_past`` must
    # count the positions the backend really holds.


class LlavaEdge:
    """A loaded bundle: vision backend + language backend + the bundle's recipe."""

    def __init__(self, bundle: Bundle, vision: VisionBackend, llm: LanguageBackend,
                 max_pixels: int = DEFAULT_MAX_PIXELS, reuse_prefix: bool = True,
                 embed_cache_size: int = 16, max_tiles: int | None = None,
                 embed_cache_mb: float | None = DEFAULT_EMBED_CACHE_MB):
        self.bundle = bundle
        self.vision = vision
        self.llm = llm
        self.max_pixels = max_pixels
        m = bundle.manifest
        self.recipe = m.preprocess
        # rows per view from the vision graph; an image takes layout.n_positions(image)
        self.n_image_tokens = m.image.n_tokens
        self.layout = image_layout(
            m, bundle.file(m.anyres.newline_file) if m.anyres else None, max_tiles)
        self.image_token_id = m.image.token_id
        self.template = m.prompt.chat_template
        self.special_tokens = m.prompt.special_tokens
        self.stop = m.prompt.stop
        # Reuse (module docstring); both may be changed between requests.
        self.reuse_prefix = reuse_prefix
        self.embed_cache = EmbeddingCache(
            embed_cache_size,
            None if embed_cache_mb is None else int(embed_cache_mb * 1024 * 1024))
        self._kv = KVPrefix()
        self._lock = threading.Lock()
        self._holder: _Holder | None = None  # the request holding the lock
        self.settings = None  # RuntimeSettings used by load(); tune_note: which profile
        self.vision_choice = None  # VisionChoice made by load(): which backend and why
        self.tune_note: str | None = None
        self._holder_thread: int | None = None

    @classmethod
    def load(cls, bundle: str | Path, vision_precision: str | None = None,
             llm_quant: str | None = None, n_threads: int | None = None,
             n_ctx: int | None = None, n_batch: int = 512, n_ubatch: int | None = None,
             n_gpu_layers: int | str | None = None, flash_attn: bool | None = None,
             repack: bool | None = None, providers: str | None = None,
             verify: str = "hash", max_pixels: int = DEFAULT_MAX_PIXELS,
             verbose: bool = False, reuse_prefix: bool = True,
             embed_cache_size: int = 16, max_tiles: int | None = None,
             embed_cache_mb: float | None = DEFAULT_EMBED_CACHE_MB,
             n_threads_batch: int | None = None, vision_threads: int | None = None,
             kv_type: str | None = None, tune: bool | str | Path = True,
             vision_backend: str = "auto") -> "LlavaEdge":
        """Open and check ``bundle``, then load its vision graph and language model.

        ``tune``: use the profile ``llava-edge tune`` made for this bundle on this machine
        (True: look it up; a path: that profile file; False: none). Its settings fill in
        every one of ``vision_precision``, ``llm_quant``, ``vision_threads``,
        ``n_threads``, ``n_threads_batch``, ``repack``, ``flash_attn``, ``n_ubatch``,
        ``kv_type``, ``n_gpu_layers`` and ``providers`` left at None (defaults: every
        layer on the GPU when llama.cpp has one, else none; providers "auto"); :attr:`settings` says what was used and :attr:`tune_note` why.
        ``n_threads``: every stage's threads (default: all cores); ``n_threads_batch``
        (llama.cpp's prefill) and ``vision_threads`` (ONNX Runtime) override it per stage;
        ``repack``: llama.cpp's load-time weight repacking (default on: faster decode;
        slower prefill and more memory on some CPUs, see :class:`LlamaCppLM`);
        ``flash_attn``: default off; ``kv_type``: the KV cache's type, ``f16`` (default)
        or ``q8_0`` (half the cache; needs flash attention);
        ``reuse_prefix``: keep the KV cache's common prefix between requests;
        ``embed_cache_size``: images whose embeddings are kept (0: none);
        ``embed_cache_mb``: and at most this many MiB of them (None: no byte bound), as
        an image's embeddings take from ~2 to ~47 MB depending on the model and tiling;
        ``max_tiles``: LLaVA-NeXT bundles only, at most this many views per image (the
        base view included; None: as transformers tiles), fewer image positions and a
        faster first token for less detail.
        ``vision_backend``: ``auto`` (a TensorRT engine of the bundle that matches this
        machine, else ONNX Runtime: the fp16 graph on a GPU provider, the default graph on
        the CPU; see :mod:`~llava_edge.runtimes.vision_backend`), ``onnx``,
        ``tensorrt`` (an engine, or an error saying why none can run) or ``mtmd`` (the
        mmproj through llama.cpp, where its parity passed at export: SigLIP towers);
        :attr:`vision_choice` says what was picked and why.
        """
        from llava_edge.runtimes.llama_cpp_lm import LlamaCppLM
        from llava_edge.runtimes.vision_backend import choose_vision, open_vision

        from llava_edge.runtimes.tune.profile import RuntimeSettings, find_profile, resolve

        b = open_bundle(bundle, verify=verify)
        explicit = RuntimeSettings(
            vision_precision=vision_precision, llm_quant=llm_quant,
            vision_threads=vision_threads or n_threads, n_threads=n_threads,
            n_threads_batch=n_threads_batch or n_threads, repack=repack,
            flash_attn=flash_attn, n_ubatch=n_ubatch, kv_type=kv_type,
            n_gpu_layers=n_gpu_layers, providers=providers)
        profile, note = find_profile(b.path, tune)
        s = resolve(explicit, profile)
        choice = choose_vision(b.manifest, b.path, s.vision_precision, s.providers,
                               vision_backend)
        lm = b.llm_entry(s.llm_quant)
        if choice.backend == "onnx":
            _warn_once_if_unsafe(b.file(choice.file), b.vision_entry(choice.precision))
        vision, choice = open_vision(b, choice, n_threads=s.vision_threads,
                                     fallback=vision_backend == "auto")
        logger.info("vision: %s %s on %s (%s)%s", choice.backend, choice.file,
                    choice.placement, choice.reason,
                    "".join(f"; not {p}" for p in choice.passed_over))
        llm = LlamaCppLM(b.file(lm.file), n_ctx=n_ctx or b.manifest.prompt.n_ctx,
                         n_threads=s.n_threads, n_threads_batch=s.n_threads_batch,
                         n_batch=n_batch, n_ubatch=s.n_ubatch, n_gpu_layers=s.n_gpu_layers,
                         flash_attn=s.flash_attn, repack=s.repack, kv_type=s.kv_type,
                         verbose=verbose)
        model = cls(b, vision, llm, max_pixels=max_pixels, reuse_prefix=reuse_prefix,
                    embed_cache_size=embed_cache_size, max_tiles=max_tiles,
                    embed_cache_mb=embed_cache_mb)
        model.vision_precision, model.llm_quant = choice.precision, lm.quant
        model.vision_choice = choice
        model.settings = replace(s, vision_precision=choice.precision, llm_quant=lm.quant)
        model.tune_note = note
        return model

    def placement(self) -> dict[str, str]:
        """Where each stage runs: ``{"vision_on": ..., "llm_on": ...}`` (backends that
        cannot say give "")."""
        providers = getattr(self.vision, "providers", None) or []
        return {"vision_on": getattr(self.vision, "placement", None)
                or (providers[0].removesuffix("ExecutionProvider") if providers else ""),
                "llm_on": getattr(self.llm, "placement", "")}

    # -- images -------------------------------------------------------------------------

    def pixel_values(self, images: Sequence[ImageInput], bgr: bool = False) -> np.ndarray:
        """The views of ``images`` as the vision graph takes them, [n_views, 3, H, W]
        float32: one per image, or (LLaVA-NeXT) each image's tiles, image after image."""
        return np.concatenate([self.layout.views(load_image(img, self.max_pixels, bgr=bgr))
                               for img in images])

    def embed(self, image: ImageInput, bgr: bool = False) -> np.ndarray:
        """The rows one image takes in the LLM's sequence, [n_positions, n_embd], as they
        are injected (LLaVA-NeXT: the tiles' features packed, newlines included)."""
        rgb = load_image(image, self.max_pixels, bgr=bgr)
        return encode_images(self.layout, [rgb], self._encode)[0]

    def _encode(self, pixels: np.ndarray) -> np.ndarray:
        embeds = self.vision.encode(pixels)
        if embeds.shape[1] != self.n_image_tokens:
            raise PromptError(f"the vision graph gave {embeds.shape[1]} rows per view, the "
                              f"bundle says {self.n_image_tokens}")
        return embeds

    # -- prompts ------------------------------------------------------------------------

    def prompt_ids(self, prompt: str, n_images: int, system: str | None = None) -> list[int]:
        """Token ids of the rendered chat prompt, one ``<image>`` id per image."""
        messages = ([{"role": "system", "content": system}] if system else []) + \
            [user_message(prompt, n_images)]
        return self.messages_ids(messages, n_images)

    def messages_ids(self, messages: list[dict], n_images: int) -> list[int]:
        """Token ids of a whole chat (Hugging Face message shape, see
        :mod:`llava_edge.templates`) rendered with a generation prompt."""
        if not messages or not all(isinstance(m, dict) and "role" in m and "content" in m
                                   for m in messages):
            raise PromptError("messages must be a non-empty list of {'role', 'content'} "
                              "dicts")
        text = render(self.template, messages, self.special_tokens, add_generation_prompt=True)
        ids = self.llm.tokenize(text)
        found = ids.count(self.image_token_id)
        if found != n_images:
            raise PromptError(f"the tokenized chat has {found} image token(s) for "
                              f"{n_images} image(s)")
        return ids

    # -- answering ----------------------------------------------------------------------

    def ask(self, image: ImageInput | Sequence[ImageInput] | None, prompt: str,
            max_new_tokens: int = 128, temperature: float = 0.0, top_k: int = 0,
            top_p: float = 1.0, repeat_penalty: float = 1.0, seed: int | None = None,
            stop: Sequence[str] = (), system: str | None = None, bgr: bool = False,
            json_schema: dict | str | bool | None = None,
            choices: Sequence[str] | None = None, cancel: Cancel | None = None) -> Answer:
        """Answer ``prompt`` about ``image`` (one, several, or none). Greedy by default.

        ``json_schema`` (a dict, its JSON text, or True for any object): the answer is
        JSON the schema allows, read with ``answer.json()``; ``choices``: the answer's
        text is exactly one of them. Either constrains decoding with a grammar (see
        :mod:`llava_edge.runtimes.structured`: what a schema may hold, why stop strings
        do not combine with them); :class:`StructuredOutputError` for a schema or choices
        that cannot be used. ``cancel``: a signal that stops the request with
        :class:`~llava_edge.errors.Cancelled` (module docstring)."""
        run = self._run(image, prompt, max_new_tokens, temperature, top_k, top_p,
                        repeat_penalty, seed, stop, system, bgr, json_schema, choices, cancel)
        for _ in run.tokens():
            pass
        return run.answer()

    def stream(self, image: ImageInput | Sequence[ImageInput] | None, prompt: str,
               max_new_tokens: int = 128, temperature: float = 0.0, top_k: int = 0,
               top_p: float = 1.0, repeat_penalty: float = 1.0, seed: int | None = None,
               stop: Sequence[str] = (), system: str | None = None,
               bgr: bool = False, json_schema: dict | str | bool | None = None,
               choices: Sequence[str] | None = None, cancel: Cancel | None = None) -> "Stream":
        """Like :meth:`ask`, but iterate over the answer's text as it is decoded::

            s = model.stream(frame, "What do you see?")
            for piece in s:
                print(piece, end="", flush=True)
            s.answer   # the full Answer, once the iteration ends

        Breaking out of the loop stops decoding; the instance stays usable.
        """
        return Stream(self._run(image, prompt, max_new_tokens, temperature, top_k, top_p,
                                repeat_penalty, seed, stop, system, bgr, json_schema, choices,
                                cancel))

    def _run(self, image, prompt, max_new_tokens, temperature, top_k, top_p, repeat_penalty,
             seed, stop, system, bgr, json_schema=None, choices=None, cancel=None) -> "_Run":
        """Check the request and set up its generation (nothing is evaluated yet)."""
        t0 = time.perf_counter()
        images = _as_list(image)
        ids = self.prompt_ids(prompt, len(images), system)
        return self._start(ids, images, max_new_tokens, temperature, top_k, top_p,
                           repeat_penalty, seed, stop, bgr, t0, json_schema, choices, cancel)

    def _start(self, ids, images, max_new_tokens, temperature, top_k, top_p, repeat_penalty,
               seed, stop, bgr, t0, json_schema=None, choices=None, cancel=None) -> "_Run":
        # Decoded now (outside the lock): each image's positions depend on its size.
        start = time.perf_counter()
        rgb = [load_image(img, self.max_pixels, bgr=bgr) for img in images]
        rows = [self.layout.n_positions(img) for img in rgb]
        load_ms = (time.perf_counter() - start) * 1000.0
        n_text = len(ids) - len(images)
        n_prompt = n_text + sum(rows)
        if n_prompt >= self.llm.n_ctx:
            shown = (f"x {rows[0]}" if len(set(rows)) == 1
                     else f"of {', '.join(map(str, rows))} positions")
            raise PromptError(f"the prompt needs {n_prompt} positions ({len(images)} image(s) "
                              f"{shown} + {n_text} text tokens), more than the context of "
                              f"{self.llm.n_ctx} (n_ctx)")
        if max_new_tokens < 1:
            raise PromptError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p,
                                repeat_penalty=repeat_penalty, seed=seed)
        # Last: the grammar holds C memory, and every other check has passed. Under a
        # grammar no stop string applies (it ends the answer; a stop string could cut
        # a JSON string that contains it), see llava_edge.runtimes.structured.
        constraint, structured = constraint_for(self.llm, json_schema, choices, stop)
        stops = () if structured else tuple(stop) + self.stop
        return _Run(self, rgb, rows, split_at_images(ids, self.image_token_id), n_prompt,
                    Sampler(params, constraint), max_new_tokens, stops, t0, load_ms,
                    structured=structured, cancel=cancel)

    def ask_messages(self, messages: list[dict],
                     images: ImageInput | Sequence[ImageInput] | None = None,
                     max_new_tokens: int = 128, temperature: float = 0.0, top_k: int = 0,
                     top_p: float = 1.0, repeat_penalty: float = 1.0, seed: int | None = None,
                     stop: Sequence[str] = (), bgr: bool = False,
                     json_schema: dict | str | bool | None = None,
                     choices: Sequence[str] | None = None,
                     cancel: Cancel | None = None) -> Answer:
        """Answer a whole chat: ``messages`` in the Hugging Face shape (system, user and
        assistant turns; user content with ``{"type": "image"}`` parts or ``<image>``
        markers), ``images`` in the order they appear. Stateless: the same call gives the
        same answer whatever came before (reuse only saves time). ``json_schema``,
        ``choices`` and ``cancel``: as in :meth:`ask`."""
        stream = self.stream_messages(messages, images, max_new_tokens, temperature, top_k,
                                      top_p, repeat_penalty, seed, stop, bgr,
                                      json_schema=json_schema, choices=choices, cancel=cancel)
        for _ in stream:
            pass
        return stream.answer

    def stream_messages(self, messages: list[dict],
                        images: ImageInput | Sequence[ImageInput] | None = None,
                        max_new_tokens: int = 128, temperature: float = 0.0, top_k: int = 0,
                        top_p: float = 1.0, repeat_penalty: float = 1.0,
                        seed: int | None = None, stop: Sequence[str] = (), bgr: bool = False,
                        on_done=None, json_schema: dict | str | bool | None = None,
                        choices: Sequence[str] | None = None,
                        cancel: Cancel | None = None) -> "Stream":
        """:meth:`ask_messages`, streamed (see :meth:`stream`). ``on_done(answer,
        completed)`` is called when the stream ends, ``completed`` False if it was
        stopped early."""
        t0 = time.perf_counter()
        images = _as_list(images)
        ids = self.messages_ids(messages, len(images))
        return Stream(self._start(ids, images, max_new_tokens, temperature, top_k, top_p,
                                  repeat_penalty, seed, stop, bgr, t0, json_schema, choices,
                                  cancel), on_done=on_done)

    def chat(self, system: str | None = None, **defaults) -> "ChatSession":
        """A multi-turn :class:`~llava_edge.runtimes.chat.ChatSession` on this model;
        ``defaults`` are sampling keyword arguments for every turn (max_new_tokens, ...)."""
        from llava_edge.runtimes.chat import ChatSession

        return ChatSession(self, system=system, **defaults)

    def watch(self, sources, questions: str | Sequence[str], *, fps: float | None = None,
              realtime: bool | None = None, max_fps: float | None = None, loop: bool = False,
              **options) -> Iterator["WatchRecord"]:
        """Ask ``questions`` about the newest frame of ``sources`` (a camera index, video
        file, stream URL, folder, glob or :class:`FrameSource`; one or a list), round after
        round, yielding a :class:`~llava_edge.runtimes.watch.WatchRecord` per answer::

            for record in model.watch(0, "Is the path clear?", duration_s=60,
                                      choices=["yes", "no"]):
                print(record.value, f"{record.age_s:.2f} s old")

        ``fps``, ``realtime``, ``max_fps``, ``loop`` open the sources given by name (see
        :class:`~llava_edge.runtimes.frame_source.FrameSource`); ``options`` go to
        :func:`~llava_edge.runtimes.watch.watch` (every_s, frames, duration_s,
        max_rounds, summary) and on to :meth:`ask` (max_new_tokens, sampling, system,
        json_schema, choices). Sources opened here are closed when the iteration ends."""
        from llava_edge.runtimes.frame_source import FrameSource
        from llava_edge.runtimes.watch import watch

        given = _as_list(sources)
        opened = [s if isinstance(s, FrameSource) else
                  FrameSource(s, fps=fps, realtime=realtime, max_fps=max_fps, loop=loop)
                  for s in given]
        try:
            yield from watch(self, opened, [questions] if isinstance(questions, str)
                             else list(questions), **options)
        finally:
            for s, g in zip(opened, given):
                if s is not g:
                    s.close()

    # -- reuse and locking --------------------------------------------------------------

    def _keep_prefix(self, keys: list) -> int:
        """Drop what the next request (``keys``, one per position) cannot reuse from the
        KV cache; return how many positions stay."""
        truncate = getattr(self.llm, "truncate", None)
        keep = self._kv.reusable(keys, self.llm.n_past) if self.reuse_prefix else 0
        if not (keep and truncate and truncate(keep)):
            self.llm.reset()
            keep = 0
        self._kv.truncate(keep)
        return keep

    def _kv_holds(self, keys: list) -> None:
        """The KV cache holds the first ``llm.n_past`` positions of the request with
        ``keys``: make the prefix bookkeeping say so."""
        n = min(self.llm.n_past, len(keys))
        self._kv.truncate(n)
        self._kv.extend(keys[len(self._kv):n])

    def _set_cancel(self, cancel: "Cancel | None") -> None:
        """Hand the running request's signal to the backends that can be stopped."""
        for backend in (self.vision, self.llm):
            if hasattr(backend, "cancel"):
                backend.cancel = cancel

    def clear_cache(self) -> None:
        """Forget the KV cache and the cached image embeddings (answers do not change;
        the next request is evaluated from scratch)."""
        holder = _Holder()
        self._acquire(holder)
        try:
            self.llm.reset()
            self._kv.clear()
            self.embed_cache.clear()
        finally:
            self._release(holder)

    def _acquire(self, run: "_Holder") -> None:
        me = threading.get_ident()
        holder = self._holder
        if holder is not None and self._holder_thread == me:
            # This thread's own stream is suspended between two pieces: waiting for it
            # would deadlock. It is ended (it stops at its next resume without touching the
            # model) and the lock passes to the new request.
            holder.superseded = True
            self._holder = run
            return
        self._lock.acquire()
        self._holder, self._holder_thread = run, me

    def _release(self, run: "_Holder") -> None:
        if self._holder is run:
            self._holder = self._holder_thread = None
            self._lock.release()

    def close(self) -> None:
        for backend in (self.llm, self.vision):
            close = getattr(backend, "close", None)
            if close:
                close()
        self._kv.clear()
        self.embed_cache.clear()

    def __enter__(self) -> "LlavaEdge":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_warned: set[str] = set()  # graphs already warned about in this process


def _warn_once_if_unsafe(path: Path, entry: VisionGraph) -> None:
    """Log (once per graph and process) when the vision graph's int8 arithmetic can
    saturate on this CPU (bundles exported before llava-edge used 7-bit weights)."""
    message = vision_graph_warning(entry)
    key = str(Path(path).resolve())
    if message and key not in _warned:
        _warned.add(key)
        logger.warning("%s: %s", path.parent, message)


def _as_list(image) -> list:
    if image is None:
        return []
    if isinstance(image, (list, tuple)):
        return list(image)
    return [image]
