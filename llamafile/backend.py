"""Backends: how the forward pass multiplies by weights and runs its other steps.

`NumpyBackend` is the reference: it dequantises a slab of weight rows at a time (never a
whole tensor) and multiplies in float32, and takes the rest of its math from
`kernels.reference`. Faster backends offer the same methods.
"""
from __future__ import annotations

import numpy as np

from kernels import reference
from weights.gguf import Tensor
from weights.quants import dequantize


class NumpyBackend:
    name = "numpy"
    slab_bytes = 8 << 20  # dequantise at most this many bytes of weights at once

    rmsnorm = staticmethod(reference.rmsnorm)
    rope = staticmethod(reference.rope)
    attention = staticmethod(reference.attention)
    swiglu = staticmethod(reference.swiglu)

    def matmul(self, w: Tensor, x: np.ndarray) -> np.ndarray:
        """x: (n, n_per_row) -> x @ W.T: (n, rows), W read from its quantised rows a slab at a time."""
        rows, row_bytes = w.data.shape
        step = max(1, self.slab_bytes // row_bytes)
        out = np.empty((x.shape[0], rows), dtype=np.float32)
        for r in range(0, rows, step):
            out[:, r : r + step] = x @ dequantize(w.data[r : r + step], w.type).T
        return out

    def embed(self, w: Tensor, ids: np.ndarray) -> np.ndarray:
        """ids: (n,) -> their rows of the embedding table, (n, dim) float32."""
        return dequantize(w.data[ids], w.type)
