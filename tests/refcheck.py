"""Comparing our next-token distributions with llama.cpp's top-20 log-probabilities.

The measures and bounds are the ones named in tests/reference/README.md.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _renormalised(logp: np.ndarray) -> np.ndarray:
    p = np.exp(logp - logp.max())
    return p / p.sum()


@dataclass
class Agreement:
    kl20: list[float]          # per position: KL(reference top-20 renormalised || ours on the same ids)
    same_top1: list[bool]      # per position whose reference margin exceeds the threshold
    nll: float                 # ours, on the record's own text
    ref_nll: float

    def top1_share(self) -> float:
        return float(np.mean(self.same_top1)) if self.same_top1 else 1.0


def compare(logits: np.ndarray, record: dict, margin: float) -> Agreement:
    """logits: (n, n_vocab) for record['ids']; margin: the reference top-1 margin (nats) to count top-1 at."""
    logp = log_softmax(logits)
    kl, top1 = [], []
    for i, top in enumerate(record["top"]):
        ids = [t for t, _ in top]
        p = _renormalised(np.array([lp for _, lp in top]))
        q = _renormalised(logp[i, ids])
        kl.append(float(np.sum(p * np.log(p / q))))
        if top[0][1] - top[1][1] > margin:
            top1.append(int(np.argmax(logits[i])) == top[0][0])
    ids = record["ids"]
    nll = -float(np.mean([logp[i, ids[i + 1]] for i in range(len(ids) - 1)]))
    return Agreement(kl, top1, nll, record["nll"])


def summarise(results: list[Agreement]) -> tuple[float, float, float]:
    """Mean KL20 over all positions, top-1 share over all counted positions, worst relative nll error."""
    kl = float(np.mean([k for r in results for k in r.kl20]))
    top1 = [t for r in results for t in r.same_top1]
    nll_err = max(abs(r.nll - r.ref_nll) / r.ref_nll for r in results)
    return kl, float(np.mean(top1)), nll_err


def greedy_prefix_ok(ours: list[int], record: dict, tau: float) -> tuple[bool, int]:
    """Ids must agree up to (not including) the first step whose reference margin is below tau."""
    cut = next((k for k, m in enumerate(record["margins"]) if m < tau), len(record["ids"]))
    return ours[:cut] == record["ids"][:cut], cut
