"""A GGUF's token embedding rows, as llama.cpp's token path computes them.

Why: a LLaVA prompt is text, an image's embeddings, then text again. ``llama_decode`` takes
a batch of tokens or a batch of embeddings, never both, so the prompt took one call per
segment: ubatches of 35, 512, 64 and 6 positions for tinyllava-1.1b's, where the same 617
positions as one batch run as 512 + 105. Each small ubatch streams every weight for a few
positions; with the text's rows looked up here, the whole prompt is one batch of
embeddings (tinyllava-1.1b Q4_0, 2 cores: prefill 3.0 s -> 2.86 s).

The rows must be the bits the token path feeds the first layer, or the answer could
change. llama.cpp's token path is ``ggml_get_rows`` on ``token_embd.weight``, which on the
CPU dequantizes each row with the type's ``to_float`` from ``ggml_get_type_traits``: the
same function is called here, through ctypes, on the row read from the file. Only the
architectures whose graph treats both inputs alike past that point (no scaling or LoRA
that only the token path gets) use it, and only where the traits read back as expected;
anywhere else :func:`open_token_embeddings` returns None and the prompt is evaluated
segment by segment as before.
"""

from __future__ import annotations

import ctypes
import functools
import mmap
from pathlib import Path

import numpy as np

from llava_edge.runtimes.gguf_check import GGML_TYPES, GGUFInfo, GGUFTensorInfo

# Architectures checked to feed token rows and input embeddings through the same graph
# (tests/test_token_embd.py compares the logits of both paths bit for bit).
SAME_INPUT_GRAPH = ("llama", "qwen2")
TENSOR = "token_embd.weight"

_TO_FLOAT = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.POINTER(ctypes.c_float),
                             ctypes.c_int64)


class _TypeTraits(ctypes.Structure):
    """ggml.h's ``struct ggml_type_traits`` (llama.cpp since 2024-11)."""

    _fields_ = [("type_name", ctypes.c_char_p), ("blck_size", ctypes.c_int64),
                ("blck_size_interleave", ctypes.c_int64), ("type_size", ctypes.c_size_t),
                ("is_quantized", ctypes.c_bool), ("to_float", _TO_FLOAT),
                ("from_float_ref", ctypes.c_void_p)]


@functools.cache
def _to_float(ggml_type: int):
    """ggml's row dequantizer for ``ggml_type``, or None where the library's traits do not
    read back as this module expects (another struct layout: never guess)."""
    import llama_cpp.llama_cpp as binding

    try:
        get = binding._lib.ggml_get_type_traits  # exported by libggml-base, a dependency
    except AttributeError:
        return None
    get.restype, get.argtypes = ctypes.POINTER(_TypeTraits), [ctypes.c_int]
    traits = get(ggml_type).contents
    name, block, type_size = GGML_TYPES[ggml_type]
    if ((traits.type_name or b"").decode().lower() != name.lower()
            or traits.blck_size != block or traits.type_size != type_size
            or not traits.to_float):
        return None
    return traits.to_float


class TokenEmbeddings:
    """Rows of ``token_embd.weight`` for token ids, [n, n_embd] float32."""

    def __init__(self, path: Path, info: GGUFInfo, tensor: GGUFTensorInfo, to_float):
        self.n_embd, self.n_vocab = tensor.shape[0], tensor.shape[1]
        _, block, type_size = GGML_TYPES[tensor.ggml_type]
        self.row_bytes = self.n_embd // block * type_size
        self._start = info.data_offset + tensor.offset
        self._to_float = to_float
        with open(path, "rb") as f:  # the map outlives the file object
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)

    def rows(self, tokens: list[int]) -> np.ndarray:
        out = np.empty((len(tokens), self.n_embd), np.float32)
        row = (ctypes.c_char * self.row_bytes)
        for i, token in enumerate(tokens):
            if not 0 <= token < self.n_vocab:
                raise ValueError(f"token id {token} is outside the vocabulary "
                                 f"(0..{self.n_vocab - 1})")
            src = row.from_buffer_copy(self._map, self._start + token * self.row_bytes)
            self._to_float(ctypes.addressof(src),
                           out[i].ctypes.data_as(ctypes.POINTER(ctypes.c_float)), self.n_embd)
        return out

    def close(self) -> None:
        self._map.close()


def open_token_embeddings(path: Path, info: GGUFInfo) -> TokenEmbeddings | None:
    """The token rows of the GGUF at ``path`` (``info``: its header), or None where they
    cannot be had exactly as llama.cpp's token path has them."""
    if info.architecture not in SAME_INPUT_GRAPH:
        return None
    tensor = next((t for t in info.tensors if t.name == TENSOR), None)
    if (tensor is None or len(tensor.shape) != 2 or tensor.ggml_type not in GGML_TYPES
            or tensor.shape[0] % GGML_TYPES[tensor.ggml_type][1]):
        return None
    to_float = _to_float(tensor.ggml_type)
    return None if to_float is None else TokenEmbeddings(path, info, tensor, to_float)
