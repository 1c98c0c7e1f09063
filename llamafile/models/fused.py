"""Decoding one token through every llama block in a single Numba call.

Decoding is one token at a time, and going through Python for each step of each block
(norm, quantise, seven matmuls, rope, attention, swiglu: ~20 calls per block) costs more than
the arithmetic for a small model. Here the block loop runs inside one jitted function that
calls the same kernels the batch path uses, in the same order on the same inputs, so its
logits are bit for bit those of the step-by-step path (tests/test_model.py checks).

The weights stay where they are: the function gets the file's whole mapped byte array and,
per block and matrix, the offset, shape and GGML type of the weight's bytes in it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from kernels.matmul import (SUPPORTED, activations, block_weights, matvec, quantize_q8_k_serial, quantize_q8_serial,
                            types_mask)
from kernels.ops import attention, rmsnorm, rope, store_as_half, swiglu

rmsnorm_serial, rope_serial, swiglu_serial = rmsnorm.serial, rope.serial, swiglu.serial

MATRICES = ("wq", "wk", "wv", "wo", "gate", "up", "down")  # the order of the per-block tables


KINDS = {None: 0, "q8_0": 1, "q8_k": 2}  # the activations a matrix multiplies: float, or kernels.matmul.QUANTIZE


@njit(cache=True, inline="always")
def _weight(data, plan, l, j):
    """The rows (rows, row_bytes) of matrix j of block l, a view of the mapped file; its GGML type and
    activation kind."""
    offsets, rows, row_bytes, fmts, kinds = plan
    w = data[offsets[l, j] : offsets[l, j] + rows[l, j] * row_bytes[l, j]].reshape(rows[l, j], row_bytes[l, j])
    return w, fmts[l, j], kinds[l, j]


@njit(cache=True, inline="always")
def _quantise(x, forms, plan, l, first, last):
    """x's 8-bit forms (q8_0, q8_k) that matrices first..last of block l multiply, each made once."""
    kinds = plan[4]
    need_0, need_k = False, False
    for j in range(first, last + 1):
        need_0 |= kinds[l, j] == 1
        need_k |= kinds[l, j] == 2
    if need_0:
        quantize_q8_serial(x, *forms[0])
    if need_k:
        quantize_q8_k_serial(x, *forms[1])


def _decoder(mask: int):
    """decode_blocks for a model whose block matrices have the GGML types in mask (kernels.matmul.types_mask):
    only those formats' kernels are compiled into it. A closure over an int, so Numba caches it per mask."""

    @njit(cache=True)
    def decode_blocks(x, data, plan, attn_norm, ffn_norm, bias, has_bias, cache_k, cache_v, pos, cos, sin, neox,
                      eps, buffers, q8):
        """Run one token (x: (1, n_embd), updated in place) through every block at position pos.

        plan: (offsets, rows, row_bytes, types, activation kinds), each (n_layer, 7) in MATRICES order;
        bias: (bq, bk, bv) each (n_layer, dim); cache_k, cache_v: (n_layer, n_ctx, n_head_kv, head_dim), uint16 halves.
        """
        h, q, k, v, att, proj, gate, up, ffn, scores = buffers
        e8, a8, f8 = q8     # 8-bit forms (q8_0, q8_k) of activations of width n_embd, q_dim, n_ff
        q2, k2, v2 = q.reshape(1, -1), k.reshape(1, -1), v.reshape(1, -1)          # (1, heads * head_dim)
        att3 = att.reshape(q.shape)                                                # (1, n_head, head_dim)

        def project(l, j, x_in, forms, out):  # out (1, rows) = W x_in for matrix j of block l
            w, fmt, kind = _weight(data, plan, l, j)
            x8 = forms[1] if kind == 2 else forms[0]
            matvec(mask, fmt, w, x_in, x8[0], x8[1], x8[2], x8[3], out)

        for l in range(attn_norm.shape[0]):
            rmsnorm_serial(x, attn_norm[l], eps, h)
            _quantise(h, e8, plan, l, 0, 2)
            project(l, 0, h, e8, q2)
            project(l, 1, h, e8, k2)
            project(l, 2, h, e8, v2)
            if has_bias:
                q2[0] += bias[0][l]
                k2[0] += bias[1][l]
                v2[0] += bias[2][l]
            rope_serial(q, cos, sin, neox)
            rope_serial(k, cos, sin, neox)
            store_as_half(cache_k[l, pos : pos + 1], k)   # halves, as llama.cpp's cache
            store_as_half(cache_v[l, pos : pos + 1], v)
            attention(q, cache_k[l, : pos + 1], cache_v[l, : pos + 1], pos, scores, att3)
            _quantise(att, a8, plan, l, 3, 3)
            project(l, 3, att, a8, proj)
            x += proj
            rmsnorm_serial(x, ffn_norm[l], eps, h)
            _quantise(h, e8, plan, l, 4, 5)
            project(l, 4, h, e8, gate)
            project(l, 5, h, e8, up)
            swiglu_serial(gate, up, ffn)
            _quantise(ffn, f8, plan, l, 6, 6)
            project(l, 6, ffn, f8, proj)
            x += proj
    return decode_blocks


