"""Turning logits into the next token id."""
from __future__ import annotations

import numpy as np


def greedy(logits: np.ndarray) -> int:
    """logits: (n_vocab,) -> the most likely id (the lowest id on a tie, as llama.cpp)."""
    return int(np.argmax(logits))


def sample_temperature(logits: np.ndarray, temperature: float, rng: np.random.Generator) -> int:
    """Draw from softmax(logits / temperature)."""
    z = logits.astype(np.float64) / temperature
    p = np.exp(z - z.max())
    return int(rng.choice(len(p), p=p / p.sum()))


class Sampler:
    """temperature 0 = greedy; otherwise a seeded draw (the same seed gives the same ids)."""

    def __init__(self, temperature: float = 0.0, seed: int | None = None):
        self.temperature = temperature
        self.rng = np.random.default_rng(seed)

    def __call__(self, logits: np.ndarray) -> int:
        if self.temperature <= 0:
            return greedy(logits)
        return sample_temperature(logits, self.temperature, self.rng)
