"""The sampler chain: penalties, top-k, top-p, min-p, temperature, seeded draws."""
from __future__ import annotations

import numpy as np
import pytest

from llamafile.sampling import Sampler, SamplingParams, apply_penalties, truncate


def logits_of(probs) -> np.ndarray:
    return np.log(np.asarray(probs, dtype=np.float32))


def test_greedy_takes_the_lowest_id_of_the_maximum():
    assert Sampler(temperature=0.0)(np.array([0.0, 3.0, 3.0, 1.0], dtype=np.float32)) == 1


def test_top_k_keeps_the_k_most_likely_in_order():
    ids, vals = truncate(logits_of([0.1, 0.4, 0.2, 0.3]), SamplingParams(top_k=2, top_p=1.0, min_p=0.0))
    assert list(ids) == [1, 3] and vals[0] > vals[1]


def test_top_p_keeps_the_smallest_set_reaching_p():
    p = SamplingParams(top_k=0, top_p=0.7, min_p=0.0)
    ids, _ = truncate(logits_of([0.1, 0.4, 0.2, 0.3]), p)
    assert list(ids) == [1, 3]  # 0.4 + 0.3 >= 0.7


def test_min_p_is_relative_to_the_most_likely():
    p = SamplingParams(top_k=0, top_p=1.0, min_p=0.5)
    ids, _ = truncate(logits_of([0.1, 0.4, 0.25, 0.25]), p)
    assert sorted(ids) == [1, 2, 3]


def test_penalties_as_llamacpp():
    logits = np.array([2.0, -2.0, 1.0], dtype=np.float32)
    p = SamplingParams(repeat_penalty=2.0, frequency_penalty=0.5, presence_penalty=0.25)
    out = apply_penalties(logits, [0, 1, 1], p)
    assert np.allclose(out, [2.0 / 2 - 0.5 - 0.25, -2.0 * 2 - 1.0 - 0.25, 1.0])
    assert logits[0] == 2.0  # the caller's logits are untouched


def test_repeat_penalty_steers_greedy_away_from_recent_tokens():
    s = Sampler(SamplingParams(temperature=0.0, repeat_penalty=3.0, repeat_last_n=4))
    logits = np.array([2.0, 1.0, 0.0], dtype=np.float32)
    assert s(logits) == 0
    s.accept(0)
    assert s(logits) == 1
    for t in (1, 2, 2, 2):  # 0 falls out of the last 4
        s.accept(t)
    assert s(logits) == 0


def test_same_seed_same_draws_and_distribution():
    logits = logits_of([0.5, 0.3, 0.2])
    p = dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)
    a = Sampler(SamplingParams(seed=3, **p))
    b = Sampler(SamplingParams(seed=3, **p))
    draws = [a(logits) for _ in range(4000)]
    assert draws == [b(logits) for _ in range(4000)]
    freq = np.bincount(draws, minlength=3) / len(draws)
    assert np.allclose(freq, [0.5, 0.3, 0.2], atol=0.03)


def test_low_temperature_sharpens():
    logits = logits_of([0.5, 0.3, 0.2])
    s = Sampler(SamplingParams(temperature=0.05, top_k=0, top_p=1.0, min_p=0.0, seed=1))
    assert all(s(logits) == 0 for _ in range(200))


def test_logit_bias_can_ban_a_token():
    s = Sampler(SamplingParams(temperature=0.0, logit_bias={0: -np.inf}))
    assert s(np.array([5.0, 1.0], dtype=np.float32)) == 1


@pytest.mark.parametrize("params", [dict(repeat_penalty=0.0, temperature=0.8), dict(temperature=1e-320),
                                    dict(temperature=1e30), dict(repeat_penalty=0.0, temperature=1e-320, top_k=0)],
                         ids=["repeat_penalty 0", "tiny temperature", "huge temperature", "both"])
def test_no_parameters_make_nan(params):
    """llama.cpp's clamps: whatever the fields, a token is drawn (no 'probabilities contain NaN')."""
    s = Sampler(SamplingParams(seed=0, **params))
    for t in (0, 1, 2):
        s.accept(t)
    logits = np.array([3.0, -2.0, 0.0, 1.0], dtype=np.float32)
    assert all(0 <= s(logits) < 4 for _ in range(50))


def test_every_token_banned_still_answers():
    s = Sampler(SamplingParams(temperature=0.8, seed=0, logit_bias={0: -np.inf, 1: -np.inf}))
    assert s(np.array([1.0, 2.0], dtype=np.float32)) in (0, 1)


def test_huge_repeat_last_n_is_all():
    s = Sampler(SamplingParams(repeat_last_n=10**20, repeat_penalty=1.5))
    s.accept(1)
    assert s(np.array([1.0, 1.2], dtype=np.float32)) in (0, 1)
