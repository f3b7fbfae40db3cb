"""Checkpoint tensors for GGUF: read one at a time from safetensors, renamed and re-laid out.

:class:`SafetensorsCheckpoint` opens a checkpoint's weights (``model.safetensors``, or
shards listed in ``model.safetensors.index.json``) with ``safetensors.safe_open`` and
hands out single tensors, so converting a 7B model never holds more than one tensor (plus
the pages of the shard being read) in memory.

:func:`llm_tensor_plan` decides, for the language model of a LLaVA checkpoint, which
checkpoint tensor becomes which GGUF tensor, in which type, and whether its rows are
permuted. llama.cpp's ``llama`` architecture applies rotary embeddings to interleaved
pairs of each head's dimensions, Hugging Face's Llama to its two halves, so the rows of
the Q and K projections are reordered on the way in (Qwen2 uses the halves layout in
llama.cpp too, so its weights are copied as they are).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from llava_edge.errors import LlavaEdgeError
from llava_edge.export.open_checkpoint import UnsupportedModelError

# Where the language model's weights live, by checkpoint layout: (decoder prefix, head).
LLM_PREFIXES = (
    ("language_model.model.", "language_model.lm_head."),  # llava-hf on disk
    ("model.language_model.", "lm_head."),  # transformers >= 4.52 module paths
)
# Decoder-layer tensors: Hugging Face suffix -> GGUF suffix (llama.cpp's names).
_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.o_proj.bias": "attn_output.bias",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
# Every layer needs these (the biases are optional: Qwen2 has some, Llama none).
_REQUIRED_LAYER_NAMES = tuple(g for hf, g in _LAYER_NAMES.items() if not hf.endswith(".bias"))
_IGNORED = re.compile(r"rotary_emb\.inv_freq$")
_LAYER = re.compile(r"^layers\.(\d+)\.(.+)$")
# Pages of a memory map stay resident (and count in RSS) until it is closed; reopening a
# shard (cheap: it parses a small JSON header) after this many bytes keeps the
# converter's footprint near one tensor instead of growing to a whole shard.
_REOPEN_AFTER_BYTES = 64 * 1024**2


class CheckpointWeightsError(LlavaEdgeError):
    """The checkpoint's weight files are missing or inconsistent."""


