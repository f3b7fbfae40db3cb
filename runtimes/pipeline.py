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

One instance is not thread-safe: use one per thread, or guard calls with a lock.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Protocol, Sequence

import numpy as np

from llava_edge.bundle import Bundle, open_bundle
from llava_edge.errors import PromptError
from llava_edge.runtimes.images import DEFAULT_MAX_PIXELS, ImageInput, load_image
from llava_edge.runtimes.preprocess import PreprocessRecipe, preprocess
from llava_edge.runtimes.prompt import Segment, render, split_at_images, user_message
from llava_edge.runtimes.sampling import Sampler, SamplingParams


class VisionBackend(Protocol):
    def encode(self, pixel_values: np.ndarray) -> np.ndarray: ...


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


@dataclass
class Timings:
    """Milliseconds per stage of one request."""

    preprocess_ms: float = 0.0
    vision_ms: float = 0.0
    prefill_ms: float = 0.0
    decode_ms: float = 0.0
    first_token_ms: float = 0.0  # from the start of the request to the first new token
    total_ms: float = 0.0


@dataclass
class Answer:
    text: str
    tokens: list[int]
    n_prompt_tokens: int  # text tokens + image positions
    stop_reason: str  # "eos" | "stop" | "length"
    timings: Timings = field(default_factory=Timings)

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)


