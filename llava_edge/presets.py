"""Model presets: the shapes of the checkpoints `llava-edge init` can build offline.

This module only describes sizes; it imports neither torch nor transformers. Building a
checkpoint from a preset lives in :mod:`llava_edge.trainer.init_checkpoint`.

Every preset is built with random weights (``random_init: true`` in its config). The
benchmark presets copy the dimensions of real models so that latency, memory and file
sizes are realistic, but their answers are noise until trained.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from llava_edge.errors import LlavaEdgeError


@dataclass(frozen=True)
class VisionSpec:
    """A CLIP or SigLIP vision tower."""

    kind: Literal["clip", "siglip"]
    image_size: int
    patch_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int

    @property
    def n_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


@dataclass(frozen=True)
class TextSpec:
    """A decoder-only language model (Llama, Mistral or Qwen2 architecture)."""

    arch: Literal["llama", "mistral", "qwen2"]
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    max_position_embeddings: int
    rope_theta: float
    rms_norm_eps: float
    tie_word_embeddings: bool = False
    # Rows of the embedding matrix. None: the tokenizer's length rounded up to a multiple
    # of 64 (what the llava-hf conversion does: 32002 tokens -> 32064 rows).
    vocab_size: int | None = None


@dataclass(frozen=True)
class TokenizerSpec:
    """How the preset's tokenizer is trained locally."""

    kind: Literal["sentencepiece", "bpe"]
    vocab_size: int  # pieces learned from the corpus (a soft limit)
    template: Literal["vicuna_v1", "chatml", "mistral_instruct", "chatml_direct"]
    # Whether encoding a text puts BOS first. Llama's and Mistral's tokenizers do; Yi's
    # (LLaVA-1.6-34B's LLM, a SentencePiece vocab with ChatML tokens) does not.
    add_bos: bool = True

    @property
    def chatml(self) -> bool:
        """Whether the template needs the ChatML tokens ``<|im_start|>`` / ``<|im_end|>``
        (a SentencePiece vocab then carries them as special tokens, as Yi's does)."""
        return self.template.startswith("chatml")


@dataclass(frozen=True)
class PresetSpec:
    name: str
    description: str
    vision: VisionSpec
    text: TextSpec
    tokenizer: TokenizerSpec
    vision_feature_layer: int = -2
    vision_feature_select_strategy: Literal["default", "full"] = "default"
    # LLaVA-NeXT (LLaVA-1.6) "anyres" tiling: the grid resolutions an image may be fitted
    # into, each (height, width) as transformers reads ``image_grid_pinpoints``, multiples
    # of the tower's image size. Empty: a LLaVA-1.5 model (one square view per image).
    image_grid_pinpoints: tuple[tuple[int, int], ...] = ()
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    large: bool = False  # built in shards, tested only in the slow suite
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def is_next(self) -> bool:
        """A LLaVA-NeXT model (``LlavaNextForConditionalGeneration``)."""
        return bool(self.image_grid_pinpoints)

    @property
    def n_image_tokens(self) -> int:
        """Image tokens per image that the LLM sees; for LLaVA-NeXT, per view (base view
        or tile): an image takes several views plus one newline per grid row, a count that
        depends on its size (``llava_edge.runtimes.anyres.AnyresPlan``)."""
        return image_tokens(
            self.vision.kind, self.vision.image_size, self.vision.patch_size,
            self.vision_feature_select_strategy,
        )


