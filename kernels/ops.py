"""The transformer's other steps as Numba kernels, writing into preallocated outputs.

Each has its definition in kernels/reference.py; tests/test_kernels.py holds them together.
"""
from __future__ import annotations

import math
import types

import numpy as np
from numba import njit, prange

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
    """Jit a kernel over rows twice, serial and parallel; small inputs (decoding) take the serial one."""
    def wrap(func):
        serial = njit(cache=True, fastmath=fastmath)(renamed(func, "_serial"))
        parallel = njit(cache=True, parallel=True, fastmath=fastmath)(func)

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
def rope_tables(positions, rope_dim, base, cos, sin):
    """cos, sin: (n, rope_dim/2) for theta = pos * base^(-2i/rope_dim), computed in float64."""
    for t in range(positions.shape[0]):
        for i in range(rope_dim // 2):
            theta = positions[t] * base ** (-2.0 * i / rope_dim)
            cos[t, i] = math.cos(theta)
            sin[t, i] = math.sin(theta)


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


@njit(cache=True, parallel=True, fastmath=True)
def attention(q, k, v, start, scores, out):
    """Causal grouped-query attention over the KV cache.

    q: (n, heads, hd) at positions start..start+n-1; k, v: (>= start+n, kv_heads, hd);
    scores: scratch (heads, >= start+n); out: (n, heads, hd). One thread per head.
    """
    n, heads, hd = q.shape
    group = heads // k.shape[1]
    scale = np.float32(1.0 / np.sqrt(hd))
    for h in prange(heads):
        kvh = h // group
        s = scores[h]
        for t in range(n):
            length = start + t + 1
            top = np.float32(-np.inf)
            for p in range(length):
                dot = np.float32(0.0)
                for j in range(hd):
                    dot += q[t, h, j] * k[p, kvh, j]
                s[p] = dot * scale
                top = max(top, s[p])
            total = np.float32(0.0)
            for p in range(length):
                s[p] = np.exp(s[p] - top)
                total += s[p]
            for j in range(hd):
                out[t, h, j] = 0.0
            for p in range(length):
                w = s[p] / total
                for j in range(hd):
                    out[t, h, j] += w * v[p, kvh, j]


@_rowwise()
def swiglu(gate, up, out):
    """out = silu(gate) * up, all (n, n_ff)."""
    n, m = gate.shape
    for t in prange(n):
        for j in range(m):
            g = gate[t, j]
            out[t, j] = g / (np.float32(1.0) + np.exp(-g)) * up[t, j]
