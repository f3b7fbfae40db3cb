"""Choosing the next token from logits: greedy, or sampling with the usual knobs.

numpy only. The order of the filters follows llama.cpp's default sampler chain:
repetition penalty, top-k, top-p, temperature, then a draw from the distribution. A
``constraint`` (a grammar, :mod:`llava_edge.runtimes.structured`) masks the logits before
all of them, as llama.cpp's grammar sampler goes first in its chain.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from llava_edge.errors import SamplingError, StructuredOutputError


@dataclass(frozen=True)
class SamplingParams:
    """``temperature == 0`` means greedy decoding (and the other knobs do nothing).

    An option out of its range raises :class:`SamplingError` (a ``ValueError``)."""

    temperature: float = 0.0
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1.0: off
    repeat_penalty: float = 1.0  # 1.0: off; > 1 discourages tokens already produced
    repeat_last_n: int = 64
    seed: int | None = None

    def __post_init__(self):
        if self.temperature < 0:
            raise SamplingError("temperature", self.temperature, ">= 0")
        if not 0 < self.top_p <= 1:
            raise SamplingError("top_p", self.top_p, "in (0, 1]")
        if self.top_k < 0:
            raise SamplingError("top_k", self.top_k, ">= 0")
        if self.repeat_penalty <= 0:
            raise SamplingError("repeat_penalty", self.repeat_penalty, "> 0")


class Constraint(Protocol):
    """What restricts the next token (e.g. :class:`~llava_edge.runtimes.llama_cpp_lm.
    GrammarConstraint`): ``mask`` returns the logits with forbidden tokens at -inf,
    ``accept`` is told the token chosen."""

    def mask(self, logits: np.ndarray) -> np.ndarray: ...
    def accept(self, token: int) -> None: ...
    def close(self) -> None: ...


class Sampler:
    """Picks tokens for one generation; owns its random generator (seeded per call).

    With a ``constraint``, its mask applies first and it accepts each token chosen;
    ``constrain_ms`` totals the time spent in both."""

    def __init__(self, params: SamplingParams, constraint: Constraint | None = None):
        self.params = params
        self.rng = np.random.default_rng(params.seed)
        self.constraint = constraint
        self.constrain_ms = 0.0

    def __call__(self, logits: np.ndarray, previous: list[int]) -> int:
        if self.constraint is None:  # free text: exactly the path it always took
            return self._choose(logits, previous)
        start = time.perf_counter()
        logits = self.constraint.mask(logits)
        if not np.isfinite(logits).any():
            raise StructuredOutputError("no token can continue the answer under its grammar "
                                        "(the vocabulary cannot spell what it requires)")
        self.constrain_ms += (time.perf_counter() - start) * 1000.0
        token = self._choose(logits, previous)
        start = time.perf_counter()
        self.constraint.accept(token)
        self.constrain_ms += (time.perf_counter() - start) * 1000.0
        return token

    def close(self) -> None:
        """Free the constraint's resources (idempotent)."""
        if self.constraint is not None:
            self.constraint.close()

    def _choose(self, logits: np.ndarray, previous: list[int]) -> int:
        p = self.params
        logits = np.asarray(logits, dtype=np.float64)
        if p.repeat_penalty != 1.0 and previous:
            logits = logits.copy()
            recent = np.unique(np.asarray(previous[-p.repeat_last_n:], dtype=np.int64))
            values = logits[recent]
            # llama.cpp / CTRL: shrink positive logits, push negative ones further down.
            logits[recent] = np.where(values > 0, values / p.repeat_penalty,
                                      values * p.repeat_penalty)
        if p.temperature == 0:
            return int(np.argmax(logits))
        candidates = np.argsort(-logits, kind="stable")
        if p.top_k:
            candidates = candidates[: p.top_k]
        chosen = logits[candidates]
        probs = _softmax(chosen)
        if p.top_p < 1.0:
            keep = int(np.searchsorted(np.cumsum(probs), p.top_p) + 1)
            candidates, chosen = candidates[:keep], chosen[:keep]
        probs = _softmax(chosen / p.temperature)
        return int(candidates[self.rng.choice(len(candidates), p=probs)])


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def checked_token_ids(tokens, n_vocab: int, error: type[Exception]) -> list[int]:
    """``tokens`` as a list of ints, for a language backend's ``eval_tokens``; raises
    ``error`` naming the first id outside the vocabulary (``0 <= id < n_vocab``)."""
    tokens = [int(t) for t in tokens]
    bad = [t for t in tokens if not 0 <= t < n_vocab]
    if bad:
        raise error(f"token id {bad[0]} is out of range (vocabulary of {n_vocab})")
    return tokens