class LlavaEdge:
    """A loaded bundle: vision backend + language backend + the bundle's recipe."""

    def __init__(self, bundle: Bundle, vision: VisionBackend, llm: LanguageBackend,
                 max_pixels: int = DEFAULT_MAX_PIXELS):
        self.bundle = bundle
        self.vision = vision
        self.llm = llm
        self.max_pixels = max_pixels
        m = bundle.manifest
        self.recipe = PreprocessRecipe.from_dict(m["preprocess"])
        self.n_image_tokens = m["image"]["n_tokens"]
        self.image_token_id = m["image"]["token_id"]
        self.template = m["prompt"]["chat_template"]
        self.special_tokens = m["prompt"].get("special_tokens", {})
        self.stop = tuple(m["prompt"].get("stop", ()))

    @classmethod
    def load(cls, bundle: str | Path, vision_precision: str | None = None,
             llm_quant: str | None = None, n_threads: int | None = None,
             n_ctx: int | None = None, n_batch: int = 512, n_ubatch: int | None = None,
             n_gpu_layers: int = 0, flash_attn: bool = False, providers: str | None = "auto",
             verify: str = "hash", max_pixels: int = DEFAULT_MAX_PIXELS,
             verbose: bool = False) -> "LlavaEdge":
        """Open and check ``bundle``, then load its vision graph and language model."""
        from llava_edge.runtimes.llama_cpp_lm import LlamaCppLM
        from llava_edge.runtimes.vision_onnx import OnnxVisionEncoder

        b = open_bundle(bundle, verify=verify)
        v = b.vision_entry(vision_precision)
        lm = b.llm_entry(llm_quant)
        vision = OnnxVisionEncoder(b.file(v["file"]), providers=providers, n_threads=n_threads)
        llm = LlamaCppLM(b.file(lm["file"]), n_ctx=n_ctx or b.manifest["prompt"].get("n_ctx", 2048),
                         n_threads=n_threads, n_batch=n_batch, n_ubatch=n_ubatch,
                         n_gpu_layers=n_gpu_layers, flash_attn=flash_attn, verbose=verbose)
        model = cls(b, vision, llm, max_pixels=max_pixels)
        model.vision_precision, model.llm_quant = v["precision"], lm["quant"]
        return model

    # -- images -------------------------------------------------------------------------

    def pixel_values(self, images: Sequence[ImageInput], bgr: bool = False) -> np.ndarray:
        """[n, 3, H, W] float32 for ``images``."""
        return np.stack([preprocess(load_image(img, self.max_pixels, bgr=bgr), self.recipe)
                         for img in images])

    def embed(self, image: ImageInput, bgr: bool = False) -> np.ndarray:
        """Image embeddings [n_image_tokens, n_embd] for one image, as the LLM sees them."""
        return self._encode(self.pixel_values([image], bgr))[0]

    def _encode(self, pixels: np.ndarray) -> np.ndarray:
        embeds = self.vision.encode(pixels)
        if embeds.shape[1] != self.n_image_tokens:
            raise PromptError(f"the vision graph gave {embeds.shape[1]} image tokens, the "
                              f"bundle says {self.n_image_tokens}")
        return embeds

    # -- prompts ------------------------------------------------------------------------

    def prompt_ids(self, prompt: str, n_images: int, system: str | None = None) -> list[int]:
        """Token ids of the rendered chat prompt, one ``<image>`` id per image."""
        messages = ([{"role": "system", "content": system}] if system else []) + \
            [user_message(prompt, n_images)]
        text = render(self.template, messages, self.special_tokens, add_generation_prompt=True)
        ids = self.llm.tokenize(text)
        found = ids.count(self.image_token_id)
        if found != n_images:
            raise PromptError(f"the tokenized prompt has {found} image token(s) for "
                              f"{n_images} image(s)")
        return ids

    # -- answering ----------------------------------------------------------------------

    def ask(self, image: ImageInput | Sequence[ImageInput] | None, prompt: str,
            max_new_tokens: int = 128, temperature: float = 0.0, top_k: int = 0,
            top_p: float = 1.0, repeat_penalty: float = 1.0, seed: int | None = None,
            stop: Sequence[str] = (), system: str | None = None, bgr: bool = False) -> Answer:
        """Answer ``prompt`` about ``image`` (one, several, or none). Greedy by default."""
        run = self._run(image, prompt, max_new_tokens, temperature, top_k, top_p,
                        repeat_penalty, seed, stop, system, bgr)
        for _ in run.tokens():
            pass
        return run.answer()

    def stream(self, image: ImageInput | Sequence[ImageInput] | None, prompt: str,
               max_new_tokens: int = 128, temperature: float = 0.0, top_k: int = 0,
               top_p: float = 1.0, repeat_penalty: float = 1.0, seed: int | None = None,
               stop: Sequence[str] = (), system: str | None = None,
               bgr: bool = False) -> "Stream":
        """Like :meth:`ask`, but iterate over the answer's text as it is decoded::

            s = model.stream(frame, "What do you see?")
            for piece in s:
                print(piece, end="", flush=True)
            s.answer   # the full Answer, once the iteration ends

        Breaking out of the loop stops decoding; the instance stays usable.
        """
        return Stream(self._run(image, prompt, max_new_tokens, temperature, top_k, top_p,
                                repeat_penalty, seed, stop, system, bgr))

    def _run(self, image, prompt, max_new_tokens, temperature, top_k, top_p, repeat_penalty,
             seed, stop, system, bgr) -> "_Run":
        """Check the request and set up its generation (nothing is evaluated yet)."""
        t0 = time.perf_counter()
        images = _as_list(image)
        ids = self.prompt_ids(prompt, len(images), system)
        n_prompt = len(ids) - len(images) + len(images) * self.n_image_tokens
        if n_prompt >= self.llm.n_ctx:
            raise PromptError(f"the prompt needs {n_prompt} positions ({len(images)} image(s) "
                              f"x {self.n_image_tokens} + {len(ids) - len(images)} text tokens)"
                              f", more than the context of {self.llm.n_ctx} (n_ctx)")
        if max_new_tokens < 1:
            raise PromptError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        sampler = Sampler(SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p,
                                         repeat_penalty=repeat_penalty, seed=seed))
        return _Run(self, images, bgr, split_at_images(ids, self.image_token_id), n_prompt,
                    sampler, max_new_tokens, tuple(stop) + self.stop, t0)

    def _prefill(self, segments: list[Segment], embeds: np.ndarray | None) -> None:
        for seg in segments:
            if seg.image_index is None:
                self.llm.eval_tokens(list(seg.tokens))
            else:
                self.llm.eval_embeddings(embeds[seg.image_index])

    def close(self) -> None:
        close = getattr(self.llm, "close", None)
        if close:
            close()

    def __enter__(self) -> "LlavaEdge":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Run:
    """One request's generation: images -> prefill -> tokens, with its timings."""

    def __init__(self, model: LlavaEdge, images: list, bgr: bool, segments: list[Segment],
                 n_prompt: int, sampler: Sampler, max_new_tokens: int, stop: tuple[str, ...],
                 t0: float):
        self.model, self.images, self.bgr, self.segments = model, images, bgr, segments
        self.n_prompt, self.sampler, self.max_new_tokens, self.stop = (n_prompt, sampler,
                                                                      max_new_tokens, stop)
        self.t0 = t0
        self.timings = Timings()
        self.generated: list[int] = []
        self.reason = "length"

    def tokens(self) -> Iterator[int]:
        """Evaluate the prompt, then yield each new token as it is chosen."""
        m, t = self.model, self.timings
        start = time.perf_counter()
        pixels = m.pixel_values(self.images, self.bgr) if self.images else None
        t.preprocess_ms = _ms(start)
        start = time.perf_counter()
        embeds = m._encode(pixels) if self.images else None
        t.vision_ms = _ms(start)
        start = time.perf_counter()
        m.llm.reset()
        m._prefill(self.segments, embeds)
        t.prefill_ms = _ms(start)
        start = time.perf_counter()
        try:
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
                if (len(self.generated) >= self.max_new_tokens
                        or m.llm.n_past >= m.llm.n_ctx):
                    self.reason = "length"
                    return
                m.llm.eval_tokens([token])
        finally:
            t.decode_ms = _ms(start)
            t.total_ms = _ms(self.t0)

    def text(self) -> str:
        text = self.model.llm.detokenize(self.generated)
        for s in self.stop:
            if s in text:
                text = text[: text.index(s)]
        return text

    def answer(self) -> Answer:
        return Answer(text=self.text().strip(), tokens=list(self.generated),
                      n_prompt_tokens=self.n_prompt, stop_reason=self.reason,
                      timings=self.timings)


class Stream:
    """Iterates over an answer's text pieces; ``answer`` holds the result afterwards."""

    def __init__(self, run: _Run):
        self._run = run
        self.answer: Answer | None = None

    def __iter__(self) -> Iterator[str]:
        sent = ""
        try:
            for _ in self._run.tokens():
                text = self._run.text()
                # Hold back a piece that ends inside a multi-byte character, or that could
                # be the start of a stop string.
                if text.endswith("\ufffd") or any(
                        text.endswith(s[:k]) for s in self._run.stop for k in range(1, len(s))):
                    continue
                if len(text) > len(sent) and text.startswith(sent):
                    yield text[len(sent):]
                    sent = text
            text = self._run.text()
            if len(text) > len(sent) and text.startswith(sent):
                yield text[len(sent):]
        finally:
            self.answer = self._run.answer()


def _as_list(image) -> list:
    if image is None:
        return []
    if isinstance(image, (list, tuple)):
        return list(image)
    return [image]


def _ms(t: float) -> float:
    return (time.perf_counter() - t) * 1000.0
