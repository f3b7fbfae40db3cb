"""PyTorch reference backends: the checkpoint in transformers, standing in for either half
of a bundle so the runtime's own preprocessing, prompt rendering and sampling can be run
against it and compared.

    from llava_edge.runtimes.torch_reference import load_reference
    ref = load_reference("bundle/", "ckpt/", vision="torch", llm="torch")
    print(ref.ask("photo.jpg", "What is in the image?").text)

:class:`TorchVisionBackend` implements the pipeline's ``VisionBackend`` (vision tower,
feature layer, select strategy and projector, via ``get_image_features``);
:class:`TorchLanguageBackend` its ``LanguageBackend`` (the language model over a
transformers ``DynamicCache``, with the checkpoint's Hugging Face tokenizer). Both run in
float32, on the CPU unless ``device`` says otherwise: they are references, not a fast path.

torch and transformers are imported only when a class is constructed, so importing this
module costs nothing and works without them; constructing a backend without them raises
:class:`~llava_edge.errors.MissingExtraError`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from llava_edge.errors import LlavaEdgeError, require_extra
from llava_edge.runtimes.images import DEFAULT_MAX_PIXELS
from llava_edge.runtimes.sampling import checked_token_ids

# End-of-turn tokens of common chat templates. llama.cpp counts them as end of generation
# (``llama_vocab_is_eog``) when the vocabulary has them, so the reference does the same.
_END_OF_TURN_TEXTS = ("<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end_of_text|>",
                      "<|endoftext|>", "<end_of_turn>", "<|end|>", "<|return|>")

BACKEND_CHOICES = {"vision": ("auto", "onnx", "tensorrt", "mtmd", "torch"), "llm": ("llama.cpp", "torch")}


class TorchReferenceError(LlavaEdgeError):
    """A reference backend refused an input, or a checkpoint that does not fit the bundle."""


def _require_torch() -> None:
    require_extra("export", "the PyTorch reference backends", "torch", "transformers")


def _load_llava(checkpoint_dir: str | Path, device):
    """The checkpoint as a float32 ``LlavaForConditionalGeneration`` in eval mode."""
    import torch
    from transformers import LlavaForConditionalGeneration
    from transformers.utils import logging as hf_logging

    from llava_edge.export.open_checkpoint import check_supported

    check_supported(checkpoint_dir)  # a typed, one-line error for what is not LLaVA
    hf_logging.disable_progress_bar()
    model = LlavaForConditionalGeneration.from_pretrained(Path(checkpoint_dir),
                                                          dtype=torch.float32)
    return model.to(device).eval()


def _device(device):
    import torch

    return torch.device(device or "cpu")


class TorchVisionBackend:
    """``encode(pixel_values)`` with the checkpoint's vision tower and projector.

    ``model``: an already loaded ``LlavaForConditionalGeneration`` to share with a
    :class:`TorchLanguageBackend` (then ``checkpoint_dir`` is only used for messages).
    """

    def __init__(self, checkpoint_dir: str | Path, device: str | None = None, *, model=None):
        _require_torch()
        self.checkpoint_dir = Path(checkpoint_dir)
        self.device = _device(device)
        self.model = model if model is not None else _load_llava(checkpoint_dir, self.device)

    def encode(self, pixel_values: np.ndarray) -> np.ndarray:
        """[B, 3, H, W] float32 -> [B, n_image_tokens, n_embd] float32."""
        import torch

        x = np.ascontiguousarray(pixel_values, dtype=np.float32)
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or x.shape[1] != 3:
            raise TorchReferenceError(f"pixel_values must have shape [B, 3, H, W], got "
                                      f"{list(x.shape)}")
        with torch.inference_mode():
            feats = self.model.model.get_image_features(
                pixel_values=torch.tensor(x, device=self.device))
        # transformers 5 returns a BaseModelOutputWithPooling whose pooler_output is a list
        # of per-image [n_tokens, n_embd] tensors; older ones a tensor or a tuple.
        feats = getattr(feats, "pooler_output", feats)
        if isinstance(feats, (list, tuple)):
            feats = torch.stack(list(feats))
        return feats.float().cpu().numpy().reshape(x.shape[0], -1, feats.shape[-1])


class TorchLanguageBackend:
    """The checkpoint's language model, evaluated incrementally over a ``DynamicCache``.

    Same contract as :class:`~llava_edge.runtimes.llama_cpp_lm.LlamaCppLM`: inputs go to
    positions ``n_past, n_past + 1, ...``; :meth:`logits` are those of the last position
    evaluated; :meth:`truncate` keeps a prefix of the cache. ``n_ctx`` (default: the
    model's ``max_position_embeddings``) bounds the positions, as llama.cpp's context does.
    ``model``: an already loaded ``LlavaForConditionalGeneration`` to share with a
    :class:`TorchVisionBackend`; the tokenizer always comes from ``checkpoint_dir``.
    """

    def __init__(self, checkpoint_dir: str | Path, n_ctx: int | None = None,
                 device: str | None = None, *, model=None):
        _require_torch()
        from transformers import AutoTokenizer

        self.checkpoint_dir = Path(checkpoint_dir)
        self.device = _device(device)
        self.model = model if model is not None else _load_llava(checkpoint_dir, self.device)
        text_config = self.model.config.text_config
        self.n_ctx = int(n_ctx or text_config.max_position_embeddings)
        if self.n_ctx < 1:
            raise TorchReferenceError(f"n_ctx must be positive, got {self.n_ctx}")
        self.n_embd = int(text_config.hidden_size)
        self.n_vocab = int(self.model.get_output_embeddings().weight.shape[0])
        self.tokenizer = AutoTokenizer.from_pretrained(self.checkpoint_dir)
        self.bos_token = self.tokenizer.bos_token_id
        self.eos_token = self.tokenizer.eos_token_id
        # Whether the tokenizer itself starts a text with BOS (its post-processor).
        probe = self.tokenizer("a", add_special_tokens=True)["input_ids"]
        self.add_bos = self.bos_token is not None and probe[:1] == [self.bos_token]
        self._eog = self._end_of_generation_ids()
        self.reset()

    def _end_of_generation_ids(self) -> frozenset[int]:
        ids = {self.eos_token}
        eos = getattr(self.model.generation_config, "eos_token_id", None)
        ids |= set(eos if isinstance(eos, (list, tuple)) else [eos])
        added = self.tokenizer.get_added_vocab()  # text -> id of special/added tokens
        ids |= {added[t] for t in _END_OF_TURN_TEXTS if t in added}
        return frozenset(i for i in ids if i is not None)

    # -- tokens ---------------------------------------------------------------------

    def tokenize(self, text: str, add_bos: bool | None = None, special: bool = True) -> list[int]:
        """Token ids of ``text``, BOS first when ``add_bos`` (default: as the tokenizer
        does). ``special``: recognise special tokens such as ``<image>`` in the text;
        False tokenizes them as plain text (llama.cpp's ``parse_special=False``)."""
        # BOS is added here rather than by the tokenizer's post-processor, which would
        # also add whatever else its template holds (an EOS, say) that llama.cpp does not.
        ids = self.tokenizer(text, add_special_tokens=False,
                             split_special_tokens=not special)["input_ids"]
        if add_bos is None:
            add_bos = self.add_bos
        if add_bos and self.bos_token is not None:
            ids = [self.bos_token] + ids
        return list(ids)

    def detokenize(self, tokens: list[int], special: bool = False) -> str:
        """The text of ``tokens``; special tokens are rendered only when ``special``."""
        if not tokens:
            return ""
        return self.tokenizer.decode([int(t) for t in tokens], skip_special_tokens=not special,
                                     clean_up_tokenization_spaces=False)

    def is_eog(self, token: int) -> bool:
        """True for EOS, the generation config's EOS ids and end-of-turn tokens."""
        return int(token) in self._eog

    # -- evaluation -----------------------------------------------------------------

    def eval_tokens(self, tokens: list[int]) -> None:
        """Append ``tokens`` to the sequence (positions ``n_past``, ``n_past + 1``, ...)."""
        import torch

        tokens = checked_token_ids(tokens, self.n_vocab, TorchReferenceError)
        if not tokens:
            return
        self._forward(input_ids=torch.tensor([tokens], device=self.device))

    def eval_embeddings(self, embeds: np.ndarray) -> None:
        """Append one position per row of ``embeds`` (``[n, n_embd]``): input embeddings
        that bypass the token embedding table, e.g. projected image features."""
        import torch

        embeds = np.asarray(embeds)
        if embeds.ndim != 2 or embeds.shape[1] != self.n_embd:
            raise TorchReferenceError(f"embeddings must have shape [n, {self.n_embd}], "
                                      f"got {list(embeds.shape)}")
        if not np.issubdtype(embeds.dtype, np.floating) or not np.isfinite(embeds).all():
            raise TorchReferenceError("embeddings must be finite floating point values")
        if embeds.shape[0] == 0:
            return
        # A copy: cached embeddings are read-only arrays, which torch will not wrap.
        x = torch.tensor(embeds, dtype=torch.float32, device=self.device)
        self._forward(inputs_embeds=x[None])

    def _forward(self, **inputs) -> None:
        import torch

        n = next(iter(inputs.values())).shape[1]
        if self.n_past + n > self.n_ctx:
            raise TorchReferenceError(f"context is full: {self.n_past} positions used + {n} "
                                      f"new > n_ctx={self.n_ctx}")
        # Explicit positions: after a truncate the cache, not a counter, says where the
        # sequence ends, and the two must agree for RoPE to match llama.cpp.
        positions = torch.arange(self.n_past, self.n_past + n, device=self.device)[None]
        with torch.inference_mode():
            out = self.model.model.language_model(**inputs, position_ids=positions,
                                                  past_key_values=self._cache, use_cache=True)
            # Only the last position's logits are ever read (as llama.cpp computes them).
            last = out.last_hidden_state[:, -1:]
            self._logits = self.model.lm_head(last)[0, -1].float().cpu().numpy()
        self.n_past += n

    def logits(self) -> np.ndarray:
        """Logits (float32, ``[n_vocab]``) of the last position evaluated."""
        if self._logits is None:
            raise TorchReferenceError("no logits yet: evaluate tokens or embeddings first")
        return self._logits.copy()

    def reset(self) -> None:
        """Forget the sequence: a new, empty cache at position 0."""
        from transformers import DynamicCache

        self._cache = DynamicCache(config=self.model.config.text_config)
        self.n_past = 0
        self._logits = None

    def truncate(self, n: int) -> bool:
        """Keep the first ``n`` positions of the cache; the next input goes to position
        ``n``. As with llama.cpp, the logits of position ``n - 1`` are not kept."""
        if not 0 <= n <= self.n_ctx:
            raise TorchReferenceError(f"cannot truncate to {n} positions (n_ctx={self.n_ctx})")
        if n == 0:
            self.reset()
            return True
        # crop() takes a negative count of positions to drop (transformers 5 refuses the
        # old positive "final length"; the negative form means the same in 4.x).
        excess = self._cache.get_seq_length() - n
        if excess > 0:
            self._cache.crop(-excess)
        self.n_past = min(self.n_past, n)
        self._logits = None
        return True


def load_reference(bundle_dir: str | Path, checkpoint_dir: str | Path, vision: str = "torch",
                   llm: str = "torch", n_threads: int | None = None, *,
                   vision_precision: str | None = None, llm_quant: str | None = None,
                   n_ctx: int | None = None, device: str | None = None,
                   providers: str | None = "auto", verify: str = "hash",
                   max_pixels: int = DEFAULT_MAX_PIXELS, verbose: bool = False,
                   reuse_prefix: bool = True, embed_cache_size: int = 16,
                   max_tiles: int | None = None, **llama_kwargs):
    """A :class:`~llava_edge.runtimes.pipeline.LlavaEdge` on ``bundle_dir`` whose vision
    half is ``vision`` (``"onnx"``: the bundle's graph; ``"torch"``: ``checkpoint_dir``) and
    whose language half is ``llm`` (``"llama.cpp"``: the bundle's GGUF; ``"torch"``).

    The bundle always supplies the preprocessing recipe, chat template and image token,
    so every mix runs the same code around the backends. ``n_threads`` also sets torch's
    (process-wide) thread count when a torch half is used; ``llama_kwargs`` (``n_batch``,
    ``n_ubatch``, ``n_gpu_layers``, ``flash_attn``) go to llama.cpp. The model's
    ``vision_precision`` / ``llm_quant`` say ``"torch"`` for a torch half.
    """
    from llava_edge.bundle import open_bundle
    from llava_edge.runtimes.pipeline import LlavaEdge

    for half, choice in (("vision", vision), ("llm", llm)):
        if choice not in BACKEND_CHOICES[half]:
            raise TorchReferenceError(f"{half} backend {choice!r} is not one of "
                                      f"{', '.join(BACKEND_CHOICES[half])}")
    bundle = open_bundle(bundle_dir, verify=verify)
    if vision == "torch" and bundle.manifest.anyres is not None:
        raise TorchReferenceError(f"{bundle_dir}: the torch vision backend runs LLaVA-1.5 "
                                  "bundles; this one is LLaVA-NeXT (tiled images)")
    n_ctx = n_ctx or bundle.manifest.prompt.n_ctx  # as LlavaEdge.load
    shared = None
    if "torch" in (vision, llm):
        _require_torch()
        import torch

        if n_threads:
            torch.set_num_threads(n_threads)
        shared = _load_llava(checkpoint_dir, _device(device))
        check_fits(bundle, shared.config, checkpoint_dir)

    # The non-torch halves are built as LlavaEdge.load builds them (replicated here:
    # load() offers no way to swap one half).
    if vision == "torch":
        vision_backend, vision_precision = TorchVisionBackend(checkpoint_dir, device,
                                                              model=shared), "torch"
    else:
        from llava_edge.runtimes.vision_backend import choose_vision, open_vision

        choice = choose_vision(bundle.manifest, bundle.path, vision_precision, providers,
                               vision)
        vision_backend, choice = open_vision(bundle, choice, n_threads=n_threads,
                                             fallback=vision == "auto")
        vision_precision = choice.precision
    if llm == "torch":
        llm_backend, llm_quant = TorchLanguageBackend(checkpoint_dir, n_ctx, device,
                                                      model=shared), "torch"
    else:
        from llava_edge.runtimes.llama_cpp_lm import LlamaCppLM

        entry = bundle.llm_entry(llm_quant)
        llm_backend = LlamaCppLM(bundle.file(entry.file), n_ctx=n_ctx, n_threads=n_threads,
                                 verbose=verbose, **llama_kwargs)
        llm_quant = entry.quant
    model = LlavaEdge(bundle, vision_backend, llm_backend, max_pixels=max_pixels,
                      reuse_prefix=reuse_prefix, embed_cache_size=embed_cache_size,
                      max_tiles=max_tiles)
    # LlavaEdge.load sets these two; the CLI and reports read them.
    model.vision_precision, model.llm_quant = vision_precision, llm_quant
    return model


def check_fits(bundle, config, checkpoint_dir) -> None:
    """Refuse a checkpoint that is not the bundle's model: its image token or embedding
    width differ, so the bundle's prompt ids or image rows would mean something else."""
    image = bundle.manifest.image
    ours = (getattr(config, "image_token_index", None) or getattr(config, "image_token_id", None),
            config.text_config.hidden_size)
    theirs = (image.token_id, image.n_embd)
    if ours != theirs:
        raise TorchReferenceError(
            f"{checkpoint_dir} does not fit the bundle {bundle.path}: image token id and "
            f"embedding width are {ours[0]} and {ours[1]}, the bundle's {theirs[0]} and "
            f"{theirs[1]}")
