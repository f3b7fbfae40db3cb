"""An LRU cache of image embeddings, keyed by a hash of the image's pixels.

A robot or a video loop often asks about the same frame again, or comes back to an
image it saw a few requests ago (after the KV cache moved on): the vision graph's
output for it is then taken from here instead of being computed again. The key is a
hash of the decoded RGB pixels (and size), so the same picture arriving as a path,
bytes or a numpy frame hits the same entry.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import numpy as np
from PIL import Image


def pixel_key(image: Image.Image) -> bytes:
    """A 16-byte digest of an RGB image's size and pixels."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{image.mode}:{image.size[0]}x{image.size[1]}:".encode())
    h.update(image.tobytes())
    return h.digest()


class EmbeddingCache:
    """Image embeddings by :func:`pixel_key`, least recently used evicted first.

    ``capacity`` entries at most; 0 turns the cache off. Stored arrays are read-only, so
    a caller cannot change what later requests get. Not thread-safe on its own: the
    pipeline uses it under its lock.
    """

    def __init__(self, capacity: int = 16):
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        self.capacity = capacity
        self._items: OrderedDict[bytes, np.ndarray] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: bytes) -> np.ndarray | None:
        """The embeddings stored under ``key`` (now the most recent), or None."""
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: bytes, embeds: np.ndarray) -> None:
        """Store ``embeds`` under ``key``, evicting the least recently used if full."""
        if self.capacity == 0:
            return
        value = np.array(embeds, dtype=np.float32, copy=True)
        value.setflags(write=False)
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def clear(self) -> None:
        self._items.clear()
