"""The k largest of a long vector in one pass (sampling's top-k over a 128k-262k vocabulary).

numpy's argpartition negates a copy and partitions the whole vector; here one pass keeps the k
best seen so far in a small sorted buffer, and almost every value fails the first comparison
(against the k-th best). The definition, and the order of the result: ids by value, descending,
ties by the lower id — `reference_top_k`.
"""
from __future__ import annotations

import numpy as np
from numba import njit


def reference_top_k(values: np.ndarray, k: int) -> np.ndarray:
    """ids of the k largest values (NaN never chosen), largest first, ties by lower id."""
    v = np.where(np.isnan(values), -np.inf, values)
    order = np.lexsort((np.arange(len(v)), -v))
    return order[: min(k, len(v))].astype(np.int64)


@njit(cache=True)
def top_k(values, k, ids, best):
    """ids[:m], best[:m] = the m = min(k, n) largest values' ids and values, in reference_top_k's order;
    returns m. ids (int64) and best (float32 or float64) hold at least k entries."""
    n = values.shape[0]
    m = 0
    if k <= 0:
        return 0
    for i in range(n):
        v = values[i]
        if v != v:          # NaN
            v = -np.inf
        if m == k:
            if not v > best[k - 1]:   # a tie with the k-th keeps the earlier (lower) id
                continue
            m -= 1
        j = m                # insert at its place: after every value >= v (earlier ids first on ties)
        while j > 0 and best[j - 1] < v:
            best[j] = best[j - 1]
            ids[j] = ids[j - 1]
            j -= 1
        best[j] = v
        ids[j] = i
        m += 1
    return m
