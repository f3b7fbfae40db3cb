"""Write safetensors shards tensor by tensor, without holding a shard in memory.

A safetensors file is an 8-byte header length, a JSON header giving every tensor's dtype,
shape and byte range, then the raw data. When the names, shapes and dtypes are known in
advance (they are: a model on the ``meta`` device has them), the headers can be written
first and each tensor's bytes appended as soon as it exists. Peak memory is then one
tensor, not one shard.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

from llava_edge.atomic_dir import write_json

_DTYPES = {"float32": ("F32", 4), "float16": ("F16", 2), "bfloat16": ("BF16", 2)}


@dataclass(frozen=True)
class PlannedTensor:
    name: str
    shape: tuple[int, ...]
    dtype: str  # "float32" | "float16" | "bfloat16"

    @property
    def nbytes(self) -> int:
        n = _DTYPES[self.dtype][1]
        for d in self.shape:
            n *= d
        return n


class StreamingShardWriter:
    """Write ``plan``'s tensors, in plan order, into shards of at most ``max_bytes``.

    Files are named as ``save_pretrained`` names them: ``model.safetensors`` when one
    shard is enough, else ``model-0000K-of-0000N.safetensors`` plus
    ``model.safetensors.index.json``.
    """

    def __init__(self, out: Path, plan: list[PlannedTensor], max_bytes: int):
        self.out = out
        self.shards: list[list[PlannedTensor]] = [[]]
        size = 0
        for t in plan:
            if self.shards[-1] and size + t.nbytes > max_bytes:
                self.shards.append([])
                size = 0
            self.shards[-1].append(t)
            size += t.nbytes
        n = len(self.shards)
        self.names = (["model.safetensors"] if n == 1 else
                      [f"model-{k:05d}-of-{n:05d}.safetensors" for k in range(1, n + 1)])
        self._queue = [(k, t) for k, shard in enumerate(self.shards) for t in shard]
        self._next = 0
        self._file = None
        self._file_index = -1

    def write(self, name: str, tensor) -> None:
        """Append ``tensor`` (a torch tensor); it must be the next tensor of the plan."""
        import torch

        k, planned = self._queue[self._next]
        if name != planned.name or tuple(tensor.shape) != planned.shape:
            raise ValueError(f"expected {planned.name} {planned.shape}, got {name} "
                             f"{tuple(tensor.shape)}")
        if k != self._file_index:
            self._open(k)
        tensor = tensor.to(getattr(torch, planned.dtype)).contiguous()
        if planned.dtype == "bfloat16":  # numpy has no bfloat16: write the same bits as int16
            tensor = tensor.view(torch.int16)
        self._file.write(memoryview(tensor.numpy()).cast("B"))
        self._next += 1

    def _open(self, k: int) -> None:
        if self._file:
            self._file.close()
        header, offset = {}, 0
        for t in self.shards[k]:
            header[t.name] = {"dtype": _DTYPES[t.dtype][0], "shape": list(t.shape),
                              "data_offsets": [offset, offset + t.nbytes]}
            offset += t.nbytes
        header["__metadata__"] = {"format": "pt"}
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
        self._file = open(self.out / self.names[k], "wb")
        self._file.write(struct.pack("<Q", len(raw)) + raw)
        self._file_index = k

    def close(self) -> int:
        """Finish the last file and write the index; return the total bytes of tensor data."""
        if self._next != len(self._queue):
            missing = self._queue[self._next][1].name
            raise ValueError(f"{len(self._queue) - self._next} tensors never written "
                             f"(first: {missing})")
        if self._file is None and self._queue == []:
            self._open(0)
        if self._file:
            self._file.close()
        total = sum(t.nbytes for _, t in self._queue)
        if len(self.shards) > 1:
            weight_map = {t.name: self.names[k] for k, t in self._queue}
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            write_json(self.out / "model.safetensors.index.json", index)
        return total
