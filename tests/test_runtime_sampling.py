"""Sampling: greedy is argmax; seeds repeat; top-k / top-p / penalties restrict choices."""

from __future__ import annotations

import numpy as np
import pytest

from llava_edge.errors import LlavaEdgeError, SamplingError
from llava_edge.runtimes.sampling import Sampler, SamplingParams

LOGITS = np.array([1.0, 5.0, 3.0, 4.9, -2.0, 0.0])


def _draws(params, n=400, previous=()):
    sampler = Sampler(params)
    return [sampler(LOGITS, list(previous)) for _ in range(n)]


def test_greedy_is_argmax():
    assert set(_draws(SamplingParams(), n=5)) == {1}


def test_same_seed_same_tokens_other_seed_differs():
    a = _draws(SamplingParams(temperature=1.0, seed=7))
    b = _draws(SamplingParams(temperature=1.0, seed=7))
    c = _draws(SamplingParams(temperature=1.0, seed=8))
    assert a == b and a != c


def test_top_k_and_top_p_restrict_candidates():
    assert set(_draws(SamplingParams(temperature=5.0, top_k=2, seed=0))) == {1, 3}
    # probabilities at T=1: token 1 ~0.47, token 3 ~0.43, token 2 ~0.06 ...
    assert set(_draws(SamplingParams(temperature=5.0, top_p=0.8, seed=0))) == {1, 3}


def test_high_temperature_spreads_low_temperature_sharpens():
    hot = _draws(SamplingParams(temperature=10.0, seed=1))
    cold = _draws(SamplingParams(temperature=0.05, seed=1))
    assert len(set(hot)) == len(LOGITS)
    assert set(cold) <= {1, 3} and cold.count(1) > 300


def test_repeat_penalty_moves_greedy_off_a_repeated_token():
    assert _draws(SamplingParams(repeat_penalty=1.5), n=1, previous=[1]) == [3]
    assert _draws(SamplingParams(repeat_penalty=1.0), n=1, previous=[1]) == [1]


@pytest.mark.parametrize("kwargs, message", [
    (dict(temperature=-1), "temperature must be >= 0, got -1"),
    (dict(top_p=0), "top_p must be in (0, 1], got 0"),
    (dict(top_p=2.0), "top_p must be in (0, 1], got 2.0"),
    (dict(top_k=-1), "top_k must be >= 0, got -1"),
    (dict(repeat_penalty=0), "repeat_penalty must be > 0, got 0"),
])
def test_bad_params_rejected(kwargs, message):
    with pytest.raises(SamplingError) as info:
        SamplingParams(**kwargs)
    # The user's error (CLI exit 1, HTTP 400), still a ValueError for callers that catch one.
    assert isinstance(info.value, LlavaEdgeError) and isinstance(info.value, ValueError)
    assert str(info.value) == message
    [(option, value)] = kwargs.items()
    assert (info.value.option, info.value.value) == (option, value)
