"""Prompt matmuls for quantised weights with tokens across the vector lanes (AVX512-VNNI).

The tiles of kernels.simd keep one output's partial sums in a register's lanes, so every
block of every output costs a conversion, a scale and a multiply-add. Here a register holds
16 tokens, one 32-bit lane each: a vpdpbusd multiplies 4 weights (the same in every lane)
by those 4 positions of 16 tokens, a block's 8 of them sum the block for 16 outputs, and the
block's scale is one multiply-add per 16 outputs. The 8-bit activations are repacked for
it once per matmul input, 16 tokens to a group; the weights are read in place, as everywhere.

    xpanel[g, j, t] = xq[16g + t, 4j : 4j + 4] as one int32           (groups, k/4, 16)
    upanel          = xpanel with every byte + 128 (unsigned)          (groups, k/4, 16)
    dpanel[g, b, t] = xd[16g + t, b]; spanel likewise from xs          (groups, k/32, 16)
    sumpanel[g, h, t] = sum(xq[16g + t, 16h : 16h + 16])               (groups, k/16, 16)

Every format goes through one tile, built from its decoder (kernels.blocks): a chunk of 32
quants is decoded once per row, and each of its 8 words of 4 weights is broadcast to the lanes.
vpdpbusd multiplies unsigned by signed bytes. Unsigned quants (4-bit, 5-bit, K-quants) are the
unsigned side, and a format's offset (Q4_0's 8) starts the sum at -offset * sumpanel. Signed
quants (Q8_0, IQ4) are the signed side against the activations shifted by 128, and the sum starts
at -128 * sum(w). Super-blocks (K-quants, IQ4_XS) multiply each chunk's (or 16 weights') sum by its
integer scale and scale the block's sum once. The float operations per output are those of
kernels.quant's row dots, in the same order (its "arithmetic" comment): a token's result is the
same bits here as decoded alone.

The numpy definition is the same as for kernels.matmul: x @ dequantize(W).T.
"""
from __future__ import annotations

import os

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from . import cpu
from .blocks import FORMATS, _SuperBlock
from .simd import (F32, I8, I16, I32, _call_intrinsic, _const, _load_at, _row_pointers, _splat, _store_out,
                   half_bits_to_float, vec)

# With VNNI; LLAMAFILE_PANELS=1 forces the panels on any x86 CPU, the dot products emulated (slowly), so
# that their logic is tested on machines without VNNI (tests/test_kernels.py).
AVAILABLE = cpu.has("vnni") or (os.environ.get("LLAMAFILE_PANELS") == "1" and not cpu.is_arm())
LANES = 16         # tokens per group: one int32 lane each in a 512-bit register
ROWS, GROUPS = 4, 2  # a tile: 4 weight rows x 2 groups of 16 tokens


