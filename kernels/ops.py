"""The transformer's other steps as Numba kernels, writing into preallocated outputs.

Each has its definition in kernels/reference.py; tests/test_kernels.py holds them together.
"""
from __future__ import annotations

import math
import types

import numba
import numpy as np
from numba import njit, prange

from . import simd
from .simd import exp

SERIAL_BELOW = 4  # rows: fewer than this run on the calling thread (a parallel region costs microseconds)


def renamed(func, suffix: str):
    """A copy of func under another qualified name. Numba's cache files are named after the
    function, and a serial and a parallel build of one function would overwrite each other."""
    twin = types.FunctionType(func.__code__, func.__globals__, func.__name__ + suffix,
                              func.__defaults__, func.__closure__)
    twin.__qualname__ = func.__qualname__ + suffix
    twin.__doc__ = func.__doc__
    return twin


def _rowwise(fastmath=False):
    """Jit a kernel over rows twice, serial and parallel; small inputs (decoding) take the serial one.

    error_model="numpy": a float division by zero gives inf rather than raising, so the check
    does not stop loops from vectorising."""
    def wrap(func):
        serial = njit(cache=True, fastmath=fastmath, error_model="numpy")(renamed(func, "_serial"))
        parallel = njit(cache=True, parallel=True, fastmath=fastmath, error_model="numpy")(func)

        def kernel(x, *args):
            (serial if x.shape[0] < SERIAL_BELOW else parallel)(x, *args)
        kernel.__doc__, kernel.__name__ = func.__doc__, func.__name__
        kernel.serial, kernel.parallel = serial, parallel
        return kernel
    return wrap


@_rowwise()  # no fastmath: the same sums serial or parallel, so batching never changes a result
def rmsnorm(x, weight, eps, out):
    """x: (n, dim) -> out (n, dim) = x / sqrt(mean(x^2) + eps) * weight."""
    n, dim = x.shape
    for t in prange(n):
        ss = np.float32(0.0)
        for j in range(dim):
            ss += x[t, j] * x[t, j]
        scale = np.float32(1.0) / np.sqrt(ss / np.float32(dim) + np.float32(eps))
        for j in range(dim):
            out[t, j] = x[t, j] * scale * weight[j]


@njit(cache=True)
def store_as_half(dst, src):
    """dst (n, heads, head_dim), uint16 = the halves nearest src (ties to even): the KV cache's
    storage, as llama.cpp's default f16 cache (-ctk f16 -ctv f16)."""
    n, heads, hd = src.shape
    for t in range(n):
        for h in range(heads):
            for j in range(hd):
                dst[t, h, j] = simd.float_to_half(src[t, h, j])


@njit(cache=True, parallel=True)
def halves_to_floats(src, dst):
    """dst (keys, heads, head_dim) float32 = src uint16 halves: a prompt's view of the KV cache."""
    keys, heads, hd = src.shape
    for p in prange(keys):
        for h in range(heads):
            for j in range(hd):
                dst[p, h, j] = simd.half_to_float(src[p, h, j])


