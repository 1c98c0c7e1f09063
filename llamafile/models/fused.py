"""Decoding one token through every block in a single Numba call, from the architecture's own steps.

Decoding is one token at a time, and going through Python for each step of each block
(norm, quantise, seven matmuls, rope, attention, swiglu: ~20 calls per block) costs more than
the arithmetic for a small model. Here the block loop runs inside one jitted function that
interprets the architecture's step list (llamafile.models.steps), turned into integer tables:
one row per step (opcode and operands: buffer numbers, offsets of norm weights and biases in one
float32 array, the matrix's column in the plan). It calls the same kernels the batch path uses,
in the same order on the same inputs, so its logits are bit for bit those of the step-by-step
path (tests/test_model.py checks). Nothing is allocated per token: the buffers are the run
state's first rows, handed over as one tuple.

The weights stay where they are: the function gets the file's whole mapped byte array and,
per block and matrix, the offset, shape and GGML type of the weight's bytes in it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from kernels.matmul import (SUPPORTED, activations, block_weights, matvec, quantize_q8_k_serial, quantize_q8_serial,
                            types_mask)
from kernels.ops import (attention, attention_decode, attention_heads, geglu, gelu, layernorm, rmsnorm, rope, store_as_half,
                         store_keys_transposed, swiglu)

rmsnorm_serial, rope_serial, swiglu_serial, geglu_serial = rmsnorm.serial, rope.serial, swiglu.serial, geglu.serial
layernorm_serial, gelu_serial = layernorm.serial, gelu.serial

# the activations a matrix multiplies: float, or kernels.matmul.QUANTIZE's (a token's bf16 rounding is the tiles')
KINDS = {None: 0, "bf16": 0, "q8_0": 1, "q8_k": 2}

# opcodes (a step's op) and the columns of a step's row in the table
NOP = 0                                # padding: layers with fewer steps
NORM, MATMUL, ROPE, STORE_KV, ATTENTION, ADD, SWIGLU, GEGLU, SCALE, LAYERNORM, COPY, GELU = range(1, 13)
OPS = {"norm": NORM, "matmul": MATMUL, "rope": ROPE, "store_kv": STORE_KV, "attention": ATTENTION, "add": ADD,
       "swiglu": SWIGLU, "geglu": GEGLU, "scale": SCALE, "layernorm": LAYERNORM, "copy": COPY, "gelu": GELU}
OP, SRC, DST, OTHER, VEC, ROWS, MAT, BIAS, QFIRST, QLAST, FORMS, TABLE, WINDOW, OFFSET, SINKS = range(15)
COLUMNS = 15
_Q8_0, _Q8_K = 13, 14                  # bits of _decoder's ops beside the opcodes': the activation kinds used


@njit(cache=True, inline="always")
def _weight(data, plan, l, j):
    """The rows (rows, row_bytes) of matrix j of block l, a view of the mapped file; its GGML type and
    activation kind."""
    offsets, rows, row_bytes, fmts, kinds = plan
    w = data[offsets[l, j] : offsets[l, j] + rows[l, j] * row_bytes[l, j]].reshape(rows[l, j], row_bytes[l, j])
    return w, fmts[l, j], kinds[l, j]


@njit(cache=True, inline="always")
def _needs(plan, l, first, last, kind):
    """Whether one of matrices first..last of block l multiplies activations of this kind (KINDS)."""
    kinds = plan[4]
    for j in range(first, last + 1):
        if kinds[l, j] == kind:
            return True
    return False


def _decoder(mask: int, ops: int, sinks: bool):
    """decode_blocks for a model whose block matrices have the GGML types in mask (kernels.matmul.types_mask)
    and whose steps use the opcodes in ops (a bit per opcode; sinks: an attention has them): only those
    formats' kernels and those steps' kernels are compiled into it (a first run compiles what the model
    needs, not every architecture's steps). The flags below are constants of the closure, so Numba drops
    the branches they turn off before it types them; a closure over ints and bools, so Numba caches one
    decode_blocks per combination."""
    q8_0, q8_k = bool(ops >> _Q8_0 & 1), bool(ops >> _Q8_K & 1)
    norm, rope_, store_kv, attention_ = (bool(ops >> op & 1) for op in (NORM, ROPE, STORE_KV, ATTENTION))
    add, swiglu_, geglu_, scale, layernorm_ = (bool(ops >> op & 1) for op in (ADD, SWIGLU, GEGLU, SCALE, LAYERNORM))
    copy, gelu_ = bool(ops >> COPY & 1), bool(ops >> GELU & 1)

    @njit(cache=True)
    def decode_blocks(data, plan, steps, factors, vectors, buffers, forms, cache_k, cache_v, cache_kt, pos, cos, sin, neox,
                      eps, eps_ln, head_dim, scores, lanes):
        """Run one token (buffers[0]: x, (1, n_embd), updated in place) through every block at position pos.

        plan: (offsets, rows, row_bytes, types, activation kinds), each (n_layer, matrices);
        steps: (n_layer, n_steps, COLUMNS) int64; factors: (n_layer, n_steps, 2) float64 (attention: scale and
        softcap; scale: the factor);
        vectors: every norm weight and bias, float32; buffers: the (1, width) activations by number;
        forms: per matmul input, its (q8_0, q8_k) scratch; cos, sin: (tables, 1, rope_dim/2);
        cache_k, cache_v: (n_layer, n_ctx, n_head_kv, head_dim), uint16 halves; cache_kt: the keys transposed
        (KVCache.kt); scores, lanes: attention's scratch (backend._scores, backend._lanes_scratch).
        """
        for l in range(steps.shape[0]):
            for i in range(steps.shape[1]):
                st = steps[l, i]
                op = st[OP]
                if norm and op == NORM:
                    src, dst = buffers[st[SRC]], buffers[st[DST]]
                    rows = st[ROWS]
                    width = src.shape[1] // rows
                    rmsnorm_serial(src.reshape(rows, width), vectors[st[VEC] : st[VEC] + width], eps,
                                   dst.reshape(rows, width))
                elif op == MATMUL:
                    src, dst = buffers[st[SRC]], buffers[st[DST]]
                    f = forms[st[FORMS]]
                    if st[QFIRST] >= 0:  # x's 8-bit forms that this and the next matrices on x multiply, made once
                        if q8_0 and _needs(plan, l, st[QFIRST], st[QLAST], 1):
                            quantize_q8_serial(src, *f[0])
                        if q8_k and _needs(plan, l, st[QFIRST], st[QLAST], 2):
                            quantize_q8_k_serial(src, *f[1])
                    w, fmt, kind = _weight(data, plan, l, st[MAT])
                    x8 = f[1] if kind == 2 else f[0]
                    matvec(mask, fmt, w, src, x8[0], x8[1], x8[2], x8[3], dst)
                    if st[BIAS] >= 0:
                        for j in range(dst.shape[1]):  # loops, not `dst[0] += ...`: the error message of
                            dst[0, j] += vectors[st[BIAS] + j]  # that slice assignment takes seconds to compile
                elif rope_ and op == ROPE:
                    x = buffers[st[SRC]]
                    rope_serial(x.reshape(1, x.shape[1] // head_dim, head_dim), cos[st[TABLE]], sin[st[TABLE]], neox)
                elif store_kv and op == STORE_KV:
                    k, v = buffers[st[SRC]], buffers[st[OTHER]]
                    store_as_half(cache_k[l, pos : pos + 1], k.reshape(1, k.shape[1] // head_dim, head_dim))
                    store_keys_transposed(cache_kt[l], pos, k.reshape(1, k.shape[1] // head_dim, head_dim))
                    store_as_half(cache_v[l, pos : pos + 1], v.reshape(1, v.shape[1] // head_dim, head_dim))
                elif attention_ and op == ATTENTION:
                    q, out = buffers[st[SRC]], buffers[st[DST]]
                    q3, out3 = q.reshape(1, q.shape[1] // head_dim, head_dim), out.reshape(1, out.shape[1] // head_dim, head_dim)
                    if sinks and st[SINKS] >= 0:
                        attention(q3, cache_k[l, : pos + 1], cache_v[l, : pos + 1], pos, scores, out3, factors[l, i, 0],
                                  st[WINDOW], factors[l, i, 1], vectors[st[SINKS] : st[SINKS] + q3.shape[1]])
                    elif factors[l, i, 1] != 0.0 or head_dim % 8:   # softcapped: as backend.attention
                        attention(q3, cache_k[l, : pos + 1], cache_v[l, : pos + 1], pos, scores, out3, factors[l, i, 0],
                                  st[WINDOW], factors[l, i, 1])
                    elif head_dim % 16:
                        attention_heads(q3, cache_k[l, : pos + 1], cache_v[l, : pos + 1], pos, lanes, out3,
                                        factors[l, i, 0], st[WINDOW])
                    else:                                             # as backend.attention chooses
                        attention_decode(q3, cache_kt[l], cache_v[l, : pos + 1], pos, scores, out3, factors[l, i, 0],
                                         st[WINDOW])
                elif add and op == ADD:
                    dst = buffers[st[DST]]
                    dst += buffers[st[OTHER]]
                elif swiglu_ and op == SWIGLU:
                    swiglu_serial(buffers[st[SRC]], buffers[st[OTHER]], buffers[st[DST]])
                elif geglu_ and op == GEGLU:
                    geglu_serial(buffers[st[SRC]], buffers[st[OTHER]], buffers[st[DST]])
                elif scale and op == SCALE:
                    dst = buffers[st[DST]]
                    dst *= np.float32(factors[l, i, 0])
                elif layernorm_ and op == LAYERNORM:
                    src, dst = buffers[st[SRC]], buffers[st[DST]]
                    rows = st[ROWS]
                    if rows == 1:
                        width = src.shape[1]
                        layernorm_serial(src, vectors[st[VEC] : st[VEC] + width], vectors[st[BIAS] : st[BIAS] + width],
                                         eps_ln, dst)
                    else:  # per head: normalised (ones and zeros at BIAS), then scaled by the weight at VEC
                        width = src.shape[1] // rows
                        layernorm_serial(src.reshape(rows, width), vectors[st[BIAS] : st[BIAS] + width],
                                         vectors[st[BIAS] + width : st[BIAS] + 2 * width], eps_ln, dst.reshape(rows, width))
                        for j in range(dst.shape[1]):
                            dst[0, j] *= vectors[st[VEC] + j]
                elif copy and op == COPY:
                    src, dst = buffers[st[SRC]], buffers[st[DST]]
                    for j in range(dst.shape[1]):
                        dst[0, j] = src[0, st[OFFSET] + j]
                elif gelu_ and op == GELU:
                    gelu_serial(buffers[st[SRC]], buffers[st[DST]])
    return decode_blocks


def _q8_forms(width: int) -> tuple:
    """Scratch for a (1, width) activation's q8_0 and q8_k forms (int8 quants, scales, sums, sums per 4)."""
    return tuple((np.empty((1, width), np.int8), np.empty((1, width // 32), np.float32),
                  np.empty((1, width // 32), np.float32), np.empty((1, width // 4), np.int32)) for _ in ("q8_0", "q8_k"))


@dataclass
class FusedDecoder:
    """What decode_blocks needs from a model, gathered once: the step tables, the plan, scratch."""
    net: object
    data: np.ndarray
    plan: tuple
    steps: np.ndarray       # (n_layer, n_steps, COLUMNS) int64
    factors: np.ndarray     # (n_layer, n_steps) float64
    vectors: np.ndarray     # float32: every norm weight and bias the steps read
    names: tuple            # the buffers' names, in the order of their numbers
    forms: tuple            # per matmul input buffer: _q8_forms
    decode: object          # decode_blocks for this model's types

    @classmethod
    def build(cls, net, gguf) -> "FusedDecoder | None":
        """None when some block matrix has no kernel (a float row not a multiple of 32): step by step then."""
        if any(b.step.op == "moe" for layer in net.layers for b in layer):
            return None  # mixtures of experts decode step by step (the experts differ per token)
        matrices = net.matrices
        if any(w.type not in SUPPORTED or w.n_per_row % max(32, block_weights(w.type)) for w in matrices):
            return None
        names = tuple(net.widths)
        number = {name: i for i, name in enumerate(names)}
        inputs = sorted({b.step.src for layer in net.layers for b in layer if b.step.op == "matmul"}, key=names.index)
        form_of = {name: i for i, name in enumerate(inputs)}
        n_steps = max(len(layer) for layer in net.layers)
        n_mat = max(sum(b.step.op == "matmul" for b in layer) for layer in net.layers)
        steps = np.zeros((len(net.layers), n_steps, COLUMNS), np.int64)
        factors = np.zeros((len(net.layers), n_steps, 2), np.float64)
        table = np.zeros((len(net.layers), n_mat, 5), np.int64)
        vectors, size = [], 0

        def place(v):  # v's offset in the vectors array
            nonlocal size
            vectors.append(v.astype(np.float32))
            size += len(v)
            return size - len(v)

        for l, layer in enumerate(net.layers):
            j, open_runs = 0, {}  # open_runs: input buffer -> the row of the matmul that quantises it
            for i, b in enumerate(layer):
                st, row = b.step, steps[l, i]
                row[:] = (OPS[st.op], number.get(st.src, 0), number.get(st.dst, 0), number.get(st.other, 0),
                          0, 1, 0, -1, -1, -1, 0, st.table, st.window, st.offset, -1)
                factors[l, i] = st.factor, st.cap
                if st.op == "attention" and b.vector is not None:
                    row[SINKS] = place(b.vector)
                if st.op == "norm":
                    row[VEC] = place(b.vector)
                    row[ROWS] = net.widths[st.src] // len(b.vector)
                elif st.op == "layernorm":
                    row[VEC] = place(b.vector)
                    if st.per_head:
                        hd = net.config.head_dim
                        row[ROWS] = net.widths[st.src] // hd
                        row[BIAS] = place(np.concatenate([np.ones(hd, np.float32), np.zeros(hd, np.float32)]))
                    else:
                        row[BIAS] = place(b.bias if b.bias is not None else np.zeros_like(b.vector))
                elif st.op == "matmul":
                    w = b.weight
                    table[l, j] = (gguf.data_offset + w.offset, w.shape[0], w.data.shape[1], int(w.type),
                                   KINDS[activations(w.type)])
                    row[MAT], row[FORMS] = j, form_of[st.src]
                    if b.bias is not None:
                        row[BIAS] = place(b.bias)
                    if st.src in open_runs:                         # the input's 8-bit forms are made: extend
                        steps[l, open_runs[st.src], QLAST] = j
                    else:
                        open_runs[st.src] = i
                        row[QFIRST] = row[QLAST] = j
                    j += 1
                open_runs.pop(st.dst, None)                         # written: its forms must be made again
        plan = tuple(np.ascontiguousarray(table[:, :, k]) for k in range(5))
        data = np.asarray(gguf.map).view(np.ndarray)                 # the whole file, uint8
        forms = tuple(_q8_forms(net.widths[name]) for name in inputs)
        vectors = np.concatenate(vectors) if vectors else np.zeros(1, np.float32)
        ops = sum(1 << int(op) for op in np.unique(steps[:, :, OP]))
        ops |= sum(1 << bit for bit, kind in ((_Q8_0, 1), (_Q8_K, 2)) if (plan[4] == kind).any())
        return cls(net, data, plan, steps, factors, vectors, names, forms,
                   _decoder(types_mask(w.type for w in matrices), ops, bool(((steps[:, :, OP] == ATTENTION) & (steps[:, :, SINKS] >= 0)).any())))

    def __call__(self, cache, pos, tables, state):
        """One token through every block; tables: the (cos, sin) per rope table, each (1, rope_dim/2)."""
        c = self.net.config
        buffers = tuple(state.buffers[name][:1] for name in self.names)
        cos = np.stack([t[0] for t in tables]) if len(tables) > 1 else tables[0][0][None]
        sin = np.stack([t[1] for t in tables]) if len(tables) > 1 else tables[0][1][None]
        self.decode(self.data, self.plan, self.steps, self.factors, self.vectors, buffers, self.forms, cache.k, cache.v, cache.kt,
                    pos, cos, sin, self.net.rope_neox, np.float32(c.norm_eps), np.float32(c.layer_norm_eps), c.head_dim,
                    self.net.backend._scores, self.net.backend._lanes_scratch(c.head_dim))
