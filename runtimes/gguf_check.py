"""Validate a GGUF file before llama.cpp opens it (no torch, no gguf package).

Given a truncated or corrupt file, llama.cpp may abort the whole process or print an
error that does not say which file is at fault. This module reads the header itself:
magic, version, key/value metadata, tensor table, and checks that the file is long enough
to hold every tensor it declares. Problems raise :class:`GGUFFormatError` naming the file
and what is wrong with it.

Layout (GGUF v2/v3, little-endian)::

    magic "GGUF" | u32 version | u64 n_tensors | u64 n_kv
    n_kv x (string key, u32 value type, value)
    n_tensors x (string name, u32 n_dims, u64 dims[n_dims], u32 ggml type, u64 offset)
    padding to `general.alignment` (default 32) | tensor data
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from llava_edge.errors import LlavaEdgeError

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32

# ggml tensor types: id -> (name, elements per block, bytes per block). Kept here rather
# than imported from the `gguf` package, which the runtime install does not have.
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22), 7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 40),
    10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110), 12: ("Q4_K", 256, 144),
    13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74), 18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50), 20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82), 23: ("IQ4_XS", 256, 136), 24: ("I8", 1, 1), 25: ("I16", 1, 2),
    26: ("I32", 1, 4), 27: ("I64", 1, 8), 28: ("F64", 1, 8), 29: ("IQ1_M", 256, 56),
    30: ("BF16", 1, 2), 34: ("TQ1_0", 256, 54), 35: ("TQ2_0", 256, 66),
    39: ("MXFP4", 32, 17),
}

# GGUF metadata value types: id -> struct format (None: string / array, read specially).
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
            10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
# Arrays longer than this (token lists, merges) are summarised, not kept in memory.
_MAX_KEPT_ARRAY = 64
_MAX_ARRAY_DEPTH = 8  # arrays of arrays (llama.cpp's own files have none)
# Upper bounds that no real model reaches; beyond them the header is garbage.
_MAX_COUNT = 1 << 24
_MAX_DIMS = 4


class GGUFFormatError(LlavaEdgeError):
    """A file is not a valid (complete, supported) GGUF file."""


@dataclass(frozen=True)
class ArraySummary:
    """A long metadata array, described rather than loaded (e.g. 150,000 token strings)."""

    item_type: int
    count: int


@dataclass(frozen=True)
class GGUFTensorInfo:
    """One entry of the tensor table. ``shape`` is in ggml order (fastest dimension first)."""

    name: str
    shape: tuple[int, ...]
    ggml_type: int
    offset: int  # from the start of the data section
    nbytes: int | None  # None when the type is unknown to this module

    @property
    def type_name(self) -> str:
        return GGML_TYPES.get(self.ggml_type, (f"type{self.ggml_type}",))[0]


@dataclass(frozen=True)
class GGUFInfo:
    """What the header of a GGUF file says."""

    path: Path
    version: int
    metadata: dict[str, Any]
    tensors: tuple[GGUFTensorInfo, ...]
    alignment: int
    data_offset: int
    file_size: int
    required_size: int = field(default=0)

    @property
    def architecture(self) -> str | None:
        return self.metadata.get("general.architecture")

    @property
    def n_tensors(self) -> int:
        return len(self.tensors)


class _Reader:
    """Bounds-checked little-endian reads from a memory map, with errors naming the file."""

    def __init__(self, buf, path: Path):
        self.buf, self.path, self.pos = buf, path, 0
        self.depth = 0  # arrays being read, one inside the other

    def _need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > len(self.buf):
            raise GGUFFormatError(
                f"{self.path}: truncated GGUF file: it ends at byte {len(self.buf)} while "
                f"reading {what} at byte {self.pos} (the file is incomplete or corrupt)")

    def unpack(self, fmt: str, what: str):
        size = struct.calcsize(fmt)
        self._need(size, what)
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return value

    def string(self, what: str) -> str:
        n = self.unpack("<Q", what)
        self._need(n, what)
        raw = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise GGUFFormatError(
                f"{self.path}: corrupt GGUF header: {what} is not UTF-8") from None

    def skip_string(self, what: str) -> None:
        n = self.unpack("<Q", what)
        self._need(n, what)
        self.pos += n

    def value(self, vtype: int, what: str):
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype], what)
        if vtype == _STRING:
            return self.string(what)
        if vtype == _ARRAY:
            # Arrays of arrays recurse: bounded here, not by Python's stack.
            if self.depth >= _MAX_ARRAY_DEPTH:
                raise GGUFFormatError(f"{self.path}: corrupt GGUF header: {what} nests "
                                      f"arrays over {_MAX_ARRAY_DEPTH} deep")
            self.depth += 1
            try:
                return self._array(what)
            finally:
                self.depth -= 1
        raise GGUFFormatError(f"{self.path}: corrupt GGUF header: {what} has unknown "
                              f"value type {vtype}")

    def _array(self, what: str):
        item_type = self.unpack("<I", what)
        count = self.unpack("<Q", what)
        if count > len(self.buf):
            raise GGUFFormatError(
                f"{self.path}: corrupt GGUF header: {what} claims {count} items")
        if count > _MAX_KEPT_ARRAY:
            self._skip_items(item_type, count, what)
            return ArraySummary(item_type, count)
        return [self.value(item_type, what) for _ in range(count)]

    def _skip_items(self, item_type: int, count: int, what: str) -> None:
        if item_type in _SCALARS:
            size = struct.calcsize(_SCALARS[item_type]) * count
            self._need(size, what)
            self.pos += size
        elif item_type == _STRING:
            for _ in range(count):
                self.skip_string(what)
        else:  # arrays of arrays do not occur in llama.cpp files; read them the slow way
            for _ in range(count):
                self.value(item_type, what)


def read_gguf_info(path: str | os.PathLike) -> GGUFInfo:
    """Parse and sanity-check the header of the GGUF file at ``path``.

    Raises :class:`GGUFFormatError` if the file is missing, not GGUF, of an unsupported
    version, has a corrupt header, or is shorter than its tensor table requires.
    """
    path = Path(path)
    if not path.is_file():
        raise GGUFFormatError(f"{path}: GGUF file not found")
    size = path.stat().st_size
    if size < 24:
        raise GGUFFormatError(f"{path}: not a GGUF file ({size} bytes, shorter than a header)")
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        if buf[:4] != GGUF_MAGIC:
            raise GGUFFormatError(
                f"{path}: not a GGUF file (starts with {bytes(buf[:4])!r}, expected b'GGUF')")
        return _parse(_Reader(buf, path), path, size)


def _parse(r: _Reader, path: Path, size: int) -> GGUFInfo:
    r.pos = 4
    version = r.unpack("<I", "the version")
    if version not in SUPPORTED_VERSIONS:
        raise GGUFFormatError(f"{path}: GGUF version {version} is not supported "
                              f"(supported: {', '.join(map(str, SUPPORTED_VERSIONS))})")
    n_tensors = r.unpack("<Q", "the tensor count")
    n_kv = r.unpack("<Q", "the metadata count")
    if n_tensors > _MAX_COUNT or n_kv > _MAX_COUNT:
        raise GGUFFormatError(f"{path}: corrupt GGUF header ({n_tensors} tensors, "
                              f"{n_kv} metadata entries)")

    metadata: dict[str, Any] = {}
    for i in range(n_kv):
        key = r.string(f"metadata key #{i}")
        vtype = r.unpack("<I", f"the type of {key!r}")
        metadata[key] = r.value(vtype, f"metadata {key!r}")

    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise GGUFFormatError(f"{path}: corrupt GGUF header: general.alignment = {alignment!r}")

    tensors = []
    for i in range(n_tensors):
        name = r.string(f"tensor name #{i}")
        n_dims = r.unpack("<I", f"the rank of tensor {name!r}")
        if not 1 <= n_dims <= _MAX_DIMS:
            raise GGUFFormatError(f"{path}: corrupt GGUF header: tensor {name!r} has "
                                  f"{n_dims} dimensions")
        shape = tuple(r.unpack("<Q", f"the shape of tensor {name!r}") for _ in range(n_dims))
        ggml_type = r.unpack("<I", f"the type of tensor {name!r}")
        offset = r.unpack("<Q", f"the offset of tensor {name!r}")
        tensors.append(GGUFTensorInfo(name, shape, ggml_type, offset, _nbytes(shape, ggml_type)))

    data_offset = -(-r.pos // alignment) * alignment
    # a file without tensors (a vocabulary alone, as llama.cpp's ggml-vocab-*.gguf) may
    # end right after its header, before the padding
    required = data_offset + max(t.offset + (t.nbytes or 0) for t in tensors) if tensors \
        else r.pos
    if required > size:
        last = max(tensors, key=lambda t: t.offset + (t.nbytes or 0))
        raise GGUFFormatError(
            f"{path}: truncated GGUF file: {size} bytes, but its tensors need {required} "
            f"(tensor {last.name!r} ends past the end of the file)")
    return GGUFInfo(path, version, metadata, tuple(tensors), alignment, data_offset, size,
                    required)


def _nbytes(shape: Sequence[int], ggml_type: int) -> int | None:
    if ggml_type not in GGML_TYPES:
        return None
    _, block, type_size = GGML_TYPES[ggml_type]
    n = 1
    for d in shape:
        n *= d
    return n // block * type_size


def check_gguf(path: str | os.PathLike,
               architectures: Sequence[str] | None = None) -> GGUFInfo:
    """:func:`read_gguf_info`, plus a check that ``general.architecture`` is one of
    ``architectures`` (when given). Returns the parsed header."""
    info = read_gguf_info(path)
    if architectures is not None and info.architecture not in architectures:
        raise GGUFFormatError(
            f"{info.path}: GGUF architecture {info.architecture!r} is not one of "
            f"{', '.join(architectures)}")
    return info
