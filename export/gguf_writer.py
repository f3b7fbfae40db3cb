"""Write the language model of a LLaVA checkpoint as a GGUF file llama.cpp loads.

The file holds the hyperparameters (context length, widths, heads, rope base and
scaling, norm epsilon, vocabulary size), the tokenizer (:mod:`gguf_vocab`) with the chat
template, and the weights in float32 or float16 (:mod:`gguf_tensors`). Tensors are
streamed: the header is written from the safetensors headers alone, then each tensor is
read, converted and appended, so memory stays near one tensor however large the model.
The file appears under its final name only when complete.

Supported language models: Llama / Vicuna and Mistral (GGUF architecture ``llama``) and
Qwen2 (``qwen2``). llama.cpp's ``llama`` architecture has no sliding-window attention, so
a Mistral with ``sliding_window`` shorter than its context matches only up to the window.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llava_edge.atomic_dir import atomic_path
from llava_edge.errors import LlavaEdgeError
from llava_edge.export.open_checkpoint import UnsupportedModelError, check_supported
from llava_edge.export.gguf_tensors import (LLMShape, SafetensorsCheckpoint, iter_converted,
                                            llm_tensor_plan)
from llava_edge.export.gguf_vocab import GGUFVocab, add_vocab_metadata, read_vocab
from llava_edge.progress import Progress

# Hugging Face text model type -> GGUF architecture.
GGUF_ARCH = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2"}
FILE_TYPES = {"F32": 0, "F16": 1}  # llama_ftype: ALL_F32, MOSTLY_F16


@dataclass(frozen=True)
class LLMConfig:
    """The language model's hyperparameters, as GGUF needs them."""

    hf_type: str
    arch: str
    n_layers: int
    n_embd: int
    n_ff: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    n_ctx: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: tuple[str, float] | None  # ("linear", factor)
    tied_embeddings: bool

    @property
    def shape(self) -> LLMShape:
        return LLMShape(self.arch, self.n_layers, self.n_heads, self.n_kv_heads,
                        self.tied_embeddings)


@dataclass(frozen=True)
class WrittenGGUF:
    """A GGUF file that was written, and what is in it."""

    path: Path
    arch: str
    out_type: str
    n_tensors: int
    size_bytes: int
    n_vocab: int
    n_tokenizer: int


def read_llm_config(checkpoint_dir: str | Path) -> LLMConfig:
    """The language-model hyperparameters of a LLaVA checkpoint (with transformers'
    defaults for keys the config leaves out)."""
    from transformers import AutoConfig

    path = Path(checkpoint_dir)
    check_supported(path)
    config = AutoConfig.from_pretrained(path)
    text = config.text_config
    hf_type = text.model_type
    if hf_type not in GGUF_ARCH:
        raise UnsupportedModelError(f"{path}: language model {hf_type!r} has no GGUF export")
    rope = dict(getattr(text, "rope_parameters", None) or {})
    legacy_scaling = getattr(text, "rope_scaling", None) or {}
    rope_type = rope.get("rope_type") or legacy_scaling.get("rope_type") or \
        legacy_scaling.get("type") or "default"
    theta = rope.get("rope_theta", getattr(text, "rope_theta", 10000.0))
    scaling = None
    if rope_type == "linear":
        scaling = ("linear", float(rope.get("factor", legacy_scaling.get("factor", 1.0))))
    elif rope_type != "default":
        raise UnsupportedModelError(f"{path}: rope type {rope_type!r} is not supported by the "
                                    "GGUF exporter (supported: default, linear)")
    n_heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // n_heads
    return LLMConfig(
        hf_type=hf_type, arch=GGUF_ARCH[hf_type], n_layers=text.num_hidden_layers,
        n_embd=text.hidden_size, n_ff=text.intermediate_size, n_heads=n_heads,
        n_kv_heads=getattr(text, "num_key_value_heads", None) or n_heads, head_dim=head_dim,
        n_ctx=text.max_position_embeddings, rms_norm_eps=float(text.rms_norm_eps),
        rope_theta=float(theta), rope_scaling=scaling,
        tied_embeddings=bool(getattr(text, "tie_word_embeddings", False)
                             or getattr(config, "tie_word_embeddings", False)),
    )