@njit(cache=True)
def pack(xq, xd, xs, xpanel, upanel, dpanel, spanel, sumpanel):
    """8-bit activations (n, k), per-token rows -> panels of 16 tokens (padding tokens are zero)."""
    n, k = xq.shape
    words = xq.view(np.int32)                                     # (n, k/4): 4 bytes at a time
    xpanel[:] = 0
    upanel[:] = np.int32(-0x7F7F7F80)                             # 0x80808080: zero bytes + 128
    dpanel[:] = 0
    spanel[:] = 0
    sumpanel[:] = 0
    for t in range(n):
        g, lane = t // LANES, t % LANES
        for j in range(k // 4):
            xpanel[g, j, lane] = words[t, j]
            upanel[g, j, lane] = words[t, j] ^ np.int32(-0x7F7F7F80)
        for b in range(k // 32):
            dpanel[g, b, lane] = xd[t, b]
            spanel[g, b, lane] = xs[t, b]
        for h in range(k // 16):
            total = np.int32(0)
            for j in range(16 * h, 16 * h + 16):
                total += xq[t, j]
            sumpanel[g, h, lane] = total


def _lane_vector(builder, base, index, elt):
    """The <16 x elt> at index (in vectors) from base (an i8*)."""
    p = builder.gep(base, [builder.mul(index, ir.Constant(index.type, LANES * 4))])
    return builder.load(builder.bitcast(p, vec(elt, LANES).as_pointer()), align=4)


def _vpdpbusd(builder, acc, unsigned, signed):
    """acc + per lane: 4 unsigned bytes of `unsigned` times the 4 signed bytes of `signed`."""
    if cpu.has("vnni"):
        return _call_intrinsic(builder, "llvm.x86.avx512.vpdpbusd.512", vec(I32, LANES), [acc, unsigned, signed])
    u = builder.zext(builder.bitcast(unsigned, vec(I8, 4 * LANES)), vec(I32, 4 * LANES))
    s = builder.sext(builder.bitcast(signed, vec(I8, 4 * LANES)), vec(I32, 4 * LANES))
    prod = builder.mul(u, s)
    for j in range(4):
        acc = builder.add(acc, _pick(builder, prod, list(range(j, 4 * LANES, 4))))
    return acc


def _panel_tile(fmt, R, G):
    """Intrinsic tile(w, r0, xpanel, upanel, dpanel, spanel, sumpanel, g0, out, n):
    out[16*g0 : 16*(g0+G), r0 : r0+R] (tokens past n are not stored)."""
    def codegen(context, builder, sig, args):
        w, r0, xp, up, dp, sp, sump, g0, out, n = args
        w_ty, _, xp_ty, up_ty, dp_ty, sp_ty, sump_ty, _, out_ty, _ = sig.args
        n_chunks = cgutils.unpack_tuple(builder, context.make_array(dp_ty)(context, builder, dp).shape)[1]
        rows = _row_pointers(context, builder, w_ty, w, r0, R)
        x_groups = _row_pointers(context, builder, up_ty if fmt.signed else xp_ty, up if fmt.signed else xp, g0, G)
        d_groups = _row_pointers(context, builder, dp_ty, dp, g0, G)            # (k/32, 16) float32 each
        s_groups = _row_pointers(context, builder, sp_ty, sp, g0, G)
        sum_groups = _row_pointers(context, builder, sump_ty, sump, g0, G)      # (k/16, 16) int32 each
        zero_f = ir.Constant(vec(F32, LANES), None)
        accs = [[cgutils.alloca_once_value(builder, zero_f) for _ in range(G)] for _ in range(R)]
        C = fmt.chunks

        n_blocks = builder.udiv(n_chunks, ir.Constant(n_chunks.type, C)) if C > 1 else n_chunks
        with cgutils.for_range(builder, n_blocks) as loop:
            blocks = [builder.gep(row, [builder.mul(loop.index, ir.Constant(loop.index.type, fmt.nbytes))])
                      for row in rows]
            headers = [fmt.header(builder, blk) for blk in blocks]
            if isinstance(fmt, _SuperBlock):
                _super_block(builder, fmt, loop.index, blocks, headers, x_groups, d_groups, s_groups, sum_groups, accs, G)
            else:
                _chunk(builder, fmt, loop.index, blocks, headers, x_groups, d_groups, s_groups, sum_groups, accs, G)

        first_token = builder.mul(g0, ir.Constant(g0.type, LANES))
        for r in range(R):
            for g in range(G):
                acc = builder.load(accs[r][g])
                for lane in range(LANES):
                    t = builder.add(first_token, ir.Constant(g0.type, g * LANES + lane))
                    with builder.if_then(builder.icmp_signed("<", t, n)):
                        _store_out(context, builder, out_ty, out, t, builder.add(r0, ir.Constant(r0.type, r)),
                                   builder.extract_element(acc, ir.Constant(I32, lane)))
        return context.get_dummy_value()

    def typer(typingctx, w, r0, xpanel, upanel, dpanel, spanel, sumpanel, g0, out, n):
        return types.none(w, types.intp, xpanel, upanel, dpanel, spanel, sumpanel, types.intp, out, types.intp), codegen
    return intrinsic(typer)


def _int_sums(builder, fmt, quants, first, count, x_word, starts_from):
    """The G groups' <16 x i32> sums of words first..first+count-1 of a chunk's quants (<32 x i8>) times the
    activations: exact integers, the format's offset or sign correction included. starts_from(): the
    offset's per-group starts (-offset * the activations' sums), for unsigned formats with an offset."""
    G = len(x_word)
    if fmt.signed:   # -128 * sum(w): the activations come shifted by 128
        part = _pick(builder, quants, list(range(4 * first, 4 * (first + count))))
        total = _call_intrinsic(builder, f"llvm.vector.reduce.add.v{4 * count}i32", I32,
                                [builder.sext(part, vec(I32, 4 * count))])
        sums = [_splat(builder, builder.mul(total, ir.Constant(I32, -128)), LANES)] * G
    elif fmt.offset:
        sums = starts_from()
    else:
        sums = [ir.Constant(vec(I32, LANES), None)] * G
    q_words = builder.bitcast(quants, vec(I32, 8))
    for j in range(first, first + count):
        q_j = _splat(builder, builder.extract_element(q_words, ir.Constant(I32, j)), LANES)
        for g in range(G):
            x_j = x_word[g](j)
            sums[g] = _vpdpbusd(builder, sums[g], x_j, q_j) if fmt.signed else _vpdpbusd(builder, sums[g], q_j, x_j)
    return sums


def _chunk_access(builder, ch, x_groups, sum_groups):
    """(x_word[g](j): word j of chunk ch's activations for group g, x_sums(g, h): their sums of 16, half h)."""
    words = builder.mul(ch, ir.Constant(ch.type, 8))                   # the chunk's first int32 of x

    def x_word(g):
        return lambda j: _lane_vector(builder, x_groups[g], builder.add(words, ir.Constant(ch.type, j)), I32)

    def x_sums(g, h):
        return _lane_vector(builder, sum_groups[g], builder.add(builder.mul(ch, ir.Constant(ch.type, 2)),
                                                                ir.Constant(ch.type, h)), I32)
    return [x_word(g) for g in range(len(x_groups))], x_sums


def _chunk(builder, fmt, ch, blocks, headers, x_groups, d_groups, s_groups, sum_groups, accs, G):
    """accs[r][g] += block ch (32 weights) of every row times the G groups of 16 tokens."""
    fmuladd = "llvm.fmuladd.v16f32"
    x_word, x_sums = _chunk_access(builder, ch, x_groups, sum_groups)
    d_x = [_lane_vector(builder, d_groups[g], ch, F32) for g in range(G)]
    s_x = [_lane_vector(builder, s_groups[g], ch, F32) for g in range(G)] if fmt.min_kind == "chunk" else None
    for r, (blk, hdr) in enumerate(zip(blocks, headers)):
        quants = fmt.quants(builder, blk, hdr, 0)                      # <32 x i8>
        sums = _int_sums(builder, fmt, quants, 0, 8, x_word,
                         lambda: [_x_sum_range(builder, x_sums, g, 0, 1, -fmt.offset) for g in range(G)])
        scale = _pick(builder, fmt.scale(builder, blk, hdr, 0), [0] * LANES)
        for g in range(G):
            acc = _call_intrinsic(builder, fmuladd, vec(F32, LANES), [
                builder.sitofp(sums[g], vec(F32, LANES)), builder.fmul(scale, d_x[g]), builder.load(accs[r][g])])
            if fmt.min_kind == "chunk":
                acc = _call_intrinsic(builder, fmuladd, vec(F32, LANES), [
                    _pick(builder, fmt.min(builder, blk, hdr, 0), [0] * LANES), s_x[g], acc])
            builder.store(acc, accs[r][g])


def _super_block(builder, fmt, index, blocks, headers, x_groups, d_groups, s_groups, sum_groups, accs, G):
    """accs[r][g] += one super-block of every row times the G groups of 16 tokens: scale * (quants - offset)
    . x summed in integers over the block (and min * sum(x) for minimums per 16), then times d * dx (and
    -dmin * dx); minimums per chunk a float term per chunk first. As kernels.quant's dots sum it."""
    C, halves = fmt.chunks, 2 if (fmt.lane_scales or fmt.min_kind == "lanes") else 1
    per_half = 8 // halves
    zero_i = ir.Constant(vec(I32, LANES), None)
    isums = [[zero_i] * G for _ in blocks]
    msums = [[zero_i] * G for _ in blocks]
    first_chunk = builder.mul(index, ir.Constant(index.type, C))
    for c in range(C):
        ch = builder.add(first_chunk, ir.Constant(index.type, c))
        x_word, x_sums = _chunk_access(builder, ch, x_groups, sum_groups)
        for r, (blk, hdr) in enumerate(zip(blocks, headers)):
            quants = fmt.quants(builder, blk, hdr, c)
            scale = fmt.int_scale(builder, blk, hdr, c)
            for h in range(halves):
                sums = _int_sums(builder, fmt, quants, h * per_half, per_half, x_word,
                                 lambda: [_x_sum_range(builder, x_sums, g, h, halves, -fmt.offset) for g in range(G)])
                s_h = _pick(builder, scale, [4 * h] * LANES)
                for g in range(G):
                    isums[r][g] = builder.add(isums[r][g], builder.mul(sums[g], s_h))
            if fmt.min_kind == "chunk":    # -dmin * min times the chunk's xs, a float term per chunk
                m = _pick(builder, fmt.min(builder, blk, hdr, c), [0] * LANES)
                for g in range(G):
                    s_x = _lane_vector(builder, s_groups[g], ch, F32)
                    builder.store(_call_intrinsic(builder, "llvm.fmuladd.v16f32", vec(F32, LANES),
                                                  [m, s_x, builder.load(accs[r][g])]), accs[r][g])
            elif fmt.min_kind == "lanes":
                low_min = fmt.int_min(builder, blk, hdr, c)
                for h in range(halves):
                    m_h = _pick(builder, low_min, [4 * h] * LANES)
                    for g in range(G):
                        msums[r][g] = builder.add(msums[r][g], builder.mul(x_sums(g, h), m_h))

    fmuladd = "llvm.fmuladd.v16f32"
    d_x = [_lane_vector(builder, d_groups[g], first_chunk, F32) for g in range(G)]
    for r, blk in enumerate(blocks):
        d = half_bits_to_float(builder, _splat(builder, _load_at(builder, blk, fmt.d_at, I16), LANES))
        dmin = builder.fneg(half_bits_to_float(builder, _splat(builder, _load_at(builder, blk, fmt.dmin_at, I16), LANES))) \
            if fmt.min_kind == "lanes" else None
        for g in range(G):
            acc = builder.load(accs[r][g])
            acc = _call_intrinsic(builder, fmuladd, vec(F32, LANES), [
                builder.sitofp(isums[r][g], vec(F32, LANES)), builder.fmul(d, d_x[g]), acc])
            if fmt.min_kind == "lanes":
                acc = _call_intrinsic(builder, fmuladd, vec(F32, LANES), [
                    builder.sitofp(msums[r][g], vec(F32, LANES)), builder.fmul(dmin, d_x[g]), acc])
            builder.store(acc, accs[r][g])


def _x_sum_range(builder, x_sums, g, h, halves, factor):
    """factor * (the sums of activations a half (halves == 2) or a whole chunk covers), <16 x i32>."""
    total = x_sums(g, h) if halves == 2 else builder.add(x_sums(g, 0), x_sums(g, 1))
    return builder.mul(total, _const(vec(I32, LANES), factor))


def _pick(builder, v, lanes):
    return builder.shuffle_vector(v, v, ir.Constant(vec(I32, len(lanes)), lanes))


TILES = {t: _panel_tile(fmt, ROWS, GROUPS) for t, fmt in FORMATS.items()} if AVAILABLE else {}
