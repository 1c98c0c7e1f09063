"""Plain numpy definitions of the transformer's building blocks.

These are the slow twins of the Numba kernels: each function *is* the definition the
fast version is tested against. Shapes are written as comments; all math is float32
unless a comment says otherwise.
"""
from __future__ import annotations

import numpy as np


def rmsnorm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """x: (n, dim), weight: (dim,) -> (n, dim); x / sqrt(mean(x^2) + eps) * weight."""
    ms = np.mean(x.astype(np.float32) ** 2, axis=-1, keepdims=True)
    return (x / np.sqrt(ms + np.float32(eps)) * weight).astype(np.float32)


def rope_angles(positions: np.ndarray, rope_dim: int, base: float, factors=None) -> tuple[np.ndarray, np.ndarray]:
    """positions: (n,) -> cos, sin of shape (n, rope_dim // 2); theta_i = pos * base^(-2i/rope_dim) / factors[i]
    (the file's rope_freqs, where it has them)."""
    inv_freq = base ** (-np.arange(0, rope_dim, 2, dtype=np.float64) / rope_dim)   # (rope_dim/2,)
    if factors is not None:
        inv_freq = inv_freq / np.asarray(factors, np.float64)
    theta = positions.astype(np.float64)[:, None] * inv_freq[None, :]             # (n, rope_dim/2)
    return np.cos(theta).astype(np.float32), np.sin(theta).astype(np.float32)


def rope(x: np.ndarray, positions: np.ndarray, rope_dim: int, base: float, neox: bool) -> np.ndarray:
    """Rotary position embedding. x: (n, n_heads, head_dim) -> same shape.

    The first rope_dim entries of each head rotate in pairs: adjacent pairs (x[2i], x[2i+1])
    in llama's layout, or halves (x[i], x[i + rope_dim/2]) in GPT-NeoX's (Qwen2, Gemma).
    """
    cos, sin = rope_angles(positions, rope_dim, base)
    return apply_rope(x, cos, sin, neox)


def apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, neox: bool) -> np.ndarray:
    """x: (n, n_heads, head_dim), cos/sin: (n, rope_dim/2) -> rotated copy of x."""
    rope_dim = 2 * cos.shape[1]
    cos, sin = cos[:, None, :], sin[:, None, :]                                    # (n, 1, rope_dim/2)
    out = x.astype(np.float32, copy=True)
    if neox:
        a, b = x[..., : rope_dim // 2], x[..., rope_dim // 2 : rope_dim]
        out[..., : rope_dim // 2] = a * cos - b * sin
        out[..., rope_dim // 2 : rope_dim] = a * sin + b * cos
    else:
        a, b = x[..., 0:rope_dim:2], x[..., 1:rope_dim:2]
        out[..., 0:rope_dim:2] = a * cos - b * sin
        out[..., 1:rope_dim:2] = a * sin + b * cos
    return out


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, start: int, scale: float = 0.0,
              window: int = 0, softcap: float = 0.0, sinks=None) -> np.ndarray:
    """Causal grouped-query attention over a KV cache.

    q: (n, n_heads, head_dim) for positions start..start+n-1
    k, v: (start + n, n_kv_heads, head_dim), the cache up to and including those positions
    -> (n, n_heads, head_dim). Query head h reads kv head h // (n_heads / n_kv_heads).
    scale: of the scores q.k (0: 1/sqrt(head_dim)); window > 0: the query at position i sees keys
    i - window + 1 .. i only (a sliding-window layer); softcap > 0: scores -> softcap * tanh(scores / softcap).
    """
    n, n_heads, head_dim = q.shape
    total, n_kv_heads, _ = k.shape
    group = n_heads // n_kv_heads
    qh = q.reshape(n, n_kv_heads, group, head_dim).transpose(1, 2, 0, 3)            # (kv, group, n, hd)
    kh = k.astype(np.float32).transpose(1, 2, 0)                                    # (kv, hd, total)
    vh = v.astype(np.float32).transpose(1, 0, 2)                                    # (kv, total, hd)
    scores = qh @ kh[:, None]                                                       # (kv, group, n, total)
    scores = scores * np.float32(scale) if scale else scores / np.float32(np.sqrt(head_dim))
    if softcap:
        scores = np.float32(softcap) * np.tanh(scores / np.float32(softcap))
    future = np.arange(total)[None, :] > (start + np.arange(n))[:, None]            # (n, total)
    if window > 0:
        future |= (start + np.arange(n))[:, None] - np.arange(total)[None, :] >= window
    scores[..., future] = -np.inf
    if sinks is None:
        out = softmax(scores) @ vh[:, None]                                         # (kv, group, n, hd)
    else:  # a per-head logit in the denominator only
        sink = np.asarray(sinks, np.float32).reshape(n_kv_heads, group, 1, 1)
        top = np.maximum(scores.max(axis=-1, keepdims=True), sink)
        e = np.exp(scores - top)
        out = (e / (e.sum(axis=-1, keepdims=True) + np.exp(sink - top))) @ vh[:, None]
    return out.transpose(2, 0, 1, 3).reshape(n, n_heads, head_dim).astype(np.float32)


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def swiglu(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    """gate, up: (n, n_ff) -> silu(gate) * up."""
    return (silu(gate) * up).astype(np.float32)


def _gelu_tanh(x: np.ndarray) -> np.ndarray:
    """GELU, tanh approximation, in float32 (llama.cpp's ggml_gelu_f32)."""
    x = x.astype(np.float32)
    c, a, half, one = np.float32(0.7978845608028654), np.float32(0.044715), np.float32(0.5), np.float32(1.0)
    return half * x * (one + np.tanh(c * x * (one + a * x * x)))


def _gelu_table() -> np.ndarray:
    """(65536,) float32: for every half's bits, gelu of that half rounded to a half (llama.cpp's
    ggml_table_gelu_f16)."""
    x = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)
    with np.errstate(all="ignore"):
        return _gelu_tanh(x).astype(np.float16).astype(np.float32)


GELU_TABLE = _gelu_table()


def gelu(x: np.ndarray) -> np.ndarray:
    """GELU as llama.cpp computes it (GGML_GELU_FP16): x rounded to a half looked up in GELU_TABLE;
    0 at or below -10, x at or above 10."""
    x = x.astype(np.float32)
    with np.errstate(over="ignore"):
        looked_up = GELU_TABLE[x.astype(np.float16).view(np.uint16)]
    return np.where(x <= -10, np.float32(0.0), np.where(x >= 10, x, looked_up)).astype(np.float32)


def geglu(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    """gate, up: (n, n_ff) -> gelu(gate) * up."""
    return (gelu(gate) * up).astype(np.float32)


def layernorm(x: np.ndarray, weight: np.ndarray, bias, eps: float) -> np.ndarray:
    """x: (n, dim) -> (x - mean) / sqrt(var + eps) * weight (+ bias)."""
    x = x.astype(np.float32)
    centred = x - x.mean(axis=-1, keepdims=True)
    out = centred / np.sqrt(np.mean(centred * centred, axis=-1, keepdims=True) + np.float32(eps)) * weight
    return (out + bias if bias is not None else out).astype(np.float32)
