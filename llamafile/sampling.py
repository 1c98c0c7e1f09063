"""Turning logits into the next token id, the way llama.cpp's default sampler chain does.

    penalties (repeat, presence, frequency) -> top-k -> top-p -> min-p -> temperature -> draw

Temperature 0 (or less) is greedy: the most likely id after the penalties.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from kernels.select import top_k


@dataclass
class SamplingParams:
    temperature: float = 0.8
    top_k: int = 40             # <= 0: all tokens
    top_p: float = 0.95         # 1.0: off
    min_p: float = 0.05         # 0.0: off; relative to the most likely token
    repeat_penalty: float = 1.0  # 1.0: off
    repeat_last_n: int = 64     # recent ids the penalties look at (prompt included); -1: all
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None     # None: a fresh seed each run
    logit_bias: dict[int, float] = field(default_factory=dict)


def greedy(logits: np.ndarray) -> int:
    """logits: (n_vocab,) -> the most likely id (the lowest id on a tie, as llama.cpp)."""
    return int(np.argmax(logits))


def apply_penalties(logits: np.ndarray, recent: list[int], p: SamplingParams) -> np.ndarray:
    """llama.cpp's penalties on a copy of logits: a seen token's logit is divided by repeat_penalty
    (multiplied when negative), then count * frequency + presence is subtracted."""
    ids, counts = np.unique(np.asarray(recent, dtype=np.int64), return_counts=True)
    out = logits.astype(np.float32, copy=True)
    x = out[ids]
    with np.errstate(divide="ignore", invalid="ignore"):  # a penalty of 0 gives infinities: handled by the sampler
        x = np.where(x <= 0, x * p.repeat_penalty, x / p.repeat_penalty)
    out[ids] = x - counts * p.frequency_penalty - p.presence_penalty
    return out


def truncate(logits: np.ndarray, p: SamplingParams) -> tuple[np.ndarray, np.ndarray]:
    """The candidates top-k, top-p and min-p leave: (ids, logits), most likely first."""
    n = len(logits)
    k = n if p.top_k <= 0 else min(p.top_k, n)
    if k < n:   # one pass over the vocabulary (kernels.select), by logit then by id
        ids, best = np.empty(k, np.int64), np.empty(k, np.float64)
        ids = ids[: top_k(logits, k, ids, best)]
    else:
        ids = np.lexsort((np.arange(n), -logits))
    vals = logits[ids].astype(np.float64)
    if p.top_p < 1.0:
        probs = np.exp(vals - vals[0])
        cum = np.cumsum(probs / probs.sum())
        keep = int(np.searchsorted(cum, p.top_p)) + 1  # smallest prefix reaching top_p
        ids, vals = ids[:keep], vals[:keep]
    if p.min_p > 0.0:
        keep = vals >= vals[0] + np.log(p.min_p)
        ids, vals = ids[keep], vals[keep]
    return ids, vals


class Sampler:
    """Sampler(SamplingParams(...)), or Sampler(temperature, seed) with llama.cpp's other defaults.

    accept(id) records the ids the penalties look at (the prompt's and the generated ones).
    """

    def __init__(self, params: SamplingParams | float | None = None, seed: int | None = None, *,
                 temperature: float | None = None):
        if not isinstance(params, SamplingParams):
            t = temperature if temperature is not None else (0.0 if params is None else float(params))
            params = SamplingParams(temperature=t, seed=seed)
        self.params = params
        self.rng = np.random.default_rng(params.seed)
        last_n = int(params.repeat_last_n)
        self.recent: deque[int] = deque(maxlen=None if last_n < 0 else min(last_n, 1 << 30))

    @property
    def penalised(self) -> bool:
        p = self.params
        return bool(self.recent) and (p.repeat_penalty != 1.0 or p.presence_penalty != 0.0
                                      or p.frequency_penalty != 0.0)

    def reset(self) -> None:
        self.recent.clear()

    def accept(self, token: int) -> None:
        if self.recent.maxlen != 0:
            self.recent.append(int(token))

    def __call__(self, logits: np.ndarray) -> int:
        p = self.params
        if self.penalised:
            logits = apply_penalties(logits, list(self.recent), p)
        if p.logit_bias:
            logits = logits.astype(np.float32, copy=True)
            for token, bias in p.logit_bias.items():
                logits[token] += bias
        # Penalties and biases can make logits infinite (repeat_penalty 0 divides by zero, a bias of
        # -inf bans a token): +inf is the largest finite float, and -inf a token that cannot be drawn.
        if not np.isfinite(logits).all():
            logits = np.nan_to_num(logits, nan=-np.inf, posinf=np.finfo(np.float32).max)
        if p.temperature <= 0:
            return greedy(logits)
        ids, vals = truncate(logits, p)
        if not np.isfinite(vals[0]):  # every candidate banned: nothing to draw from, take the first
            return int(ids[0])
        with np.errstate(over="ignore"):  # a tiny temperature: -inf for all but the best, as it should
            probs = np.exp((vals - vals[0]) / p.temperature)  # in [0, 1] for any temperature > 0, never NaN
        return int(ids[self.rng.choice(len(ids), p=probs / probs.sum())])
