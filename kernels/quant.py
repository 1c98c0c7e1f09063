"""Products of quantised weight rows and 8-bit activations for every format, from its decoder (kernels.blocks).

One algorithm, specialised per format by the decoder it is built with (dots): R weight rows times
T tokens, the chunks of 32 weights in order. Integer sums per chunk (or per 16 weights):

    isum = (quants - offset) . xq             exact, 8 int32 lanes of 4 products, then summed across
                                              lanes (_fold) into one integer per output

and then one float chain per output, the same as the VNNI prompt panels' (kernels.panels), so a
token's result does not depend on which kernel computed it (see "the arithmetic" below).

The activations are quantised to 8 bits per 32 (kernels.matmul.quantize_q8: xq, dx, xs = dx sum(xq),
xsum4 = sums of 4 adjacent xq; super-blocks take q8_k, one dx per 256). The numpy definition:
x @ weights.quants.dequantize(W).T.
"""
from __future__ import annotations

import functools

from gguf import GGMLQuantizationType as T
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from . import cpu
from .blocks import _SuperBlock
from .simd import (F32, I8, I16, I32, WIDE, _call_intrinsic, _concat, _const, _int_dot, _load_at, _load_vec,
                   _row_pointers, _scaled_add, _slice, _splat, _store_out, half_bits_to_float, prefetch,
                   prefetch_next_rows, vec)

I1, I64 = ir.IntType(1), ir.IntType(64)
P_WIDE = 2 if WIDE else 1            # chunks per step
ROWS = 8 if WIDE else 4              # rows of a token's dots (T = 1)
# ... but 4 for these, whose super-blocks' integer sums fill the lanes without folding 8 rows: with AVX512,
# 1 thread, CPU time, 16384 x 2048 from memory, 8 -> 4 rows: Q4_K 15.5 -> 16.5 GB/s, Q5_K 13.7 -> 16.4,
# Q6_K 19.6 -> 21.2; Q3_K and IQ4_XS are 5-8% slower at 4, Q2_K the same; blocks of 32 slower (Q4_0 15.2
# -> 13.5, Q8_0 28 -> 25). The same bits at any count: every output follows one chain.
FOUR_ROWS = frozenset({T.Q4_K, T.Q5_K, T.Q6_K})


def rows(qtype) -> int:
    """Rows of a token's dots for a format."""
    return 4 if qtype in FOUR_ROWS else ROWS
TILE = (2, 4)                        # rows x tokens of a few-token batch's tile (R*T <= 8): the best measured