def _add_hparams(writer, cfg: LLMConfig, n_vocab: int) -> None:
    writer.add_context_length(cfg.n_ctx)
    writer.add_embedding_length(cfg.n_embd)
    writer.add_feed_forward_length(cfg.n_ff)
    writer.add_block_count(cfg.n_layers)
    writer.add_head_count(cfg.n_heads)
    writer.add_head_count_kv(cfg.n_kv_heads)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_freq_base(cfg.rope_theta)
    writer.add_rope_dimension_count(cfg.head_dim)
    if cfg.head_dim != cfg.n_embd // cfg.n_heads:
        writer.add_key_length(cfg.head_dim)
        writer.add_value_length(cfg.head_dim)
    if cfg.rope_scaling is not None:
        import gguf

        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(cfg.rope_scaling[1])
    writer.add_vocab_size(n_vocab)


def write_llm_gguf(checkpoint_dir: str | Path, out_path: str | Path, out_type: str = "F16",
                   name: str | None = None,
                   progress: Progress | None = None) -> WrittenGGUF:
    """Write the checkpoint's language model to ``out_path`` as GGUF (``out_type`` F32 or
    F16). ``progress(done_bytes, total_bytes)`` is called as tensors are written."""
    import gguf

    if out_type not in FILE_TYPES:
        raise LlavaEdgeError(f"GGUF base type must be F32 or F16, not {out_type!r}")
    path, out_path = Path(checkpoint_dir), Path(out_path)
    cfg = read_llm_config(path)
    ckpt = SafetensorsCheckpoint(path)
    plans = llm_tensor_plan(ckpt, cfg.shape, out_type)
    n_vocab = next(p.shape[0] for p in plans if p.name == "token_embd.weight")
    vocab: GGUFVocab = read_vocab(path, n_vocab)

    with gguf_file(out_path, cfg.arch) as writer:
        writer.add_name(name or path.name)
        writer.add_file_type(FILE_TYPES[out_type])
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        _add_hparams(writer, cfg, n_vocab)
        add_vocab_metadata(writer, vocab)
        write_planned_tensors(writer, ckpt, plans, progress)
    return WrittenGGUF(out_path, cfg.arch, out_type, len(plans), out_path.stat().st_size,
                       n_vocab, vocab.n_tokenizer)


@contextlib.contextmanager
def gguf_file(out_path: Path, arch: str) -> Iterator:
    """A ``gguf.GGUFWriter`` on a hidden temporary file next to ``out_path``, renamed to
    ``out_path`` when the block completes (the block must write and close it, e.g. with
    :func:`write_planned_tensors`) and removed when it fails or is interrupted: a GGUF
    appears under its final name only when whole."""
    import gguf

    out_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_path) as tmp:
        writer = gguf.GGUFWriter(tmp, arch)
        try:
            yield writer
        except BaseException:
            writer.close()
            raise


def write_planned_tensors(writer, ckpt, plans, progress=None) -> None:
    """Declare ``plans``' tensors, write the header, then stream each converted tensor
    from ``ckpt`` into ``writer`` (one tensor in memory at a time) and close it."""
    for plan in plans:
        dtype = np.float16 if plan.dtype == "F16" else np.float32
        writer.add_tensor_info(plan.name, plan.shape, np.dtype(dtype), plan.nbytes)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    total, done = sum(p.nbytes for p in plans), 0
    for plan, array in iter_converted(ckpt, plans):
        writer.write_tensor_data(array)
        done += plan.nbytes
        del array
        if progress:
            progress(done, total)
    writer.close()
