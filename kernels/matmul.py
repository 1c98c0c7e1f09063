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

from . import panels, simd
from .ops import renamed

ROWS_PER_TILE = 16  # rows one thread takes at a time: the tile's weights stay in L1 across tokens
PANEL_MIN = 16      # tokens: from here on quantised matmuls use kernels.panels where the CPU has VNNI


@njit(cache=True, inline="always")
def _round_to_f16(x):
    return simd.half_to_float(simd.float_to_half(x))


@njit(cache=True, parallel=True, error_model="numpy")
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
            inv = np.float32(127.0) / amax if amax > 0 else np.float32(0.0)   # as llama.cpp: 127/amax, not 1/d
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
quantize_q8_serial = njit(cache=True, error_model="numpy")(renamed(quantize_q8.py_func, "_serial"))


def _quant_matmul(fmt, R, T):
    @njit(cache=True, parallel=True)
    def matmul(w, xq, xd, xs, xsum4, out):
        rows, n = w.shape[0], xq.shape[0]
        if n < T:  # decoding: one row dot per output
            for tile_r in prange((rows + ROWS_PER_TILE - 1) // ROWS_PER_TILE):
                _quant_dots(fmt, w, tile_r * ROWS_PER_TILE, min(rows, (tile_r + 1) * ROWS_PER_TILE), 0, n,
                            xq, xd, xs, xsum4, out)
            return
        full_t = n - n % T
        for strip in prange((rows + R - 1) // R):  # a strip of R rows against every token
            r0 = strip * R
            if r0 + R <= rows:
                for t0 in range(0, full_t, T):
                    _quant_tile(fmt, w, r0, xq, xd, xs, xsum4, t0, out)
                _quant_dots(fmt, w, r0, r0 + R, full_t, n, xq, xd, xs, xsum4, out)
            else:
                _quant_dots(fmt, w, r0, rows, 0, n, xq, xd, xs, xsum4, out)
    return matmul


def _panel_matmul(fmt, R, G):
    @njit(cache=True, parallel=True)
    def matmul(w, xq, xd, xs, xsum4, xpanel, upanel, dpanel, spanel, sumpanel, out):
        rows, n = w.shape[0], xq.shape[0]
        groups = xpanel.shape[0]                 # a multiple of G, covering n tokens
        for strip in prange((rows + R - 1) // R):  # a strip of R rows against every group of tokens
            r0 = strip * R
            if r0 + R <= rows:
                for g0 in range(0, groups, G):
                    _panel_tile(fmt, w, r0, xpanel, upanel, dpanel, spanel, sumpanel, g0, out, n)
            else:
                _quant_dots(fmt, w, r0, rows, 0, n, xq, xd, xs, xsum4, out)
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
def _quant_dots(fmt, w, r_first, r_end, t_first, t_end, xq, xd, xs, xsum4, out):
    """out[t, r] one row dot at a time, for rows r_first..r_end-1 and tokens t_first..t_end-1."""
    for r in range(r_first, r_end):
        for t in range(t_first, t_end):
            out[t, r] = _quant_dot(fmt, w[r], xq[t], xd[t], xs[t], xsum4[t], xd.shape[1])


@njit(cache=True, inline="always")
def _quant_tile(fmt, w, r0, xq, xd, xs, xsum4, t0, out):
    if fmt == Q8_0:
        simd.tile_q8_0(w, r0, xq, xd, xs, xsum4, t0, out)
    elif fmt == Q4_0:
        simd.tile_q4_0(w, r0, xq, xd, xs, xsum4, t0, out)
    else:
        simd.tile_q4_1(w, r0, xq, xd, xs, xsum4, t0, out)


@njit(cache=True, inline="always")
def _panel_tile(fmt, w, r0, xpanel, upanel, dpanel, spanel, sumpanel, g0, out, n):
    if fmt == Q8_0:
        panels.tile_q8_0(w, r0, xpanel, upanel, dpanel, spanel, sumpanel, g0, out, n)
    elif fmt == Q4_0:
        panels.tile_q4_0(w, r0, xpanel, upanel, dpanel, spanel, sumpanel, g0, out, n)
    else:
        panels.tile_q4_1(w, r0, xpanel, upanel, dpanel, spanel, sumpanel, g0, out, n)


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
                T.BF16: _float_matmul(BF16, *simd.BF16_TILE)}
PANEL_MATMUL = {T.Q8_0: _panel_matmul(Q8_0, panels.ROWS, panels.GROUPS),
                T.Q4_0: _panel_matmul(Q4_0, panels.ROWS, panels.GROUPS),
                T.Q4_1: _panel_matmul(Q4_1, panels.ROWS, panels.GROUPS)}
matmul_q8_0, matmul_q4_0, matmul_q4_1 = (QUANT_MATMUL[t] for t in (T.Q8_0, T.Q4_0, T.Q4_1))
matmul_f32, matmul_f16, matmul_bf16 = (FLOAT_MATMUL[t] for t in (T.F32, T.F16, T.BF16))
SUPPORTED = frozenset(QUANT_MATMUL) | frozenset(FLOAT_MATMUL)


class Q8Activations:
    """Scratch for x quantised to 8 bits: allocated once for up to max_tokens rows of k.

    With VNNI, a batch of PANEL_MIN tokens or more is also repacked into panels (kernels.panels).
    """

    def __init__(self, max_tokens: int, k: int):
        self.q = np.empty((max_tokens, k), np.int8)           # (n, k)
        self.d = np.empty((max_tokens, k // 32), np.float32)  # (n, k/32)
        self.s = np.empty((max_tokens, k // 32), np.float32)  # (n, k/32)
        self.sum4 = np.empty((max_tokens, k // 4), np.int32)  # (n, k/4)
        self._panels = None
        if panels.AVAILABLE and max_tokens >= PANEL_MIN:
            groups = _panel_groups(max_tokens)
            self._panels = (np.empty((groups, k // 4, panels.LANES), np.int32),     # xpanel
                            np.empty((groups, k // 4, panels.LANES), np.int32),     # upanel
                            np.empty((groups, k // 32, panels.LANES), np.float32),  # dpanel
                            np.empty((groups, k // 32, panels.LANES), np.float32),  # spanel
                            np.empty((groups, k // 32, panels.LANES), np.int32))    # sumpanel
        self.panels = None  # the last fill's panels, or None

    def fill(self, x: np.ndarray):
        """Quantise x (n, k) -> (q, d, s, sum4) views for n tokens, the arguments of the quantised matmuls."""
        n = x.shape[0]
        parts = self.q[:n], self.d[:n], self.s[:n], self.sum4[:n]
        quantize_q8(x, *parts)
        self.panels = None
        if self._panels is not None and n >= PANEL_MIN:
            self.panels = tuple(p[: _panel_groups(n)] for p in self._panels)
            panels.pack(*parts[:3], *self.panels)
        return parts


def _panel_groups(n: int) -> int:
    """Groups of 16 tokens covering n, rounded up to whole tiles."""
    per_tile = panels.LANES * panels.GROUPS
    return -(-n // per_tile) * panels.GROUPS


def quant_matmul(qtype: T, w: np.ndarray, parts: tuple, panel: tuple | None, out: np.ndarray) -> np.ndarray:
    """out (n, rows) = x @ W.T from x's 8-bit parts (Q8Activations.fill) and, if packed, its panels."""
    if panel is not None:
        PANEL_MATMUL[qtype](w, *parts, *panel, out)
    else:
        QUANT_MATMUL[qtype](w, *parts, out)
    return out


def matmul(qtype: T, w: np.ndarray, x: np.ndarray, out: np.ndarray, q8: Q8Activations | None = None) -> np.ndarray:
    """out (n, rows) = x (n, k) @ W.T for W's raw rows (rows, row_bytes) of type qtype."""
    if qtype in FLOAT_MATMUL:
        FLOAT_MATMUL[qtype](w, x, out)
        return out
    q8 = q8 or Q8Activations(x.shape[0], x.shape[1])
    parts = q8.fill(x)
    return quant_matmul(qtype, w, parts, q8.panels, out)