class _Blocks:
    """The blocks a step covers in one weight row, their headers decoded once; chunks on demand."""

    def __init__(self, b, fmt, row, first_chunk, n_chunks):
        self.b, self.fmt = b, fmt
        C = fmt.chunks
        first_block = b.udiv(first_chunk, ir.Constant(first_chunk.type, C)) if C > 1 else first_chunk
        self.blocks = [b.gep(row, [b.mul(b.add(first_block, ir.Constant(first_block.type, k)),
                                         ir.Constant(first_block.type, fmt.nbytes))])
                       for k in range(max(1, n_chunks // C))]
        self.headers = [fmt.header(b, blk) for blk in self.blocks]

    def group(self, first, P):
        """Blocks of 32 weights first..first+P-1 of the step -> (quants <32P x i8>, scale <8P x float>,
        mins <P x float> | None)."""
        b, fmt = self.b, self.fmt
        parts = [(self.blocks[j], self.headers[j]) for j in range(first, first + P)]
        quants = _concat(b, [fmt.quants(b, blk, hdr, 0) for blk, hdr in parts])
        scale = _concat(b, [fmt.scale(b, blk, hdr, 0) for blk, hdr in parts])
        mins = _first_lanes(b, _concat(b, [fmt.min(b, blk, hdr, 0) for blk, hdr in parts])) if fmt.min_kind else None
        return quants, scale, mins


def _first_lanes(b, v):
    """<8P x T> -> <P x T>: lane 0 of each chunk's 8."""
    P = v.type.count // 8
    return b.shuffle_vector(v, v, ir.Constant(vec(I32, P), [8 * i for i in range(P)]))


class _Activations:
    """One token's 8-bit activations as pointers: xq, xd, xs, xsum4."""

    def __init__(self, q, d, s, sum4):
        self.q, self.d, self.s, self.sum4 = q, d, s, sum4

    def chunk_terms(self, b, fmt, ch, P, chunks=None):
        """(xq <32P x i8>, integer start <8P x i32>, xsum4 <8P x i32> | None) of chunks ch..ch+P-1, or of
        chunks ch + c for c in `chunks`."""
        if chunks is not None and list(chunks) != list(range(chunks[0], chunks[0] + P)):
            parts = [self.chunk_terms(b, fmt, b.add(ch, ir.Constant(ch.type, c)), 1) for c in chunks]
            return tuple(None if part[0] is None else _concat(b, list(part)) for part in zip(*parts))
        if chunks is not None:
            ch = b.add(ch, ir.Constant(ch.type, chunks[0]))
        xq = _load_vec(b, self.q, ch, 32, vec(I8, 32 * P))
        sums = _load_vec(b, self.sum4, ch, 8, vec(I32, 8 * P)) if fmt.offset or fmt.min_kind else None
        start = b.mul(sums, _const(vec(I32, 8 * P), -fmt.offset)) if fmt.offset else ir.Constant(vec(I32, 8 * P), None)
        return xq, start, sums


def _steps(fmt):
    """(chunks per step, P chunks per group): a step is P blocks of 32, or one super-block."""
    return max(P_WIDE, fmt.chunks), P_WIDE


def _super(fmt) -> bool:
    """Super-blocks (kernels.blocks._SuperBlock): summed in integers over the whole block."""
    return isinstance(fmt, _SuperBlock)


def _activation_pointers(context, builder, tys, arrays, first, count):
    """Pointers to the activations of tokens first..first+count-1."""
    elts = (I8, F32, F32, I32)
    rows = [_row_pointers(context, builder, ty, arr, first, count) for ty, arr in zip(tys, arrays)]
    return [_Activations(*[builder.bitcast(rows[i][t], elts[i].as_pointer()) for i in range(4)]) for t in range(count)]


# --- the arithmetic every quantised product follows ------------------------------------------
#
# Batch invariance: a product's value must not depend on which kernel computed it (a token decoded
# alone, in a few-token batch, or in a prompt's VNNI panels, kernels.panels), so all of them follow
# one order per output. Blocks of 32 weights (Q8_0, Q4_0, ...):
#
#     acc = 0
#     for each chunk of 32 weights, in order:
#         acc = fma(float(isum), scale * dx, acc)          isum: the chunk's exact integer sum
#         acc = fma(min, xs, acc)                          a minimum per chunk (Q4_1, Q5_1)
#
# Super-blocks of 256 (K-quants, IQ4_XS; kernels.blocks._SuperBlock), as llama.cpp sums them:
#
#     for each super-block, in order:
#         acc = fma(min_c, xs_c, acc) for its 8 chunks     a minimum per chunk (Q4_K, Q5_K: -dmin * min)
#         acc = fma(float(sum of scale * isum), d * dx, acc)   integer scales, exact over the block
#         acc = fma(float(sum of min * sum(xq)), -dmin * dx, acc)   minimums per 16 (Q2_K)
#
# Integer sums are exact whatever their order, so only the float chain has to be followed. A
# register tile here computes the integer sums of N = R*T outputs the way the CPU likes (lanes along
# the chunk), reduces them across lanes to one integer per output (_fold), and then runs the chain
# with the N outputs in the lanes of one accumulator.

def _fold(b, vectors, G, combine):
    """vectors: N <L x T>, one per output, in aligned groups of G lanes -> [(vector, labels)], fewer
    vectors whose lanes are each one group: labels[lane] = (output, group). combine: "add" sums a
    group (pairs of lanes, then pairs of pairs: exact for integers and small integral floats),
    "take" keeps its first lane (for groups of equal lanes, such as a chunk's scale)."""
    L = vectors[0].type.count
    items = [(v, [(o, lane // G) for lane in range(L)]) for o, v in enumerate(vectors)]
    if G == 1:
        return items
    even = ir.Constant(vec(I32, L), [2 * j for j in range(L // 2)] + [L + 2 * j for j in range(L // 2)])
    odd = ir.Constant(vec(I32, L), [2 * j + 1 for j in range(L // 2)] + [L + 2 * j + 1 for j in range(L // 2)])
    size = G
    while size > 1:
        folded = []
        for i in range(0, len(items), 2):
            (a, la), (c, lc) = items[i], items[i + 1] if i + 1 < len(items) else items[i]
            v = b.shuffle_vector(a, c, even)
            if combine == "add":
                other = b.shuffle_vector(a, c, odd)
                v = b.add(v, other) if isinstance(v.type.element, ir.IntType) else b.fadd(v, other)
            folded.append((v, [la[2 * j] for j in range(L // 2)] + [lc[2 * j] for j in range(L // 2)]))
        items, size = folded, size // 2
    return items


def _pick(b, items, labels):
    """The lanes labelled `labels` from _fold's items -> <len(labels) x T>."""
    while len(items) & (len(items) - 1):
        items = items + items[-1:]
    where = {}
    L = items[0][0].type.count
    for i, (_, lab) in enumerate(items):
        for lane, key in enumerate(lab):
            where.setdefault(key, i * L + lane)
    wide = _concat(b, [v for v, _ in items])
    return b.shuffle_vector(wide, wide, ir.Constant(vec(I32, len(labels)), [where[key] for key in labels]))


def _token_lanes(b, values, R):
    """One float per token (T of them) -> <R*T x float>: output o = r*T + t takes token t's."""
    T = len(values)
    if T == 1:
        return _splat(b, values[0], R)
    v = ir.Constant(vec(F32, T), None)
    for t, value in enumerate(values):
        v = b.insert_element(v, value, ir.Constant(I32, t))
    return b.shuffle_vector(v, v, ir.Constant(vec(I32, R * T), [o % T for o in range(R * T)]))


NIBBLE_BLOCKS = 4                    # blocks per step of the nibble-order dots


def _nibble_order(fmt, R, T) -> bool:
    """Whether a row dot reads the format's nibbles in their packed order (dots' run_nibbles): a token's dots of
    several rows, blocks of 32 packing weights i and 16 + i into byte i, and byte permutes across a whole
    register (AVX512-VBMI) to gather 4 blocks' nibbles into one."""
    return T == 1 and R > 1 and fmt.nibbles_at is not None and cpu.has("vbmi") and cpu.has("vnni")


def _fifth_bit_masks(b, blocks, offsets):
    """The u32s at `offsets` (bit i: weight i's fifth bit, as Q5_0's qh) of 4 blocks -> two <64 x i1>: their low
    and their high 16 bits side by side, for the packed order's low and high nibbles. Joined in general
    registers, which the vector loop leaves idle (byte permutes for it, measured: no faster than before)."""
    words = [b.zext(_load_at(b, blocks, at, I32), I64) for at in offsets]

    def sixteen(w, h, k):
        return b.shl(b.and_(b.lshr(w, ir.Constant(I64, h)), ir.Constant(I64, 0xFFFF)), ir.Constant(I64, 16 * k))
    return [b.bitcast(functools.reduce(b.or_, [sixteen(w, h, k) for k, w in enumerate(words)]), vec(I1, 64))
            for h in (0, 16)]


def dots(fmt, R, T):
    """Intrinsic dots(w, r0, xq, xd, xs, xsum4, t0, out): out[t0:t0+T, r0:r0+R] = R weight rows (uint8
    bytes) times T tokens' 8-bit activations, in the order above. Each chunk is decoded once per row and
    each token's activations loaded once, for all R*T products (R*T <= 8 lanes of integer sums)."""
    per_step, P = _steps(fmt)
    N = R * T
    fmuladd = f"llvm.fmuladd.v{N}f32"

    def codegen(context, builder, sig, args):
        b = builder
        w, r0, xq, xd, xs, xsum4, t0, out = args
        w_ty, _, xq_ty, xd_ty, xs_ty, sum4_ty, _, out_ty = sig.args
        n_chunks = cgutils.unpack_tuple(b, context.make_array(xd_ty)(context, b, xd).shape)[1]
        rows = _row_pointers(context, b, w_ty, w, r0, R)
        ahead = prefetch_next_rows(context, b, w_ty, w, rows)
        tokens = _activation_pointers(context, b, (xq_ty, xd_ty, xs_ty, sum4_ty), (xq, xd, xs, xsum4), t0, T)
        acc_slot = cgutils.alloca_once_value(b, ir.Constant(vec(F32, N), None))
        outputs = [(r, t) for r in range(R) for t in range(T)]

        def x_lanes(ptr_of, ch):
            return _token_lanes(b, [b.load(b.gep(ptr_of(x), [ch])) for x in tokens], R)

        def row_halves(blocks, at):
            """An f16 at byte `at` of each row's (first) block -> <N x float>, output o taking its row's."""
            v = ir.Constant(vec(I16, N), None)
            for o, (r, _) in enumerate(outputs):
                v = b.insert_element(v, _load_at(b, blocks[r].blocks[0], at, I16), ir.Constant(I32, o))
            return half_bits_to_float(b, v)

        def run_super(first):
            """One super-block of every row: integer sums over the block, then d (and dmin) once."""
            acc = b.load(acc_slot)
            blocks = [_Blocks(b, fmt, row, first, fmt.chunks) for row in rows]
            prefetch_blocks(blocks)
            zero = ir.Constant(vec(I32, 8 * P), None)
            isums, msums = [zero] * N, [zero] * N
            parts = [(blk.blocks[0], blk.headers[0]) for blk in blocks]
            by_row = [fmt.chunk_groups(b, blk, hdr, P) for blk, hdr in parts]
            for g, chunks in enumerate(cs for cs, _ in by_row[0]):
                quants = [groups[g][1] for groups in by_row]
                scales = [_concat(b, [fmt.int_scale(b, blk, hdr, c) for c in chunks]) for blk, hdr in parts]
                mins = [_concat(b, [fmt.int_min(b, blk, hdr, c) for c in chunks]) for blk, hdr in parts] \
                    if fmt.min_kind == "lanes" else None
                xterms = [x.chunk_terms(b, fmt, first, P, chunks) for x in tokens]
                for o, (r, t) in enumerate(outputs):
                    isum = _int_dot(b, quants[r], xterms[t][0], not fmt.signed, xterms[t][1])
                    isums[o] = _scaled_add(b, isums[o], isum, scales[r]) if fmt.small_sums else \
                        b.add(isums[o], b.mul(isum, scales[r]))
                    if mins:
                        msums[o] = b.add(msums[o], b.mul(xterms[t][2], mins[r]))
            if fmt.min_kind == "chunk":     # each chunk's -dmin * min times its xs, in order
                mins = _fold(b, [blocks[r].headers[0][1] for r, _ in outputs], 1, "take")
                for c in range(fmt.chunks):
                    xs = x_lanes(lambda x: x.s, b.add(first, ir.Constant(first.type, c)))
                    acc = _call_intrinsic(b, fmuladd, vec(F32, N), [_pick(b, mins, [(o, c) for o in range(N)]), xs, acc])
            everything = [(o, 0) for o in range(N)]
            dx = x_lanes(lambda x: x.d, first)
            isum = b.sitofp(_pick(b, _fold(b, isums, 8 * P, "add"), everything), vec(F32, N))
            acc = _call_intrinsic(b, fmuladd, vec(F32, N), [isum, b.fmul(row_halves(blocks, fmt.d_at), dx), acc])
            if fmt.min_kind == "lanes":
                msum = b.sitofp(_pick(b, _fold(b, msums, 8 * P, "add"), everything), vec(F32, N))
                dmin = b.fneg(row_halves(blocks, fmt.dmin_at))
                acc = _call_intrinsic(b, fmuladd, vec(F32, N), [msum, b.fmul(dmin, dx), acc])
            b.store(acc, acc_slot)

        def run_nibbles(first):
            """Blocks first..first+3 of every row, their nibbles in packed order: byte i's low nibble is
            weight i and its high nibble weight 16 + i, so each row's 4 blocks give one register of low
            nibbles and one of high, each multiplied by the matching halves of the activations (vpdpbusd
            twice onto the same lanes: lanes 4k..4k+3 sum block k). The integer sums are exact, so they
            equal the weight-order ones and the float chain is the same."""
            K, nb = NIBBLE_BLOCKS, fmt.nbytes
            tail = K * nb - 64                                  # the second 64-byte load's offset
            assert 0 <= tail <= 64
            acc = b.load(acc_slot)
            group = [b.gep(row, [b.mul(first, ir.Constant(first.type, nb))]) for row in rows]
            prefetch_rows(group, K * nb)
            A = [_load_at(b, g, 0, vec(I8, 64)) for g in group]
            B = [_load_at(b, g, tail, vec(I8, 64)) for g in group]
            where = lambda byte: byte if byte < 64 else 64 + byte - tail      # noqa: E731  (in A ++ B)
            packed = ir.Constant(vec(I32, 64), [where(k * nb + fmt.nibbles_at + i)
                                                for k in range(K) for i in range(16)])
            # the blocks' small fields (scale, minimum, fifth bits) of each row: in place in the first load,
            # else gathered from both into one vector (fields[at][k]: where field `at` of block k starts)
            sizes = {fmt.scale_at: 2, **({fmt.min_at: 2} if fmt.min_kind == "chunk" else {})}
            if all(k * nb + at + size <= 64 for at, size in sizes.items() for k in range(K)):
                fields, small = {at: [k * nb + at for k in range(K)] for at in sizes}, A
            else:
                spots = [k * nb + at + i for at, size in sizes.items() for k in range(K) for i in range(size)]
                fields, n = {}, 0
                for at, size in sizes.items():
                    fields[at], n = [n + size * k for k in range(K)], n + size * K
                gather = ir.Constant(vec(I32, 32), [where(i) for i in spots] + [0] * (32 - len(spots)))
                small = [b.shuffle_vector(A[r], B[r], gather) for r in range(R)]
            width = small[0].type.count
            x = tokens[0]
            xq = _load_vec(b, x.q, first, 32, vec(I8, 32 * K))
            halves = [b.shuffle_vector(xq, xq, ir.Constant(vec(I32, 16 * K), [32 * k + h + i for k in range(K)
                                                                              for i in range(16)])) for h in (0, 16)]
            table = fmt.table                                   # signed values: looked up 128 higher, unsigned
            offset = 128 if table else fmt.offset
            start = ir.Constant(vec(I32, 4 * K), None)
            if offset:                                          # - offset * (the activations of each lane)
                sums = _load_vec(b, x.sum4, first, 8, vec(I32, 8 * K))
                lanes = [b.shuffle_vector(sums, sums, ir.Constant(vec(I32, 4 * K), [8 * k + h + j for k in range(K)
                                                                                  for j in range(4)])) for h in (0, 4)]
                start = b.mul(b.add(*lanes), _const(vec(I32, 4 * K), -offset))
            isums = []
            for r in range(R):
                q = b.shuffle_vector(A[r], B[r], packed)
                low = b.and_(q, _const(q.type, 0x0F))
                high = b.and_(b.lshr(q, _const(q.type, 4)), _const(q.type, 0x0F))
                if fmt.high_bits_at is not None:
                    masks = _fifth_bit_masks(b, group[r], [k * nb + fmt.high_bits_at for k in range(K)])
                    fifth = [b.select(m, _const(q.type, 16), ir.Constant(q.type, None)) for m in masks]
                    low, high = b.or_(low, fifth[0]), b.or_(high, fifth[1])
                if table:
                    lookup = ir.Constant(vec(I8, 64), [(v + 128) & 0xFF for v in table] * 4)
                    low, high = [_call_intrinsic(b, "llvm.x86.avx512.pshuf.b.512", vec(I8, 64), [lookup, v])
                                 for v in (low, high)]
                isums.append(_int_dot(b, high, halves[1], True, _int_dot(b, low, halves[0], True, start)))
            isums = _fold(b, isums, 4, "add")

            def row_halves_at(offset):
                """The f16 at `offset` of each row's blocks -> <K*R x float>, lane k*R + r block k of row r."""
                pair = [at + byte for at in fields[offset] for byte in (0, 1)]
                both = ir.Constant(vec(I32, 4 * K), pair + [width + i for i in pair])
                pairs = [b.shuffle_vector(small[r], small[r + 1], both) for r in range(0, R, 2)]
                by_row = _concat(b, pairs)                      # [row][block][2 bytes]
                order = [2 * (r * K + k) + byte for k in range(K) for r in range(R) for byte in (0, 1)]
                by_block = b.shuffle_vector(by_row, by_row, ir.Constant(vec(I32, 2 * K * R), order))
                return half_bits_to_float(b, b.bitcast(by_block, vec(I16, K * R)))

            scales = row_halves_at(fmt.scale_at)
            mins = row_halves_at(fmt.min_at) if fmt.min_kind == "chunk" else None
            for k in range(K):
                c = b.add(first, ir.Constant(first.type, k))
                isum = b.sitofp(_pick(b, isums, [(o, k) for o in range(R)]), vec(F32, R))
                scale = b.fmul(_slice(b, scales, k * R, R), x_lanes(lambda x: x.d, c))
                acc = _call_intrinsic(b, fmuladd, vec(F32, R), [isum, scale, acc])
                if mins is not None:
                    xs = x_lanes(lambda x: x.s, c)
                    acc = _call_intrinsic(b, fmuladd, vec(F32, R), [_slice(b, mins, k * R, R), xs, acc])
            b.store(acc, acc_slot)

        def prefetch_rows(starts, step_bytes):
            """The same step_bytes, `ahead` further on, of each row's step starting at starts[r]."""
            for start in starts:
                for line in range(0, step_bytes, 64):
                    prefetch(b, b.gep(start, [b.add(ahead, ir.Constant(ahead.type, line))]))

        def prefetch_blocks(blocks):
            prefetch_rows([blk.blocks[0] for blk in blocks], fmt.nbytes * len(blocks[0].blocks))

        def run(P, per_step, first):
            if _super(fmt):
                return run_super(first)
            acc = b.load(acc_slot)
            blocks = [_Blocks(b, fmt, row, first, per_step) for row in rows]
            prefetch_blocks(blocks)
            for g in range(0, per_step, P):
                ch = b.add(first, ir.Constant(first.type, g))
                groups = [blk.group(g, P) for blk in blocks]
                xterms = [x.chunk_terms(b, fmt, ch, P) for x in tokens]
                isums = _fold(b, [_int_dot(b, groups[r][0], xterms[t][0], not fmt.signed, xterms[t][1])
                                  for r, t in outputs], 8, "add")
                scales = _fold(b, [groups[r][1] for r, _ in outputs], 8, "take")
                if fmt.min_kind == "chunk":
                    chunk_mins = _fold(b, [groups[r][2] for r, _ in outputs], 1, "take")
                for p in range(P):
                    c = b.add(ch, ir.Constant(ch.type, p))
                    key = [(o, p) for o in range(N)]
                    isum = b.sitofp(_pick(b, isums, key), vec(F32, N))
                    scale = b.fmul(_pick(b, scales, key), x_lanes(lambda x: x.d, c))
                    acc = _call_intrinsic(b, fmuladd, vec(F32, N), [isum, scale, acc])
                    if fmt.min_kind == "chunk":
                        xs = x_lanes(lambda x: x.s, c)
                        acc = _call_intrinsic(b, fmuladd, vec(F32, N), [_pick(b, chunk_mins, key), xs, acc])
            b.store(acc, acc_slot)

        nibbles = _nibble_order(fmt, R, T)
        chunks_per_step = NIBBLE_BLOCKS if nibbles else per_step
        steps = b.udiv(n_chunks, ir.Constant(n_chunks.type, chunks_per_step))
        with cgutils.for_range(b, steps) as loop:
            first = b.mul(loop.index, ir.Constant(n_chunks.type, chunks_per_step))
            run_nibbles(first) if nibbles else run(P, per_step, first)
        if chunks_per_step > 1 and fmt.chunks == 1:                          # the blocks left at the end
            done = b.mul(steps, ir.Constant(n_chunks.type, chunks_per_step))
            with cgutils.for_range(b, b.sub(n_chunks, done)) as loop:
                run(1, 1, b.add(done, loop.index))
        acc = b.load(acc_slot)
        for o, (r, t) in enumerate(outputs):
            _store_out(context, b, out_ty, out, b.add(t0, ir.Constant(t0.type, t)), b.add(r0, ir.Constant(r0.type, r)),
                       b.extract_element(acc, ir.Constant(I32, o)))
        return context.get_dummy_value()

    def typer(typingctx, w, r0, xq, xd, xs, xsum4, t0, out):
        return types.none(w, types.intp, xq, xd, xs, xsum4, types.intp, out), codegen
    return intrinsic(typer)
