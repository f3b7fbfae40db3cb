"""What the KV cache already holds, and how much of it the next request can keep.

llama.cpp's KV cache (sequence 0) holds one entry per position: a text token, or one
row of an image's embeddings. :class:`KVPrefix` keeps a key per position -- the token
id, or ``(image key, row)`` for image rows -- so that a new request, listed the same way
(:func:`position_keys`), can be compared with it. The longest common prefix is kept,
the rest of the cache is dropped, and only the request's remaining positions are
evaluated (:func:`remaining`).

That one mechanism reuses a system prompt across requests, an image across questions
about it, and a chat's history across turns. It is exact: under causal attention a
position's keys and values depend only on the positions before it, so a kept prefix
holds what a fresh evaluation of the same positions would compute.
"""

from __future__ import annotations

from typing import Sequence, Union

from llava_edge.runtimes.prompt import Segment

# A text token id, or (image key, row) for one row of an image's embeddings.
PositionKey = Union[int, tuple[bytes, int]]


def position_keys(segments: Sequence[Segment], image_keys: Sequence[bytes],
                  image_rows: Sequence[int]) -> list[PositionKey]:
    """One key per position of a request: its text tokens and image rows, in order
    (``image_rows[i]``: the positions image ``i`` takes)."""
    keys: list[PositionKey] = []
    for seg in segments:
        if seg.image_index is None:
            keys.extend(seg.tokens)
        else:
            key = image_keys[seg.image_index]
            keys.extend((key, row) for row in range(image_rows[seg.image_index]))
    return keys


def remaining(segments: Sequence[Segment], image_rows: Sequence[int],
              keep: int) -> list[tuple[Segment, int]]:
    """The segments still to evaluate once ``keep`` leading positions are reused, each
    with how many of its own leading positions to skip."""
    out, pos = [], 0
    for seg in segments:
        size = image_rows[seg.image_index] if seg.image_index is not None else len(seg.tokens)
        if pos + size > keep:
            out.append((seg, max(0, keep - pos)))
        pos += size
    return out


class KVPrefix:
    """The keys of the positions in the KV cache, in order (see the module docstring)."""

    def __init__(self) -> None:
        self._keys: list[PositionKey] = []

    def __len__(self) -> int:
        return len(self._keys)

    def reusable(self, keys: Sequence[PositionKey], n_past: int) -> int:
        """How many leading positions of a request with ``keys`` the cache already holds.

        ``n_past``: the positions the backend says it holds. If that is not the number
        of keys here, the backend was used behind this bookkeeping's back, or an
        evaluation was cut short between llama.cpp and the bookkeeping: nothing is
        trusted. At most ``len(keys) - 1``: the request's last position is always
        evaluated, since its logits choose the first new token.
        """
        if n_past != len(self._keys):
            return 0
        limit = min(len(self._keys), len(keys) - 1)
        n = 0
        while n < limit and self._keys[n] == keys[n]:
            n += 1
        return n

    def truncate(self, n: int) -> None:
        """The cache now holds only its first ``n`` positions."""
        del self._keys[n:]

    def extend(self, keys: Sequence[PositionKey]) -> None:
        """``keys`` were just evaluated, after the positions already held."""
        self._keys.extend(keys)

    def clear(self) -> None:
        self._keys.clear()