@njit(cache=True)
def rope_tables(positions, rope_dim, base, factors, cos, sin):
    """cos, sin: (n, rope_dim/2) for theta_i = pos * base^(-2i/rope_dim) / factors[i], the way llama.cpp
    computes them (ggml_rope_cache_init): in float32, theta multiplied by base^(-2/rope_dim) pair by pair,
    then divided by the file's frequency factor (rope_freqs; ones where it has none)."""
    scale = np.float32(base ** (-2.0 / rope_dim))
    for t in range(positions.shape[0]):
        theta = np.float32(positions[t])
        for i in range(rope_dim // 2):
            angle = np.float32(theta / factors[i])
            cos[t, i] = math.cos(np.float64(angle))   # cosf, sinf: the float32 angle's, rounded once
            sin[t, i] = math.sin(np.float64(angle))
            theta = np.float32(theta * scale)


@_rowwise()
def rope(x, cos, sin, neox):
    """In place. x: (n, heads, head_dim); pairs (2i, 2i+1), or (i, i + rope_dim/2) with neox."""
    n, heads, _ = x.shape
    half = cos.shape[1]
    for t in prange(n):
        for h in range(heads):
            for i in range(half):
                a_i, b_i = (i, i + half) if neox else (2 * i, 2 * i + 1)
                a, b = x[t, h, a_i], x[t, h, b_i]
                x[t, h, a_i] = a * cos[t, i] - b * sin[t, i]
                x[t, h, b_i] = a * sin[t, i] + b * cos[t, i]


@njit(cache=True, parallel=True, fastmath=True, error_model="numpy")
def attention(q, k, v, start, scores, out, scale=0.0, window=0, softcap=0.0, sinks=None):
    """Causal grouped-query attention over the KV cache.

    q: (n, heads, hd) at positions start..start+n-1; k, v: (>= start+n, kv_heads, hd), float32 or
    uint16 halves (the cache); scores: scratch (heads, >= start+n); out: (n, heads, hd). scale: of the
    scores (0: 1/sqrt(hd)); window > 0: a query at position i sees only keys i - window + 1 .. i
    (sliding-window layers, llama.cpp's LLAMA_SWA_TYPE_STANDARD); softcap > 0: scores become
    softcap * tanh(score / softcap) (Gemma 2); sinks (heads,): a logit per head that joins the
    softmax's denominator only (gpt-oss's attention sinks).

    A work item is up to simd.HEADS_AT_ONCE query heads of one KV head (where hd is a multiple of 16):
    they read and convert each key and value row once (simd.heads_scores, simd.heads_weighted_sum);
    otherwise one head, with plain loops. Either way each head's sums run in one fixed order.
    """
    n, heads, hd = q.shape
    group = heads // k.shape[1]
    scale = np.float32(1.0 / np.sqrt(hd)) if scale == 0.0 else np.float32(scale)
    cap = np.float32(softcap)
    inv_cap = np.float32(1.0) / cap if softcap > 0.0 else np.float32(0.0)
    together = simd.HEADS_AT_ONCE if hd % 16 == 0 else 1
    per_kv = (group + together - 1) // together                 # work items per KV head
    for item in prange(k.shape[1] * per_kv):
        kvh = item // per_kv
        h0 = kvh * group + item % per_kv * together
        count = min(together, kvh * group + group - h0)
        for t in range(n):
            length = start + t + 1
            first = max(0, length - window) if window > 0 else 0
            if together > 1:
                simd.heads_scores(scores, q[t], h0, count, first, length, k, kvh, scale)
            else:
                for p in range(first, length):
                    dot = np.float32(0.0)
                    for j in range(hd):
                        dot += q[t, h0, j] * simd.as_float(k[p, kvh, j])
                    scores[h0, p] = dot * scale
            for h in range(h0, h0 + count):
                s = scores[h]
                top = np.float32(-np.inf)
                for p in range(first, length):
                    if softcap > 0.0:
                        s[p] = cap * np.tanh(s[p] * inv_cap)
                    top = max(top, s[p])
                total = np.float32(0.0)
                if sinks is not None:
                    top = max(top, sinks[h])
                    total = exp(sinks[h] - top)
                for p in range(first, length):
                    s[p] = exp(s[p] - top)
                    total += s[p]
                for p in range(first, length):
                    s[p] = s[p] / total
            if together > 1:
                simd.heads_weighted_sum(out[t], scores, h0, count, first, length, v, kvh)
            else:
                for j in range(hd):
                    out[t, h0, j] = 0.0
                for p in range(first, length):
                    w = scores[h0, p]
                    for j in range(hd):
                        out[t, h0, j] += w * simd.as_float(v[p, kvh, j])


QUERY_BLOCK = 16  # queries per work item of attention_blocked: one float32 lane each in a 512-bit register


def attention_scratch(threads: int, n_ctx: int, head_dim: int) -> np.ndarray:
    """attention_blocked's scratch, per thread: scores (n_ctx rows), the queries and the output
    transposed (head_dim rows each) and the softmax sums: (threads, n_ctx + 2 head_dim + 1, 16)."""
    return np.zeros((threads, n_ctx + 2 * head_dim + 1, QUERY_BLOCK), np.float32)


@njit(cache=True, parallel=True)
def attention_blocked(q, k, v, start, scratch, out, scale=0.0):
    """attention() for a prompt: the same definition, computed 16 queries at a time.

    A work item is (head, block of 16 queries). Its scores are kept transposed, (keys, 16), so
    every step is a vector operation across the block's queries with no horizontal sums:
    simd.rows_scores (eight keys per loaded row of queries), simd.rows_softmax down the
    columns, simd.rows_weighted_sum (eight output rows in registers). head_dim: a multiple of 8.
    scratch: attention_scratch(threads, >= start+n, hd). scale: as attention's (no sliding window here).
    """
    n, heads, hd = q.shape
    scale = np.float32(1.0 / np.sqrt(hd)) if scale == 0.0 else np.float32(scale)
    blocks = (n + QUERY_BLOCK - 1) // QUERY_BLOCK
    for item in prange(heads * blocks):
        _attention_block(q, k, v, start, item // blocks, item % blocks * QUERY_BLOCK,
                         scratch[numba.get_thread_id()], out, scale)


@njit(cache=True, error_model="numpy")
def _attention_block(q, k, v, start, h, t0, mine, out, scale):
    """Queries t0..t0+15 of head h (fewer at the end); mine: this thread's scratch."""
    n, heads, hd = q.shape
    kvh = h // (heads // k.shape[1])
    n_ctx = mine.shape[0] - 2 * hd - 1
    s, qt, ot = mine[:n_ctx], mine[n_ctx : n_ctx + hd], mine[n_ctx + hd : n_ctx + 2 * hd]  # (keys | hd | hd, 16)
    total = mine[n_ctx + 2 * hd]                                                            # (16,)
    m = min(QUERY_BLOCK, n - t0)
    for j in range(hd):
        for i in range(QUERY_BLOCK):
            qt[j, i] = q[t0 + i, h, j] * scale if i < m else np.float32(0.0)
    keys = start + t0 + m                         # the keys the block's last query sees
    full = keys - keys % simd.KEYS_AT_ONCE
    for p in range(0, full, simd.KEYS_AT_ONCE):
        simd.rows_scores(s, p, qt, k, kvh)
    for p in range(full, keys):
        simd.row_scores(s, p, qt, k, kvh)
    simd.rows_softmax(s, keys, start + t0, total)
    for j in range(0, hd, simd.KEYS_AT_ONCE):
        simd.rows_weighted_sum(ot, j, s, keys, v, kvh)
    for i in range(m):
        for j in range(hd):
            out[t0 + i, h, j] = ot[j, i] / total[i]


@_rowwise()
def swiglu(gate, up, out):
    """out = silu(gate) * up, all (n, n_ff)."""
    n, m = gate.shape
    for t in prange(n):
        for j in range(m):
            g = gate[t, j]
            out[t, j] = g / (np.float32(1.0) + exp(-g)) * up[t, j]


GELU_C = math.sqrt(2.0 / math.pi)


@_rowwise()
def geglu(gate, up, out):
    """out = gelu(gate) * up, all (n, n_ff); gelu with llama.cpp's tanh approximation."""
    n, m = gate.shape
    c, a = np.float32(GELU_C), np.float32(0.044715)
    for t in prange(n):
        for j in range(m):
            g = gate[t, j]
            out[t, j] = np.float32(0.5) * g * (np.float32(1.0) + np.tanh(c * g * (np.float32(1.0) + a * g * g))) * up[t, j]


@_rowwise()
def gelu(x, out):
    """out = gelu(x), (n, m); the tanh approximation, as geglu's."""
    n, m = x.shape
    c, a = np.float32(GELU_C), np.float32(0.044715)
    for t in prange(n):
        for j in range(m):
            g = x[t, j]
            out[t, j] = np.float32(0.5) * g * (np.float32(1.0) + np.tanh(c * g * (np.float32(1.0) + a * g * g)))


@_rowwise()
def layernorm(x, weight, bias, eps, out):
    """x: (n, dim) -> out (n, dim) = (x - mean) / sqrt(var + eps) * weight + bias (bias: zeros for none)."""
    n, dim = x.shape
    for t in prange(n):
        total = np.float32(0.0)
        for j in range(dim):
            total += x[t, j]
        mean = total / np.float32(dim)
        ss = np.float32(0.0)
        for j in range(dim):
            d = x[t, j] - mean
            ss += d * d
        scale = np.float32(1.0) / np.sqrt(ss / np.float32(dim) + np.float32(eps))
        for j in range(dim):
            out[t, j] = (x[t, j] - mean) * scale * weight[j] + bias[j]