def image_tokens(kind: str, image_size: int, patch_size: int, select_strategy: str) -> int:
    """Image tokens per image: patches, plus CLIP's CLS token when the strategy keeps it.

    transformers' ``default`` strategy drops the tower's first token whatever it is: CLIP's
    CLS, but a real patch in SigLIP (as original LLaVA's ``patch`` select feature does;
    a converted checkpoint can carry it)."""
    n = (image_size // patch_size) ** 2
    has_cls = kind == "clip"
    if select_strategy == "full" and has_cls:
        n += 1
    if select_strategy == "default" and not has_cls:
        n -= 1
    return n


_LLAMA_TOKENIZER = TokenizerSpec("sentencepiece", vocab_size=2000, template="vicuna_v1")
_QWEN2_TOKENIZER = TokenizerSpec("bpe", vocab_size=2000, template="chatml")

# CLIP ViT-L/14 at 336 px, the LLaVA-1.5 vision tower.
_CLIP_L_336 = VisionSpec("clip", image_size=336, patch_size=14, hidden_size=1024,
                         intermediate_size=4096, num_layers=24, num_heads=16)

_TINY_CLIP = VisionSpec("clip", image_size=64, patch_size=16, hidden_size=128,
                        intermediate_size=512, num_layers=4, num_heads=4)
_TINY_LLAMA = TextSpec("llama", hidden_size=256, intermediate_size=512, num_layers=4,
                       num_heads=4, num_kv_heads=2, max_position_embeddings=1024,
                       rope_theta=10000.0, rms_norm_eps=1e-5)
_TINY_SIGLIP = VisionSpec("siglip", image_size=64, patch_size=16, hidden_size=128,
                          intermediate_size=512, num_layers=4, num_heads=4)
_TINY_QWEN2 = TextSpec("qwen2", hidden_size=256, intermediate_size=512, num_layers=4,
                       num_heads=4, num_kv_heads=2, max_position_embeddings=1024,
                       rope_theta=1_000_000.0, rms_norm_eps=1e-6, tie_word_embeddings=True)
# 1x2, 2x1, 2x2, 1x3 and 3x1 grids of 64-pixel tiles, as LLaVA-1.6's list is of 336-pixel
# ones (plus a 2x2, which 1.6 has too).
_TINY_PINPOINTS = ((64, 128), (128, 64), (128, 128), (64, 192), (192, 64))

PRESETS: dict[str, PresetSpec] = {
    "tiny": PresetSpec(
        name="tiny",
        description="Llama LLM + CLIP tower, a few MB: tests and the demo",
        vision=_TINY_CLIP,
        text=_TINY_LLAMA,
        tokenizer=_LLAMA_TOKENIZER,
    ),
    "tiny-qwen2": PresetSpec(
        name="tiny-qwen2",
        description="Qwen2 LLM + SigLIP tower, byte-level BPE, ChatML (llava-interleave shape)",
        vision=_TINY_SIGLIP,
        text=_TINY_QWEN2,
        tokenizer=_QWEN2_TOKENIZER,
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
    ),
    "tiny-next": PresetSpec(
        name="tiny-next",
        description="LLaVA-NeXT (anyres tiles) on the tiny Llama + CLIP: tests",
        vision=_TINY_CLIP,
        text=_TINY_LLAMA,
        tokenizer=_LLAMA_TOKENIZER,
        image_grid_pinpoints=_TINY_PINPOINTS,
    ),
    "tiny-next-qwen2": PresetSpec(
        name="tiny-next-qwen2",
        description="LLaVA-NeXT tiles on tiny-qwen2's Qwen2 + SigLIP (ChatML): tests",
        vision=_TINY_SIGLIP,
        text=_TINY_QWEN2,
        tokenizer=_QWEN2_TOKENIZER,
        # SigLIP has no CLS token: transformers' "default" strategy would drop a patch and
        # leave a grid that is not square, which LLaVA-NeXT's unpad cannot reshape.
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        image_grid_pinpoints=_TINY_PINPOINTS,
    ),
    "tiny-next-yi": PresetSpec(
        name="tiny-next-yi",
        description="LLaVA-NeXT tiles, Llama-architecture LLM with a SentencePiece vocab, "
                    "ChatML and no BOS, as LLaVA-1.6-34B's Yi is: tests",
        vision=_TINY_CLIP,
        text=_TINY_LLAMA,
        tokenizer=TokenizerSpec("sentencepiece", vocab_size=2000, template="chatml_direct",
                                add_bos=False),
        image_grid_pinpoints=_TINY_PINPOINTS,
    ),
    "tinyllava-1.1b": PresetSpec(
        name="tinyllava-1.1b",
        description="CLIP ViT-L/14-336 + TinyLlama-1.1B dims, random weights (benchmarks)",
        vision=_CLIP_L_336,
        text=TextSpec("llama", hidden_size=2048, intermediate_size=5632, num_layers=22,
                      num_heads=32, num_kv_heads=4, max_position_embeddings=2048,
                      rope_theta=10000.0, rms_norm_eps=1e-5, vocab_size=32064),
        tokenizer=_LLAMA_TOKENIZER,
        dtype="float16",
        large=True,
    ),
    "qwen2-0.5b-siglip": PresetSpec(
        name="qwen2-0.5b-siglip",
        description="SigLIP-so400m-384 + Qwen2-0.5B dims, random weights (benchmarks)",
        vision=VisionSpec("siglip", image_size=384, patch_size=14, hidden_size=1152,
                          intermediate_size=4304, num_layers=27, num_heads=16),
        text=TextSpec("qwen2", hidden_size=896, intermediate_size=4864, num_layers=24,
                      num_heads=14, num_kv_heads=2, max_position_embeddings=32768,
                      rope_theta=1_000_000.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
                      vocab_size=152000),
        tokenizer=_QWEN2_TOKENIZER,
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        dtype="float16",
        large=True,
    ),
    "llava-1.6-mistral-7b": PresetSpec(
        name="llava-1.6-mistral-7b",
        description="LLaVA-1.6 (NeXT): CLIP ViT-L/14-336 tiles + Mistral-7B dims, random "
                    "weights (benchmarks; ~15 GB)",
        vision=_CLIP_L_336,
        text=TextSpec("mistral", hidden_size=4096, intermediate_size=14336, num_layers=32,
                      num_heads=32, num_kv_heads=8, max_position_embeddings=32768,
                      rope_theta=1_000_000.0, rms_norm_eps=1e-5, vocab_size=32064),
        tokenizer=TokenizerSpec("sentencepiece", vocab_size=2000, template="mistral_instruct"),
        # llava-v1.6-mistral-7b-hf's grid: 1x2, 2x1, 2x2, 1x3, 3x1 tiles of 336 px
        image_grid_pinpoints=((336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008)),
        dtype="float16",
        large=True,
    ),
    "llava-1.5-7b": PresetSpec(
        name="llava-1.5-7b",
        description="CLIP ViT-L/14-336 + Llama-7B dims, random weights (benchmarks; ~14 GB)",
        vision=_CLIP_L_336,
        text=TextSpec("llama", hidden_size=4096, intermediate_size=11008, num_layers=32,
                      num_heads=32, num_kv_heads=32, max_position_embeddings=4096,
                      rope_theta=10000.0, rms_norm_eps=1e-5, vocab_size=32064),
        tokenizer=_LLAMA_TOKENIZER,
        dtype="float16",
        large=True,
    ),
}


def get_preset(name: str) -> PresetSpec:
    """The preset called ``name``; a :class:`LlavaEdgeError` listing the choices otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise LlavaEdgeError(
            f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}"
        ) from None
