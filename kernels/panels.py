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
    sumpanel[g, b, t] = sum(xq[16g + t, 32b : 32b + 32])               (groups, k/32, 16)

vpdpbusd multiplies unsigned by signed bytes. 4-bit quants (0..15) are the unsigned side
and Q4_0's -8 starts the sum at -8 * sumpanel. Q8_0's quants are signed, so the activations
shifted by 128 are the unsigned side and the sum starts at -128 * sum(w) for the block.

The numpy definition is the same as for kernels.matmul: x @ dequantize(W).T.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from . import cpu
from .simd import (F32, I8, I16, I32, Q4_0_BLOCKS, Q4_1_BLOCKS, Q8_0_BLOCKS, _call_intrinsic, _const, _load_at,
                   _row_pointers, _splat, _store_out, half_bits_to_float, vec)

AVAILABLE = cpu.has("vnni")
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
            total = np.int32(0)
            for j in range(32 * b, 32 * b + 32):
                total += xq[t, j]
            sumpanel[g, b, lane] = total


def _splat_load(builder, ptr, offset, elt):
    """The elt at byte ptr + offset, in every lane of a <16 x elt>."""
    return _splat(builder, _load_at(builder, ptr, offset, elt), LANES)


def _lane_vector(builder, base, index, elt):
    """The <16 x elt> at index (in vectors) from base (an i8*)."""
    p = builder.gep(base, [builder.mul(index, ir.Constant(index.type, LANES * 4))])
    return builder.load(builder.bitcast(p, vec(elt, LANES).as_pointer()), align=4)


def _vpdpbusd(builder, acc, unsigned, signed):
    return _call_intrinsic(builder, "llvm.x86.avx512.vpdpbusd.512", vec(I32, LANES), [acc, unsigned, signed])


def _panel_tile(fmt, R, G):
    """Intrinsic tile(w, r0, xpanel, upanel, dpanel, spanel, sumpanel, g0, out, n):
    out[16*g0 : 16*(g0+G), r0 : r0+R] (tokens past n are not stored)."""

    def codegen(context, builder, sig, args):
        w, r0, xp, up, dp, sp, sump, g0, out, n = args
        w_ty, _, xp_ty, up_ty, dp_ty, sp_ty, sump_ty, _, out_ty, _ = sig.args
        nblk = cgutils.unpack_tuple(builder, context.make_array(dp_ty)(context, builder, dp).shape)[1]
        rows = _row_pointers(context, builder, w_ty, w, r0, R)
        x_groups = _row_pointers(context, builder, up_ty if fmt is Q8_0_BLOCKS else xp_ty,
                                 up if fmt is Q8_0_BLOCKS else xp, g0, G)          # (k/4, 16) int32 each
        d_groups = _row_pointers(context, builder, dp_ty, dp, g0, G)            # (k/32, 16) float32 each
        s_groups = _row_pointers(context, builder, sp_ty, sp, g0, G)
        sum_groups = _row_pointers(context, builder, sump_ty, sump, g0, G)
        zero_f = ir.Constant(vec(F32, LANES), None)
        accs = [[cgutils.alloca_once_value(builder, zero_f) for _ in range(G)] for _ in range(R)]
        fmuladd = "llvm.fmuladd.v16f32"

        with cgutils.for_range(builder, nblk) as loop:
            b = loop.index
            blocks = [builder.gep(row, [builder.mul(b, ir.Constant(b.type, fmt.block_bytes))]) for row in rows]
            words = builder.mul(b, ir.Constant(b.type, 8))                    # the block's first int32 of x

            def x_word(g, j):
                return _lane_vector(builder, x_groups[g], builder.add(words, ir.Constant(b.type, j)), I32)

            # integer sums of the block for every (row, group), starting from the offset terms
            if fmt is Q8_0_BLOCKS:
                starts = []
                for blk in blocks:
                    quants = _load_at(builder, blk, fmt.quants_at, vec(I8, 32))
                    total = _call_intrinsic(builder, "llvm.vector.reduce.add.v32i32", I32,
                                            [builder.sext(quants, vec(I32, 32))])
                    starts.append([_splat(builder, builder.mul(total, ir.Constant(I32, -128)), LANES)] * G)
            elif fmt.offset:
                offsets = [builder.mul(_lane_vector(builder, sum_groups[g], b, I32), _const(vec(I32, LANES), -fmt.offset))
                           for g in range(G)]
                starts = [offsets] * R
            else:
                starts = [[ir.Constant(vec(I32, LANES), None)] * G] * R
            isums = [list(s) for s in starts]

            if fmt.nibbles:
                for i in range(4):      # packed word i: low nibbles are weights 4i.., high ones 16+4i..
                    x_low = [x_word(g, i) for g in range(G)]
                    x_high = [x_word(g, 4 + i) for g in range(G)]
                    for r, blk in enumerate(blocks):
                        packed = _splat_load(builder, blk, fmt.quants_at + 4 * i, I32)
                        low = builder.and_(packed, _const(vec(I32, LANES), 0x0F0F0F0F))
                        high = builder.and_(builder.lshr(packed, _const(vec(I32, LANES), 4)),
                                            _const(vec(I32, LANES), 0x0F0F0F0F))
                        for g in range(G):
                            isums[r][g] = _vpdpbusd(builder, _vpdpbusd(builder, isums[r][g], low, x_low[g]),
                                                    high, x_high[g])
            else:
                for j in range(8):
                    xs_j = [x_word(g, j) for g in range(G)]
                    for r, blk in enumerate(blocks):
                        quants = _splat_load(builder, blk, fmt.quants_at + 4 * j, I32)
                        for g in range(G):
                            isums[r][g] = _vpdpbusd(builder, isums[r][g], xs_j[g], quants)

            d_x = [_lane_vector(builder, d_groups[g], b, F32) for g in range(G)]
            s_x = [_lane_vector(builder, s_groups[g], b, F32) for g in range(G)] if fmt.min_at is not None else None
            for r, blk in enumerate(blocks):
                d_w = _splat(builder, half_bits_to_float(builder, _load_at(builder, blk, 0, I16)), LANES)
                m_w = (_splat(builder, half_bits_to_float(builder, _load_at(builder, blk, fmt.min_at, I16)), LANES)
                       if fmt.min_at is not None else None)
                for g in range(G):
                    acc = _call_intrinsic(builder, fmuladd, vec(F32, LANES), [
                        builder.sitofp(isums[r][g], vec(F32, LANES)), builder.fmul(d_w, d_x[g]),
                        builder.load(accs[r][g])])
                    if m_w is not None:
                        acc = _call_intrinsic(builder, fmuladd, vec(F32, LANES), [m_w, s_x[g], acc])
                    builder.store(acc, accs[r][g])

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


if AVAILABLE:
    tile_q8_0 = _panel_tile(Q8_0_BLOCKS, ROWS, GROUPS)
    tile_q4_0 = _panel_tile(Q4_0_BLOCKS, ROWS, GROUPS)
    tile_q4_1 = _panel_tile(Q4_1_BLOCKS, ROWS, GROUPS)
