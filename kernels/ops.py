"""The transformer's other steps as Numba kernels, writing into preallocated outputs.

Each has its definition in kernels/reference.py; tests/test_kernels.py holds them together.
"""
from __future__ import annotations

import math
import types

import numba
import numpy as np
from numba import njit, prange

from . import reference, simd
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
    """Causal grouped-query attention over the KV cache, one query and head at a time: the layers with
    softcapped scores or sinks (other layers take attention_heads / attention_blocked, which do not
    have them). Every query takes the same steps whatever the batch, so a token's result does not
    depend on it.

    q: (n, heads, hd) at positions start..start+n-1; k, v: (>= start+n, kv_heads, hd), float32 or
    uint16 halves (the cache); scores: scratch (heads, >= start+n); out: (n, heads, hd). scale: of the
    scores (0: 1/sqrt(hd)); window > 0: a query at position i sees only keys i - window + 1 .. i
    (sliding-window layers, llama.cpp's LLAMA_SWA_TYPE_STANDARD); softcap > 0: scores become
    softcap * tanh(score / softcap) (Gemma 2); sinks (heads,): a logit per head that joins the
    softmax's denominator only (gpt-oss's attention sinks).
    """
    n, heads, hd = q.shape
    group = heads // k.shape[1]
    scale = np.float32(1.0 / np.sqrt(hd)) if scale == 0.0 else np.float32(scale)
    cap = np.float32(softcap)
    inv_cap = np.float32(1.0) / cap if softcap > 0.0 else np.float32(0.0)
    for h in prange(heads):
        kvh = h // group
        s = scores[h]
        for t in range(n):
            length = start + t + 1
            first = max(0, length - window) if window > 0 else 0
            for p in range(first, length):
                dot = np.float32(0.0)
                for j in range(hd):
                    dot += q[t, h, j] * simd.as_float(k[p, kvh, j])
                s[p] = dot * scale
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
            for j in range(hd):
                out[t, h, j] = 0.0
            for p in range(first, length):
                w = s[p] / total
                for j in range(hd):
                    out[t, h, j] += w * simd.as_float(v[p, kvh, j])


LANES = 16  # queries (or heads) per work item of attention_blocked / attention_heads: a float32 lane each


def attention_scratch(threads: int, n_ctx: int, head_dim: int) -> np.ndarray:
    """attention_blocked's and attention_heads' scratch, per thread: scores (n_ctx rows), the queries and the
    output transposed (head_dim rows each) and the softmax sums: (threads, n_ctx + 2 head_dim + 1, 16)."""
    return np.zeros((threads, n_ctx + 2 * head_dim + 1, LANES), np.float32)