class SafetensorsCheckpoint:
    """The tensors of a checkpoint directory, read lazily one at a time."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        index = self.path / "model.safetensors.index.json"
        single = self.path / "model.safetensors"
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            except (json.JSONDecodeError, KeyError, UnicodeDecodeError) as e:
                raise CheckpointWeightsError(
                    f"{index}: not a valid safetensors index ({e})") from None
            self._files = {name: self.path / f for name, f in weight_map.items()}
        elif single.is_file():
            self._files = {name: single for name in self._keys(single)}
        else:
            raise CheckpointWeightsError(
                f"{self.path}: no model.safetensors or model.safetensors.index.json "
                "(only safetensors checkpoints can be exported)")
        missing = sorted({str(f.name) for f in self._files.values() if not f.is_file()})
        if missing:
            raise CheckpointWeightsError(
                f"{self.path}: weight shard(s) missing: {', '.join(missing)}")
        self._meta: dict[Path, dict] = {}
        self._open_file: Path | None = None
        self._handle = None
        self._bytes_since_open = 0

    @staticmethod
    def _keys(file: Path) -> list[str]:
        return [k for k in _header(file) if k != "__metadata__"]

    def names(self) -> list[str]:
        return list(self._files)

    def file_of(self, name: str) -> Path:
        return self._files[name]

    def info(self, name: str) -> tuple[tuple[int, ...], str]:
        """``(shape, safetensors dtype)`` of a tensor, from the file header (no data read)."""
        file = self._files[name]
        if file not in self._meta:
            self._meta[file] = _header(file)
        entry = self._meta[file].get(name)
        if entry is None:
            raise CheckpointWeightsError(f"{file}: tensor {name!r} listed in the index is "
                                         "not in the file")
        return tuple(entry["shape"]), entry["dtype"]

    def get(self, name: str):
        """Load one tensor (a torch tensor in the checkpoint's dtype)."""
        from safetensors import safe_open

        file = self._files[name]
        if file != self._open_file or self._bytes_since_open > _REOPEN_AFTER_BYTES:
            self.close()
            self._handle = safe_open(str(file), framework="pt")
            self._open_file = file
            self._bytes_since_open = 0
        tensor = self._handle.get_tensor(name)
        self._bytes_since_open += tensor.numel() * tensor.element_size()
        return tensor

    def close(self) -> None:
        self._handle = None  # safe_open unmaps the file when the handle goes away
        self._open_file = None


def _header(file: Path) -> dict:
    """The JSON header of a safetensors file (names, dtypes, shapes, offsets)."""
    with open(file, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise CheckpointWeightsError(f"{file}: not a safetensors file (too short)")
        n = int.from_bytes(raw, "little")
        if n <= 0 or n > 100 * 1024**2:
            raise CheckpointWeightsError(f"{file}: not a safetensors file (bad header length)")
        try:
            return json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise CheckpointWeightsError(f"{file}: corrupt safetensors header") from None


@dataclass(frozen=True)
class TensorPlan:
    """One GGUF tensor: where it comes from and how it is stored."""

    source: str  # checkpoint key
    name: str  # GGUF tensor name
    shape: tuple[int, ...]  # numpy order, as in the checkpoint
    dtype: str  # "F32" or "F16" in the GGUF file
    permute_heads: int | None = None  # rotary row reorder for this many heads

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * (4 if self.dtype == "F32" else 2)


@dataclass(frozen=True)
class LLMShape:
    """What the tensor plan needs to know about the language model."""

    arch: str  # GGUF architecture: "llama" (Llama, Mistral) or "qwen2"
    n_layers: int
    n_heads: int
    n_kv_heads: int
    tied_embeddings: bool


def find_prefix(names: list[str], prefixes: tuple[str, ...], what: str,
                where: Path | None = None) -> str:
    """The first of ``prefixes`` that some tensor name starts with; none: a
    :class:`CheckpointWeightsError` saying no ``what`` weights were found (in ``where``)."""
    for prefix in prefixes:
        if any(n.startswith(prefix) for n in names):
            return prefix
    raise CheckpointWeightsError(
        (f"{where}: " if where else "") + f"no {what} weights found (expected keys "
        "starting with " + " or ".join(repr(p) for p in prefixes) + ")")


def find_llm_prefixes(names: list[str]) -> tuple[str, str]:
    """The (decoder, lm_head) key prefixes used by this checkpoint."""
    heads = dict(LLM_PREFIXES)
    decoder = find_prefix(names, tuple(heads), "language-model")
    return decoder, heads[decoder]


def llm_tensor_plan(ckpt: SafetensorsCheckpoint, shape: LLMShape,
                    out_type: str) -> list[TensorPlan]:
    """The GGUF tensors of the checkpoint's language model, in writing order.

    ``out_type`` is ``"F32"`` (every tensor in float32) or ``"F16"`` (matrices in float16,
    vectors such as norms and biases in float32, as llama.cpp's converter does). Raises
    :class:`UnsupportedModelError` naming any language-model tensor it does not know.
    """
    if out_type not in ("F32", "F16"):
        raise ValueError(f"out_type must be F32 or F16, not {out_type!r}")
    names = ckpt.names()
    decoder, head = find_llm_prefixes(names)
    permute = shape.arch == "llama"
    plans: list[TensorPlan] = []

    def add(source: str, name: str, heads: int | None = None) -> None:
        dims, _ = ckpt.info(source)
        dtype = "F16" if out_type == "F16" and len(dims) >= 2 else "F32"
        plans.append(TensorPlan(source, name, dims, dtype, heads))

    for source in names:
        if source.startswith(head):
            continue
        if not source.startswith(decoder):
            continue
        key = source[len(decoder):]
        if _IGNORED.search(key):
            continue
        if key == "embed_tokens.weight":
            add(source, "token_embd.weight")
        elif key == "norm.weight":
            add(source, "output_norm.weight")
        elif (m := _LAYER.match(key)) and m.group(2) in _LAYER_NAMES:
            layer, suffix = int(m.group(1)), m.group(2)
            heads = None
            if permute and suffix.startswith("self_attn.q_proj."):
                heads = shape.n_heads
            elif permute and suffix.startswith("self_attn.k_proj."):
                heads = shape.n_kv_heads
            add(source, f"blk.{layer}.{_LAYER_NAMES[suffix]}", heads)
        else:
            raise UnsupportedModelError(
                f"{ckpt.path}: language-model tensor {source!r} is not supported by the "
                f"GGUF exporter ({shape.arch} architecture)")

    head_weight = head + "weight"
    if not shape.tied_embeddings:
        if head_weight not in names:
            raise CheckpointWeightsError(f"{ckpt.path}: {head_weight!r} is missing and the "
                                         "embeddings are not tied")
        add(head_weight, "output.weight")
    # With tied embeddings llama.cpp reads the output projection from token_embd: no
    # `output` tensor is written (a copy on disk would be ignored or double the size).

    got = {p.name for p in plans}
    for required in ("token_embd.weight", "output_norm.weight"):
        if required not in got:
            raise CheckpointWeightsError(f"{ckpt.path}: language-model tensor for "
                                         f"{required!r} is missing")
    for layer in range(shape.n_layers):
        for suffix in _REQUIRED_LAYER_NAMES:
            if f"blk.{layer}.{suffix}" not in got:
                raise CheckpointWeightsError(f"{ckpt.path}: layer {layer} has no tensor for "
                                             f"{suffix!r}")
    return _reading_order(ckpt, plans)


def _reading_order(ckpt: SafetensorsCheckpoint, plans: list[TensorPlan]) -> list[TensorPlan]:
    """Plans sorted by shard, then embeddings, layers in order, and the head: each shard
    is opened once, and the file reads like llama.cpp's own conversions."""
    files = sorted({ckpt.file_of(p.source) for p in plans})

    def key(p: TensorPlan):
        m = re.match(r"blk\.(\d+)\.", p.name)
        group = (1, int(m.group(1))) if m else ((0, 0) if p.name == "token_embd.weight" else (2, 0))
        return files.index(ckpt.file_of(p.source)), group, p.name

    return sorted(plans, key=key)


def permute_rotary(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """Reorder the rows of a Q or K projection (or bias) from Hugging Face's rotary layout
    (each head's dimensions split in two halves) to llama.cpp's (interleaved pairs)."""
    rows = weight.shape[0]
    if rows % (2 * n_heads):
        raise UnsupportedModelError(f"cannot permute a projection of {rows} rows for "
                                    f"{n_heads} heads")
    half = rows // n_heads // 2
    return (weight.reshape(n_heads, 2, half, *weight.shape[1:])
            .swapaxes(1, 2)
            .reshape(weight.shape))


def load_converted(ckpt: SafetensorsCheckpoint, plan: TensorPlan) -> np.ndarray:
    """The tensor for ``plan`` as a contiguous numpy array in its GGUF dtype and layout."""
    import torch

    tensor = ckpt.get(plan.source)
    target = torch.float16 if plan.dtype == "F16" else torch.float32
    array = tensor.to(target).numpy()
    del tensor
    if plan.permute_heads:
        array = permute_rotary(array, plan.permute_heads)
    return np.ascontiguousarray(array)


def iter_converted(ckpt: SafetensorsCheckpoint, plans: list[TensorPlan]
                   ) -> Iterator[tuple[TensorPlan, np.ndarray]]:
    """Yield ``(plan, array)`` one tensor at a time, in the order of ``plans``."""
    try:
        for plan in plans:
            yield plan, load_converted(ckpt, plan)
    finally:
        ckpt.close()
