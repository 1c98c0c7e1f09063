"""Matrix products against weights read in place from the mapped file, one per format.

    out[t, r] = sum_k W[r, k] * x[t, k]      W: (rows, row_bytes) raw blocks, x: (n, k), out: (n, rows)

One driver, specialised per format by the row dot it calls (kernels.simd). Threads split the
rows into fixed tiles; every output element is summed by one thread in a fixed order, so the
result does not depend on the thread count. Quantised formats first quantise x to 8 bits per
block of 32 (`quantize_q8`, as llama.cpp does) and multiply in integers.

The definitions these are tested against: x @ weights.quants.dequantize(W).T.
"""
from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as T
from numba import njit, prange

from . import simd
from .ops import renamed

ROWS_PER_TILE = 16  # rows one thread takes at a time: the tile's weights stay in L1 across tokens


@njit(cache=True, inline="always")
def _round_to_f16(x):
    return simd.half_to_float(simd.float_to_half(x))


@njit(cache=True, parallel=True)
def quantize_q8(x, xq, xd, xs, xsum4):
    """x: (n, k) float32 -> xq: (n, k) int8, xd: (n, k/32) scales, xs: (n, k/32) = xd * sum(xq)
    rounded to a half (llama.cpp's q8_1), xsum4: (n, k/4) int32 = sums of 4 adjacent xq (what
    one int32 lane of an integer dot product sums: Q4_0 subtracts 8 times them).

    llama.cpp's q8_0/q8_1 activations: d = max|x| / 127 stored as f16, q = round(x / d).
    """
    n, k = x.shape
    for t in prange(n):
        for b in range(k // 32):
            amax = np.float32(0.0)
            for j in range(b * 32, b * 32 + 32):
                amax = max(amax, abs(x[t, j]))
            d = amax / np.float32(127.0)
            inv = np.float32(1.0) / d if d > 0 else np.float32(0.0)
            total = 0
            for j in range(b * 32, b * 32 + 32):
                q = np.int8(np.round(x[t, j] * inv))
                xq[t, j] = q
                total += q
            for j in range(b * 8, b * 8 + 8):
                xsum4[t, j] = np.int32(xq[t, 4 * j]) + xq[t, 4 * j + 1] + xq[t, 4 * j + 2] + xq[t, 4 * j + 3]
            xd[t, b] = _round_to_f16(d)
            xs[t, b] = _round_to_f16(d * np.float32(total))


# The same, on the calling thread: one token's activations (a parallel region costs more).
quantize_q8_serial = njit(cache=True)(renamed(quantize_q8.py_func, "_serial"))


def _quant_matmul(fmt, R, T):
    @njit(cache=True, parallel=True)
    def matmul(w, xq, xd, xs, xsum4, out):
        rows, n, nblk = w.shape[0], xq.shape[0], xd.shape[1]
        if n < T:  # decoding: one row dot per output
            for tile_r in prange((rows + ROWS_PER_TILE - 1) // ROWS_PER_TILE):
                for r in range(tile_r * ROWS_PER_TILE, min(rows, (tile_r + 1) * ROWS_PER_TILE)):
                    for t in range(n):
                        out[t, r] = _quant_dot(fmt, w[r], xq[t], xd[t], xs[t], xsum4[t], nblk)
            return
        full_t = n - n % T
        for strip in prange((rows + R - 1) // R):  # a strip of R rows against every token
            r0 = strip * R
            if r0 + R <= rows:
                for t0 in range(0, full_t, T):
                    _quant_tile(fmt, w, r0, xq, xd, xs, xsum4, t0, out)
                for t in range(full_t, n):
                    for r in range(r0, r0 + R):
                        out[t, r] = _quant_dot(fmt, w[r], xq[t], xd[t], xs[t], xsum4[t], nblk)
            else:
                for r in range(r0, rows):
                    for t in range(n):
                        out[t, r] = _quant_dot(fmt, w[r], xq[t], xd[t], xs[t], xsum4[t], nblk)
    return matmul


def _float_matmul(fmt, R, T):
    @njit(cache=True, parallel=True)
    def matmul(w, x, out):
        rows, n, chunks = w.shape[0], x.shape[0], x.shape[1] // 32
        if n < T:
            for tile_r in prange((rows + ROWS_PER_TILE - 1) // ROWS_PER_TILE):
                for r in range(tile_r * ROWS_PER_TILE, min(rows, (tile_r + 1) * ROWS_PER_TILE)):
                    for t in range(n):
                        out[t, r] = _float_dot(fmt, w[r], x[t], chunks)
            return
        full_t = n - n % T
        for strip in prange((rows + R - 1) // R):
            r0 = strip * R
            if r0 + R <= rows:
                for t0 in range(0, full_t, T):
                    _float_tile(fmt, w, r0, x, t0, out)
                for t in range(full_t, n):
                    for r in range(r0, r0 + R):
                        out[t, r] = _float_dot(fmt, w[r], x[t], chunks)
            else:
                for r in range(r0, rows):
                    for t in range(n):
                        out[t, r] = _float_dot(fmt, w[r], x[t], chunks)
    return matmul


# Each format's row dot and tile, chosen by a small integer code. The drivers above close over
# that code (not over the functions): Numba's cache keys a closure by its captured values, and
# an int hashes the same in every process, so every format's kernel loads from the cache.
Q8_0, Q4_0, Q4_1 = 0, 1, 2
F32, F16, BF16 = 0, 1, 2


@njit(cache=True, inline="always")
def _quant_dot(fmt, w, xq, xd, xs, xsum4, nblk):
    if fmt == Q8_0:
        return simd.dot_q8_0(w, xq, xd, xs, xsum4, nblk)
    if fmt == Q4_0:
        return simd.dot_q4_0(w, xq, xd, xs, xsum4, nblk)
    return simd.dot_q4_1(w, xq, xd, xs, xsum4, nblk)


@njit(cache=True, inline="always")
def _quant_tile(fmt, w, r0, xq, xd, xs, xsum4, t0, out):
    if fmt == Q8_0:
        simd.tile_q8_0(w, r0, xq, xd, xs, xsum4, t0, out)
    elif fmt == Q4_0:
        simd.tile_q4_0(w, r0, xq, xd, xs, xsum4, t0, out)
    else:
        simd.tile_q4_1(w, r0, xq, xd, xs, xsum4, t0, out)


@njit(cache=True, inline="always")
def _float_dot(fmt, w, x, chunks):
    if fmt == F32:
        return simd.dot_f32(w, x, chunks)
    if fmt == F16:
        return simd.dot_f16(w, x, chunks)
    return simd.dot_bf16(w, x, chunks)


@njit(cache=True, inline="always")
def _float_tile(fmt, w, r0, x, t0, out):
    if fmt == F32:
        simd.tile_f32(w, r0, x, t0, out)
    elif fmt == F16:
        simd.tile_f16(w, r0, x, t0, out)
    else:
        simd.tile_bf16(w, r0, x, t0, out)


QUANT_MATMUL = {T.Q8_0: _quant_matmul(Q8_0, *simd.QUANT_TILE),
                T.Q4_0: _quant_matmul(Q4_0, *simd.QUANT_TILE),
                T.Q4_1: _quant_matmul(Q4_1, *simd.QUANT_TILE)}
FLOAT_MATMUL = {T.F32: _float_matmul(F32, *simd.FLOAT_TILE),
                T.F16: _float_matmul(F16, *simd.FLOAT_TILE),
                T.BF16: _float_matmul(BF16, *simd.FLOAT_TILE)}
matmul_q8_0, matmul_q4_0, matmul_q4_1 = (QUANT_MATMUL[t] for t in (T.Q8_0, T.Q4_0, T.Q4_1))
matmul_f32, matmul_f16, matmul_bf16 = (FLOAT_MATMUL[t] for t in (T.F32, T.F16, T.BF16))
SUPPORTED = frozenset(QUANT_MATMUL) | frozenset(FLOAT_MATMUL)


class Q8Activations:
    """Scratch for x quantised to 8 bits: allocated once for up to max_tokens rows of k."""

    def __init__(self, max_tokens: int, k: int):
        self.q = np.empty((max_tokens, k), np.int8)           # (n, k)
        self.d = np.empty((max_tokens, k // 32), np.float32)  # (n, k/32)
        self.s = np.empty((max_tokens, k // 32), np.float32)  # (n, k/32)
        self.sum4 = np.empty((max_tokens, k // 4), np.int32)  # (n, k/4)

    def fill(self, x: np.ndarray):
        """Quantise x (n, k) -> (q, d, s, sum4) views for n tokens, the arguments of the quantised matmuls."""
        n = x.shape[0]
        parts = self.q[:n], self.d[:n], self.s[:n], self.sum4[:n]
        quantize_q8(x, *parts)
        return parts


def matmul(qtype: T, w: np.ndarray, x: np.ndarray, out: np.ndarray, q8: Q8Activations | None = None) -> np.ndarray:
    """out (n, rows) = x (n, k) @ W.T for W's raw rows (rows, row_bytes) of type qtype."""
    if qtype in FLOAT_MATMUL:
        FLOAT_MATMUL[qtype](w, x, out)
    else:
        q8 = q8 or Q8Activations(x.shape[0], x.shape[1])
        QUANT_MATMUL[qtype](w, *q8.fill(x), out)
    return out
