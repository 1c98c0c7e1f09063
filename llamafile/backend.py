"""Backends: how the forward pass multiplies by weights and runs its other steps.

Every method writes into an output the caller allocated once (llamafile.models.llama.RunState).

`NumpyBackend` is the reference: it dequantises a slab of weight rows at a time (never a
whole tensor) and multiplies in float32, with the rest of its math from `kernels.reference`.
`NumbaBackend` runs the kernels of `kernels/`, reading the quantised blocks in place.
"""
from __future__ import annotations

import numpy as np

from kernels import reference
from weights.gguf import Tensor
from weights.quants import dequantize


class NumpyBackend:
    name = "numpy"
    slab_bytes = 8 << 20  # dequantise at most this many bytes of weights at once

    def prepare(self, x: np.ndarray):
        """An input that several matmuls will share (a faster backend converts it once)."""
        return x

    def matmul(self, w: Tensor, x, out: np.ndarray) -> np.ndarray:
        """out (n, rows) = x (n, n_per_row) @ W.T, W read from its quantised rows a slab at a time."""
        rows, row_bytes = w.data.shape
        step = max(1, self.slab_bytes // row_bytes)
        for r in range(0, rows, step):
            out[:, r : r + step] = x @ dequantize(w.data[r : r + step], w.type).T
        return out

    def embed(self, w: Tensor, ids: np.ndarray, out: np.ndarray) -> np.ndarray:
        """out (n, dim) = the rows of the embedding table for ids (n,)."""
        out[:] = dequantize(w.data[ids], w.type)
        return out

    def rmsnorm(self, x, weight, eps, out):
        out[:] = reference.rmsnorm(x, weight, eps)
        return out

    def allocate(self, n_batch: int, n_heads: int, n_ctx: int, rope_dim: int) -> None:
        """Scratch sized by the model and context, once (the reference needs none)."""

    def rope_angles(self, positions, rope_dim, base, factors=None, table=0):
        """cos, sin (n, rope_dim/2) for these positions (factors: rope_freqs): computed once per forward pass.
        table: 0 or 1, two sets that coexist (a model whose sliding-window layers have their own base)."""
        return reference.rope_angles(positions, rope_dim, base, factors)

    def store_kv(self, dst, values, transposed=None, start=0):
        """dst (uint16) = values (n, heads, head_dim) as halves: the cache's type, llama.cpp's default.
        transposed: the keys' copy in blocks of 16 (KVCache.kt), written too from position start."""
        dst[:] = values.astype(np.float16).view(np.uint16)

    def rope(self, x, angles, neox):
        """In place: x (n, heads, head_dim) rotated by angles from rope_angles."""
        x[:] = reference.apply_rope(x, *angles, neox)
        return x

    def attention(self, q, k, v, start, out, scale=0.0, window=0, softcap=0.0, sinks=None, kt=None):
        """out = causal attention of q (n, heads, hd) over the cache k, v; scale 0: 1/sqrt(hd); window > 0:
        sliding (each query sees its last window keys); softcap > 0: scores softcapped (Gemma 2); sinks:
        a logit per head in the softmax's denominator (gpt-oss); kt: the keys transposed (KVCache.kt)."""
        out[:] = reference.attention(q, _floats(k), _floats(v), start, scale, window, softcap, sinks)
        return out

    def swiglu(self, gate, up, out):
        out[:] = reference.swiglu(gate, up)
        return out

    def geglu(self, gate, up, out):
        out[:] = reference.geglu(gate, up)
        return out

    def layernorm(self, x, weight, bias, eps, out):
        out[:] = reference.layernorm(x, weight, bias, eps)
        return out

    def gelu(self, x, out):
        out[:] = reference.gelu(x).astype(np.float32)
        return out


def _floats(cache: np.ndarray) -> np.ndarray:
    """KV cache rows (uint16 halves) as float32."""
    return cache.view(np.float16).astype(np.float32) if cache.dtype == np.uint16 else cache


class Prepared:
    """An activation (n, k) and, once a quantised matmul asks, its 8-bit form in the backend's scratch."""

    def __init__(self, x: np.ndarray, backend: "NumbaBackend"):
        self.x, self.backend, self.forms = x, backend, {}

    @property
    def shape(self):
        return self.x.shape

    def quantised(self, kind: str):
        """(parts, panels) as kernels.matmul.prepared_matmul takes them, for activations of this kind."""
        if kind not in self.forms:
            scratch = self.backend.q8_scratch(self.x.shape[1], kind)
            self.forms[kind] = scratch.fill(self.x, kind), scratch.panels
        return self.forms[kind]


class NumbaBackend(NumpyBackend):
    """The kernels of `kernels/`: weights read block by block in place, threads over rows.

    Every quantised format has kernels (kernels.matmul's registry); a float matrix whose rows are not
    a multiple of 32 uses the numpy slabs.
    """
    name = "numba"

    def __init__(self):
        from kernels import matmul as mm
        from kernels import ops
        self.mm, self.ops = mm, ops

    def q8_scratch(self, k: int, kind: str):
        """Prepared activations (8-bit, or bf16) of width k and a kind, allocated on first use (once per width:
        n_embd, n_ff)."""
        if (k, kind) not in self._q8:
            self._q8[k, kind] = self.mm.scratch(self.n_batch, k, kind)
        return self._q8[k, kind]

    def prepare(self, x: np.ndarray) -> Prepared:
        return Prepared(x, self)

    def matmul(self, w: Tensor, x, out: np.ndarray) -> np.ndarray:
        x = x if isinstance(x, Prepared) else Prepared(x, self)
        if w.type not in self.mm.SUPPORTED or x.shape[1] % max(32, self.mm.block_weights(w.type)):
            return super().matmul(w, x.x, out)
        kind = self.mm.activations(w.type)
        if kind is None:
            self.mm.FLOAT_MATMUL[w.type](w.data, x.x, out)
        else:
            self.mm.prepared_matmul(w.type, w.data, *x.quantised(kind), out)
        return out

    def rmsnorm(self, x, weight, eps, out):
        self.ops.rmsnorm(x, weight, np.float32(eps), out)
        return out

    def rope_angles(self, positions, rope_dim, base, factors=None, table=0):
        n = len(positions)
        cos, sin = self._rope_cos[table, :n], self._rope_sin[table, :n]
        if factors is None:
            factors = self._no_factors[: rope_dim // 2]
        self.ops.rope_tables(positions.astype(np.float64), rope_dim, float(base), factors, cos, sin)
        return cos, sin

    def rope(self, x, angles, neox):
        self.ops.rope(x, *angles, neox)
        return x

    def store_kv(self, dst, values, transposed=None, start=0):
        self.ops.store_as_half(dst, values)
        if transposed is not None:
            self.ops.store_keys_transposed(transposed, start, values)

    def attention(self, q, k, v, start, out, scale=0.0, window=0, softcap=0.0, sinks=None, kt=None):
        n, hd = q.shape[0], q.shape[2]
        # One definition per layer kind, whatever the batch (batch invariance): softcap or sinks one query
        # and head at a time; else kernels.ops._lanes' arithmetic, laid out for the batch at hand.
        if sinks is not None or softcap != 0.0 or hd % 8:
            self.ops.attention(q, k, v, start, self._scores, out, float(scale), int(window), float(softcap), sinks)
        elif n < HEADS_BELOW and kt is not None and hd % 16 == 0:  # a token or a few: keys in the lanes
            self.ops.attention_decode(q, kt, v, start, self._scores, out, float(scale), int(window))
        elif n < HEADS_BELOW:                                   # (the heads in the lanes)
            self.ops.attention_heads(q, k, v, start, self._lanes_scratch(hd), out, float(scale), int(window))
        else:                                                   # a prompt: its queries in the lanes
            if k.dtype == np.uint16:  # the cache's halves as floats once, not at every use
                k, v = self._as_floats(k, 0), self._as_floats(v, 1)
            self.ops.attention_blocked(q, k, v, start, self._lanes_scratch(hd), out, float(scale), int(window))
        return out

    def swiglu(self, gate, up, out):
        self.ops.swiglu(gate, up, out)
        return out

    def geglu(self, gate, up, out):
        self.ops.geglu(gate, up, out)
        return out

    def layernorm(self, x, weight, bias, eps, out):
        self.ops.layernorm(x, weight, self._no_bias[: x.shape[1]] if bias is None else bias, np.float32(eps), out)
        return out

    def gelu(self, x, out):
        self.ops.gelu(x, out)
        return out

    def allocate(self, n_batch: int, n_heads: int, n_ctx: int, rope_dim: int) -> None:
        self.n_batch = n_batch
        self._q8 = {}                                                # (width, kind) -> Q8Activations or BF16Activations
        self._scores = self.ops.decode_scores(n_heads, n_ctx)       # (heads, n_ctx rounded up to 16)
        self._n_ctx, self._attention_scratch, self._kv_floats = n_ctx, None, None
        self._rope_cos = np.empty((2, n_batch, rope_dim // 2), np.float32)   # two tables (rope_angles)
        self._rope_sin = np.empty((2, n_batch, rope_dim // 2), np.float32)
        self._no_factors = np.ones(rope_dim // 2, np.float32)
        self._no_bias = np.zeros(1 << 16, np.float32)                # layernorm without a bias


    def _lanes_scratch(self, head_dim: int) -> np.ndarray:
        """attention_blocked's and attention_heads' scratch: made at first use, again only if the threads grow."""
        import numba
        threads = numba.get_num_threads()
        if self._attention_scratch is None or self._attention_scratch.shape[0] < threads:
            self._attention_scratch = self.ops.attention_scratch(threads, self._n_ctx, head_dim)
        return self._attention_scratch

    def _as_floats(self, halves: np.ndarray, which: int) -> np.ndarray:
        """One layer's keys (which=0) or values (1) from the cache as float32, in scratch made at the
        first prompt: (n_ctx, n_head_kv, head_dim) each."""
        if self._kv_floats is None:
            self._kv_floats = tuple(np.empty((self._n_ctx,) + halves.shape[1:], np.float32) for _ in range(2))
        floats = self._kv_floats[which][: halves.shape[0]]
        self.ops.halves_to_floats(halves, floats)
        return floats


HEADS_BELOW = 4  # queries: fewer take attention_heads (the heads in the lanes), more attention_blocked

BACKENDS = {"numpy": NumpyBackend, "numba": NumbaBackend}