@dataclass
class FusedDecoder:
    """What decode_blocks needs from a model, gathered once: tables, stacked norms, scratch."""
    data: np.ndarray
    plan: tuple
    attn_norm: np.ndarray   # (n_layer, n_embd)
    ffn_norm: np.ndarray    # (n_layer, n_embd)
    bias: tuple             # (bq, bk, bv), each (n_layer, dim); zeros when the file has none
    has_bias: bool
    q8: tuple
    decode: object          # decode_blocks for this model's types

    @classmethod
    def build(cls, net, gguf) -> "FusedDecoder | None":
        """None when some block matrix has no kernel (a float row not a multiple of 32): step by step then."""
        blocks = net.blocks
        weights = [getattr(b, m) for b in blocks for m in MATRICES]
        if any(w.type not in SUPPORTED or w.n_per_row % max(32, block_weights(w.type)) for w in weights):
            return None
        if any(getattr(b, name) is not None for b in blocks for name in ("bo", "b_gate", "b_up", "b_down")):
            return None  # biases past q/k/v (some llama files): step by step
        data = np.asarray(gguf.map).view(np.ndarray)                           # the whole file, uint8
        table = np.array([[(gguf.data_offset + getattr(b, m).offset, getattr(b, m).shape[0],
                            getattr(b, m).data.shape[1], int(getattr(b, m).type), KINDS[activations(getattr(b, m).type)])
                           for m in MATRICES] for b in blocks], dtype=np.int64)   # (n_layer, 7, 5)
        plan = tuple(np.ascontiguousarray(table[:, :, i]) for i in range(5))
        has_bias = any(b.bq is not None for b in blocks)
        bias = tuple(np.stack([getattr(b, name) if getattr(b, name) is not None
                               else np.zeros(getattr(b, w).shape[0], np.float32) for b in blocks]).astype(np.float32)
                     for name, w in (("bq", "wq"), ("bk", "wk"), ("bv", "wv")))
        c = net.config
        q_dim = c.n_head * c.head_dim
        q8 = tuple(tuple((np.empty((1, width), np.int8), np.empty((1, width // 32), np.float32),
                          np.empty((1, width // 32), np.float32), np.empty((1, width // 4), np.int32)) for _ in ("q8_0", "q8_k"))
                   for width in (c.n_embd, q_dim, c.n_ff))                   # (q8_0, q8_k) per width
        return cls(data, plan, np.stack([b.attn_norm for b in blocks]).astype(np.float32),
                   np.stack([b.ffn_norm for b in blocks]).astype(np.float32), bias, has_bias, q8,
                   _decoder(types_mask(w.type for w in weights)))

    def __call__(self, x, cache, pos, cos, sin, neox, eps, buffers):
        self.decode(x, self.data, self.plan, self.attn_norm, self.ffn_norm, self.bias, self.has_bias,
                    cache.k, cache.v, pos, cos, sin, neox, np.float32(eps), buffers, self.q8)