@njit(cache=True, parallel=True)
def attention_blocked(q, k, v, start, scratch, out, scale=0.0, window=0):
    """attention() without softcap or sinks, for a prompt: a work item is (head, block of 16 queries), the
    queries in the lanes (_lanes). head_dim: a multiple of 8. scratch: attention_scratch(threads, >= start+n, hd)."""
    n, heads, hd = q.shape
    scale = np.float32(1.0 / np.sqrt(hd)) if scale == 0.0 else np.float32(scale)
    blocks = (n + LANES - 1) // LANES
    group = heads // k.shape[1]
    for item in prange(heads * blocks):
        h, t0 = item // blocks, item % blocks * LANES
        _lanes(q, k, v, start, h // group, t0, h, min(LANES, n - t0), 1, scratch[numba.get_thread_id()], out, scale, window)


@njit(cache=True, parallel=True)
def attention_heads(q, k, v, start, scratch, out, scale=0.0, window=0):
    """attention() without softcap or sinks, for a token or a few: a work item is (query, KV head), the
    query heads that share the KV head in the lanes (_lanes), so each key and value is read once for them."""
    n, heads, hd = q.shape
    kv_heads = k.shape[1]
    group = heads // kv_heads
    scale = np.float32(1.0 / np.sqrt(hd)) if scale == 0.0 else np.float32(scale)
    per_kv = (group + LANES - 1) // LANES
    for item in prange(n * kv_heads * per_kv):
        t, rest = item // (kv_heads * per_kv), item % (kv_heads * per_kv)
        kvh = rest // per_kv
        h0 = kvh * group + rest % per_kv * LANES
        _lanes(q, k, v, start, kvh, t, h0, min(LANES, kvh * group + group - h0), 0, scratch[numba.get_thread_id()],
               out, scale, window)


@njit(cache=True)
def store_keys_transposed(kt, start, keys):
    """kt (blocks, kv_heads, hd, 16) uint16 at positions start.. = keys (n, kv_heads, hd) as halves: the key
    cache transposed into blocks of simd.KEY_BLOCK keys, as attention_decode reads it (the same bits as
    store_as_half's)."""
    n, heads, hd = keys.shape
    for t in range(n):
        b, i = divmod(start + t, simd.KEY_BLOCK)
        for h in range(heads):
            for j in range(hd):
                kt[b, h, j, i] = simd.float_to_half(keys[t, h, j])


DECODE_CHUNK = 16  # key blocks (of simd.KEY_BLOCK) per work item of attention_decode's scores and softmax


def decode_scores(n_heads: int, n_ctx: int) -> np.ndarray:
    """attention_decode's scratch: (heads, n_ctx rounded up to whole key blocks, then a column per chunk of
    DECODE_CHUNK blocks for its maximum score)."""
    blocks = -(-n_ctx // simd.KEY_BLOCK)
    return np.zeros((n_heads, blocks * simd.KEY_BLOCK + -(-blocks // DECODE_CHUNK)), np.float32)


@njit(cache=True, parallel=True, error_model="numpy")
def attention_decode(q, kt, v, start, scores, out, scale=0.0, window=0):
    """_lanes' attention (without softcap or sinks) for a token or a few, the same bits, laid out for one
    query: the scores with 16 keys in the lanes (simd.block_scores, from kt, the keys transposed:
    store_keys_transposed), the weighted sum with head dimensions in the lanes (simd.heads_weighted_sum).
    Work items take up to simd.HEADS_AT_ONCE heads sharing a KV head. Past one chunk of keys the query
    takes three parallel steps, so that a few KV heads still keep every thread busy: the scores by chunk
    of DECODE_CHUNK key blocks (and each chunk's maximum), the softmax's numerators by head and chunk,
    the weighted sums by 16 simd.DIMS_AT_ONCE dimensions. kt: (>= blocks, kv_heads, hd, 16); v: (>= start+n,
    kv_heads, hd) uint16; scores: decode_scores(heads, >= start+n); hd a multiple of 16."""
    n, heads, hd = q.shape
    kv_heads = v.shape[1]
    group = heads // kv_heads
    scale = np.float32(1.0 / np.sqrt(hd)) if scale == 0.0 else np.float32(scale)
    per_kv = (group + simd.HEADS_AT_ONCE - 1) // simd.HEADS_AT_ONCE
    dims = (hd // 16 + simd.DIMS_AT_ONCE - 1) // simd.DIMS_AT_ONCE      # weighted-sum calls per head group
    tops = scores.shape[1] - 1                                          # chunk c's maximum: column tops - c
    for t in range(n):                          # one query at a time: they share the scores' rows
        keys = start + t + 1
        lo = max(0, keys - window) if window > 0 else 0
        b0, b1 = lo // simd.KEY_BLOCK, (keys + simd.KEY_BLOCK - 1) // simd.KEY_BLOCK
        chunks = (b1 - b0 + DECODE_CHUNK - 1) // DECODE_CHUNK
        if chunks == 1:                         # a short context: one parallel step, a head group each
            for item in prange(kv_heads * per_kv):
                kvh, h0, count = _head_group(item, per_kv, group)
                _chunk_scores(q[t], kt, kvh, h0, count, b0, b1, lo, keys, scale, scores, tops)
                for h in range(h0, h0 + count):
                    simd.row_exp(scores, h, lo, keys, scores[h, tops])
                for d in range(dims):
                    _weighted_sum(out[t], scores, h0, count, lo, keys, v, kvh, d)
            continue
        for item in prange(kv_heads * per_kv * chunks):
            kvh, h0, count = _head_group(item // chunks, per_kv, group)
            c = item % chunks
            first = b0 + c * DECODE_CHUNK
            _chunk_scores(q[t], kt, kvh, h0, count, first, min(b1, first + DECODE_CHUNK), max(lo, first * simd.KEY_BLOCK),
                          min(keys, (first + DECODE_CHUNK) * simd.KEY_BLOCK), scale, scores, tops - c)
        for item in prange(heads * chunks):
            h, c = item // chunks, item % chunks
            top = np.float32(-np.inf)
            for other in range(chunks):
                top = max(top, scores[h, tops - other])
            first = (b0 + c * DECODE_CHUNK) * simd.KEY_BLOCK
            simd.row_exp(scores, h, max(lo, first), min(keys, first + DECODE_CHUNK * simd.KEY_BLOCK), top)
        for item in prange(kv_heads * per_kv * dims):
            kvh, h0, count = _head_group(item // dims, per_kv, group)
            _weighted_sum(out[t], scores, h0, count, lo, keys, v, kvh, item % dims)


@njit(cache=True, inline="always")
def _head_group(g, per_kv, group):
    """attention_decode's head group g: its KV head, first query head and number of heads."""
    kvh = g // per_kv
    h0 = kvh * group + g % per_kv * simd.HEADS_AT_ONCE
    return kvh, h0, min(simd.HEADS_AT_ONCE, (kvh + 1) * group - h0)


@njit(cache=True, error_model="numpy")
def _chunk_scores(q, kt, kvh, h0, count, b, end, p0, p1, scale, scores, top_col):
    """The scores of heads h0..h0+count-1 for key blocks b..end-1, and each head's maximum over keys p0..p1-1
    into column top_col."""
    while b + simd.BLOCKS_AT_ONCE <= end:
        simd.blocks_scores(scores, q, h0, count, b, kt, kvh, scale)
        b += simd.BLOCKS_AT_ONCE
    while b < end:
        simd.block_scores(scores, q, h0, count, b, kt, kvh, scale)
        b += 1
    for h in range(h0, h0 + count):
        scores[h, top_col] = simd.row_max(scores, h, p0, p1)


@njit(cache=True, error_model="numpy")
def _weighted_sum(out, scores, h0, count, lo, keys, v, kvh, d):
    """Dimensions 16 DIMS_AT_ONCE d.. of the heads' outputs: the numerators' weighted sum of values over their sum."""
    c0 = d * simd.DIMS_AT_ONCE
    if c0 + simd.DIMS_AT_ONCE <= out.shape[1] // 16:
        simd.heads_weighted_sum(out, scores, h0, count, lo, keys, v, kvh, c0)
    else:
        simd.heads_weighted_sum_1(out, scores, h0, count, lo, keys, v, kvh, c0)


@njit(cache=True, error_model="numpy")
def _lanes(q, k, v, start, kvh, t0, h0, m, step, mine, out, scale, window):
    """The one definition of attention (without softcap or sinks), for m <= 16 lanes at once: lane i is query
    t0 + step * i of head h0 + (1 - step) * i (step 1: a block of queries of one head; 0: the heads of one
    query that share KV head kvh). Per lane, in this order:

        qs = q * scale;  s[p] = sum over j in order of qs[j] * k[p, j] (fused multiply-adds)
        e[p] = exp(s[p] - max), 0 for the keys it does not see; total = sum over p in order of e[p]
        out[j] = (sum over p in order of e[p] * v[p, j]) / total

    Keys a lane does not see add exact zeros, so its result depends on its own position only: the same
    bits alone, in a batch, or beside any other queries (batch invariance). mine: this thread's scratch."""
    n, heads, hd = q.shape
    n_ctx = mine.shape[0] - 2 * hd - 1
    s, qt, ot = mine[:n_ctx], mine[n_ctx : n_ctx + hd], mine[n_ctx + hd : n_ctx + 2 * hd]  # (keys | hd | hd, 16)
    total = mine[n_ctx + 2 * hd]                                                            # (16,)
    for j in range(hd):
        for i in range(LANES):
            qt[j, i] = q[t0 + step * i, h0 + (1 - step) * i, j] * scale if i < m else np.float32(0.0)
    first = start + t0                                  # lane 0's position
    keys = first + step * (m - 1) + 1                   # the keys the last lane sees
    lo = max(0, first - window + 1) if window > 0 else 0
    full = lo + (keys - lo) // simd.KEYS_AT_ONCE * simd.KEYS_AT_ONCE
    for p in range(lo, full, simd.KEYS_AT_ONCE):
        simd.rows_scores(s, p, qt, k, kvh)
    for p in range(full, keys):
        simd.row_scores(s, p, qt, k, kvh)
    simd.rows_softmax(s, lo, keys, first, step, window, total)
    for j in range(0, hd, simd.KEYS_AT_ONCE):
        simd.rows_weighted_sum(ot, j, s, lo, keys, v, kvh)
    for i in range(m):
        for j in range(hd):
            out[t0 + step * i, h0 + (1 - step) * i, j] = ot[j, i] / total[i]


@_rowwise()
def swiglu(gate, up, out):
    """out = silu(gate) * up, all (n, n_ff)."""
    n, m = gate.shape
    for t in prange(n):
        for j in range(m):
            g = gate[t, j]
            out[t, j] = g / (np.float32(1.0) + exp(-g)) * up[t, j]


GELU_TABLE = reference.GELU_TABLE  # gelu of every half, as a half: llama.cpp's table (GGML_GELU_FP16)


@njit(cache=True, inline="always")
def _gelu(x):
    """GELU as llama.cpp computes it: x rounded to a half, looked up (exactly reference.gelu)."""
    if x <= np.float32(-10.0):
        return np.float32(0.0)
    if x >= np.float32(10.0):
        return x
    return GELU_TABLE[simd.float_to_half(x)]


@_rowwise()
def geglu(gate, up, out):
    """out = gelu(gate) * up, all (n, n_ff)."""
    n, m = gate.shape
    for t in prange(n):
        for j in range(m):
            out[t, j] = _gelu(gate[t, j]) * up[t, j]


@_rowwise()
def gelu(x, out):
    """out = gelu(x), (n, m)."""
    n, m = x.shape
    for t in prange(n):
        for j in range(m):
            out[t, j] = _gelu(x[t, j])


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
