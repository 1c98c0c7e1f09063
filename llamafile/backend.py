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

    @staticmethod
    def prepare(x: np.ndarray):
        """An input that several matmuls will share (a faster backend converts it once)."""
        return x

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


class Prepared:
    """An activation (n, k) with its 8-bit quantisation, made on first use and then shared."""

    def __init__(self, x: np.ndarray, mm):
        self.x, self.mm, self.q8 = np.ascontiguousarray(x, dtype=np.float32), mm, None

    @property
    def shape(self):
        return self.x.shape

    def quantised(self):
        if self.q8 is None:
            n, k = self.x.shape
            scratch = self.mm.Q8Activations(n, k)
            self.q8 = scratch.fill(self.x)
        return self.q8


class NumbaBackend(NumpyBackend):
    """The kernels of `kernels/`: weights read block by block in place, threads over rows.

    Formats without a kernel (K-quants, rows not a multiple of 32) use the numpy slabs.
    """
    name = "numba"

    def __init__(self):
        from kernels import matmul as mm
        from kernels import ops
        self.mm, self.ops = mm, ops

    def prepare(self, x: np.ndarray) -> Prepared:
        return Prepared(x, self.mm)

    def matmul(self, w: Tensor, x) -> np.ndarray:
        x = x if isinstance(x, Prepared) else Prepared(x, self.mm)
        n, k = x.shape
        if w.type not in self.mm.SUPPORTED or k % 32:
            return super().matmul(w, x.x)
        out = np.empty((n, w.data.shape[0]), dtype=np.float32)
        if w.type in self.mm.FLOAT_MATMUL:
            self.mm.FLOAT_MATMUL[w.type](w.data, x.x, out)
        else:
            self.mm.QUANT_MATMUL[w.type](w.data, *x.quantised(), out)
        return out

    def rmsnorm(self, x, weight, eps):
        out = np.empty_like(x)
        self.ops.rmsnorm(np.ascontiguousarray(x), weight, np.float32(eps), out)
        return out

    def rope(self, x, positions, rope_dim, base, neox):
        n = len(positions)
        cos = np.empty((n, rope_dim // 2), np.float32)
        sin = np.empty((n, rope_dim // 2), np.float32)
        self.ops.rope_tables(positions.astype(np.float64), rope_dim, float(base), cos, sin)
        x = np.ascontiguousarray(x, dtype=np.float32)
        self.ops.rope(x, cos, sin, neox)
        return x

    def attention(self, q, k, v, start):
        n, heads, hd = q.shape
        scores = np.empty((heads, k.shape[0]), np.float32)
        out = np.empty((n, heads, hd), np.float32)
        self.ops.attention(np.ascontiguousarray(q), k, v, start, scores, out)
        return out

    def swiglu(self, gate, up):
        out = np.empty_like(gate)
        self.ops.swiglu(gate, up, out)
        return out


BACKENDS = {"numpy": NumpyBackend, "numba": NumbaBackend}
