"""An LRU cache of image embeddings, keyed by a hash of the image's pixels.

A robot or a video loop often asks about the same frame again, or comes back to an
image it saw a few requests ago (after the KV cache moved on): the vision graph's
output for it is then taken from here instead of being computed again. The key is a
hash of the decoded RGB pixels (and size), so the same picture arriving as a path,
bytes or a numpy frame hits the same entry.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

import numpy as np
from PIL import Image

# The pipeline's default byte bound: ~5 LLaVA-NeXT images or ~28 LLaVA-1.5 ones.
DEFAULT_EMBED_CACHE_MB = 256.0


def pixel_key(image: Image.Image) -> bytes:
    """A 16-byte digest of an RGB image's size and pixels."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{image.mode}:{image.size[0]}x{image.size[1]}:".encode())
    h.update(image.tobytes())
    return h.digest()


class EmbeddingCache:
    """Image embeddings by :func:`pixel_key`, least recently used evicted first.

    Two bounds, both kept after every :meth:`put`: ``capacity`` entries (0 turns the
    cache off) and, unless None, ``max_bytes`` of stored arrays. Counting bytes matters
    because an entry's size depends on the model and the tiling (a LLaVA-NeXT image can
    take ~47 MB, a LLaVA-1.5 one ~9 MB). An entry larger than ``max_bytes`` on its own
    is not cached at all (and evicts nothing). Stored arrays are read-only, so a caller
    cannot change what later requests get. The pipeline uses it under its own lock; the
    small lock here only lets :meth:`stats` be read from another thread (``/health``).
    """

    def __init__(self, capacity: int = 16, max_bytes: int | None = None):
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        if max_bytes is not None and max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0 or None, got {max_bytes}")
        self.capacity = capacity
        self.max_bytes = max_bytes
        self._items: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self._nbytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = self.evictions = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def nbytes(self) -> int:
        """Bytes of the stored arrays."""
        return self._nbytes

    def get(self, key: bytes) -> np.ndarray | None:
        """The embeddings stored under ``key`` (now the most recent), or None."""
        with self._lock:
            value = self._items.get(key)
            if value is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: bytes, embeds: np.ndarray) -> None:
        """Store ``embeds`` under ``key``, evicting the least recently used entries until
        both bounds hold; an entry over ``max_bytes`` by itself is dropped instead."""
        if self.capacity == 0:
            return
        value = np.array(embeds, dtype=np.float32, copy=True)
        if self.max_bytes is not None and value.nbytes > self.max_bytes:
            return  # caching it would mean evicting everything, and still be over
        value.setflags(write=False)
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._nbytes -= old.nbytes
            self._items[key] = value
            self._nbytes += value.nbytes
            while len(self._items) > self.capacity or (
                    self.max_bytes is not None and self._nbytes > self.max_bytes):
                _, evicted = self._items.popitem(last=False)
                self._nbytes -= evicted.nbytes
                self.evictions += 1

    def stats(self) -> dict[str, int | None]:
        """Entries and bytes now, the bounds, and hits/misses/evictions so far."""
        with self._lock:
            return {"entries": len(self._items), "bytes": self._nbytes,
                    "max_entries": self.capacity, "max_bytes": self.max_bytes,
                    "hits": self.hits, "misses": self.misses, "evictions": self.evictions}

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._nbytes = 0
