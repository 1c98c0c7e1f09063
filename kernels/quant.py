"""Row dots and register tiles for every quantised format, from its decoder (kernels.blocks).

One algorithm, specialised per format by the decoder it is built with:

    for each step (P chunks of 32 weights side by side: 2 in a 512-bit register, else 1):
        isum  = (quants - offset) . xq              integer dot product, 8P int32 lanes of 4 products
        acc  += float(isum) * scale * dx            one multiply-add per 8P lanes
        acc  += float(sum4(xq)) * min * dx          formats with per-16 minimums (Q2_K)
        extra += min * xs                           formats with a minimum per chunk (Q4_1, Q4_K, ...)

with the activations quantised to 8 bits per 32 (kernels.matmul.quantize_q8: xq, dx, xs = dx sum(xq),
xsum4 = sums of 4 adjacent xq). Super-blocks (K-quants, IQ4_XS: q8_k activations, one dx per 256) take
dx into their header's scales once per block, and their chunk minimums are one 8-lane multiply-add
per block (_Blocks.times_dx, chunk_min_terms). The numpy definition: x @ weights.quants.dequantize(W).T.
"""
from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .simd import (F32, I8, I32, WIDE, _block_loop, _call_intrinsic, _concat, _const, _int_dot, _load_vec, _ptr,
                   _reduce_fadd, _row_pointers, _splat, _store_out, vec)

P_WIDE = 2 if WIDE else 1   # chunks per step
TILE = (4, 4) if WIDE else (2, 3)  # rows x tokens: accumulators must fit the register file


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

    def times_dx(self, x, first_chunk):
        """Super-blocks (q8_k activations, one scale per 256): the headers' scales, and per-lane minimums,
        times the token's scale, once a super-block rather than once a chunk. The minimums per chunk are
        left alone: the block's whole term is chunk_terms (one multiply-add of 8 lanes)."""
        b, fmt = self.b, self.fmt

        def times(v, k):
            dx = b.load(b.gep(x.d, [b.add(first_chunk, ir.Constant(first_chunk.type, k * fmt.chunks))]))
            return b.fmul(v, _splat(b, dx, v.type.count))
        if isinstance(self.headers[0], tuple):
            return [(times(h[0], k), times(h[1], k) if fmt.min_kind == "lanes" else h[1])
                    for k, h in enumerate(self.headers)]
        return [times(h, k) for k, h in enumerate(self.headers)]

    def chunk_min_terms(self, x, first_chunk, extra):
        """extra (<8 x float>) += each block's chunk minimums times the chunks' activation sums (Q4_K, Q5_K)."""
        b = self.b
        for k, hdr in enumerate(self.headers):
            xs = _per_chunk(b, x.s, b.add(first_chunk, ir.Constant(first_chunk.type, k * self.fmt.chunks)), 8, F32)
            extra = _call_intrinsic(b, "llvm.fmuladd.v8f32", vec(F32, 8), [hdr[1], xs, extra])
        return extra

    def group(self, first, P, headers=None):
        """Chunks first..first+P-1 of the step -> (quants <32P x i8>, scale <8P x float>,
        chunk mins <P x float> | None, lane mins <8P x float> | None). headers: times_dx's, for super-blocks."""
        b, fmt, C = self.b, self.fmt, self.fmt.chunks
        headers = headers or self.headers
        parts = [(self.blocks[j // C], headers[j // C], j % C) for j in range(first, first + P)]
        quants = _concat(b, [fmt.quants(b, blk, hdr, c) for blk, hdr, c in parts])
        scale = _concat(b, [fmt.scale(b, blk, hdr, c) for blk, hdr, c in parts])
        mins = [fmt.min(b, blk, hdr, c) for blk, hdr, c in parts]
        chunk_min = _first_lanes(b, _concat(b, mins)) if fmt.min_kind == "chunk" else None
        lane_min = _concat(b, mins) if fmt.min_kind == "lanes" else None
        return quants, scale, chunk_min, lane_min


def _first_lanes(b, v):
    """<8P x T> -> <P x T>: lane 0 of each chunk's 8."""
    P = v.type.count // 8
    return b.shuffle_vector(v, v, ir.Constant(vec(I32, P), [8 * i for i in range(P)]))


def _spread(b, v):
    """<P x T> per chunk -> <8P x T>: each lane gets its chunk's value."""
    P = v.type.count
    return b.shuffle_vector(v, v, ir.Constant(vec(I32, 8 * P), [lane // 8 for lane in range(8 * P)]))


def _per_chunk(b, ptr, ch, P, elt):
    """P consecutive values from ptr[ch] -> <P x elt>."""
    return b.load(b.bitcast(b.gep(ptr, [ch]), vec(elt, P).as_pointer()), align=1)


class _Activations:
    """One token's 8-bit activations as pointers: xq, xd, xs, xsum4."""

    def __init__(self, q, d, s, sum4):
        self.q, self.d, self.s, self.sum4 = q, d, s, sum4

    def chunk_terms(self, b, fmt, ch, P):
        """(xq <32P x i8>, dx <8P x float>, integer start <8P x i32>, xsum4 <8P x float> | None)."""
        xq = _load_vec(b, self.q, ch, 32, vec(I8, 32 * P))
        dx = _spread(b, _per_chunk(b, self.d, ch, P, F32))
        sums = _load_vec(b, self.sum4, ch, 8, vec(I32, 8 * P)) if fmt.offset or fmt.min_kind == "lanes" else None
        start = b.mul(sums, _const(vec(I32, 8 * P), -fmt.offset)) if fmt.offset else ir.Constant(vec(I32, 8 * P), None)
        sum4 = b.sitofp(sums, vec(F32, 8 * P)) if fmt.min_kind == "lanes" else None
        return xq, dx, start, sum4


def _super(fmt) -> bool:
    """Super-block formats: their activations have one scale per 256 (q8_k), multiplied into the block's
    header once (_Blocks.times_dx), and their chunk minimums are one term per block (chunk_min_terms)."""
    return fmt.activations == "q8_k"


def _accumulate(b, fmt, group, x, ch, P, acc, extra):
    """acc (<8P x float>), extra (<P x float>) += one group of P chunks times one token's activations
    (super-blocks: the scales in group carry dx already, and the chunk minimums are added per block)."""
    quants, scale, chunk_min, lane_min = group
    xq, dx, start, sum4 = x.chunk_terms(b, fmt, ch, P)
    isum = _int_dot(b, quants, xq, not fmt.signed, start)
    fmuladd = f"llvm.fmuladd.v{8 * P}f32"
    if not _super(fmt):
        scale = b.fmul(scale, dx)
        lane_min = b.fmul(lane_min, dx) if lane_min is not None else None
    acc = _call_intrinsic(b, fmuladd, vec(F32, 8 * P), [b.sitofp(isum, vec(F32, 8 * P)), scale, acc])
    if lane_min is not None:
        acc = _call_intrinsic(b, fmuladd, vec(F32, 8 * P), [sum4, lane_min, acc])
    if chunk_min is not None and not _super(fmt):
        extra = b.fadd(extra, b.fmul(chunk_min, _per_chunk(b, x.s, ch, P, F32)))
    return acc, extra


def _extra_lanes(fmt, P):
    """The width of the accumulator of minimum terms: a chunk's (P), or a super-block's 8 chunks."""
    return 8 if _super(fmt) and fmt.min_kind == "chunk" else P


def _steps(fmt):
    """(chunks per step, P chunks per group): a step is P blocks of 32, or one super-block."""
    return max(P_WIDE, fmt.chunks), P_WIDE


def _activation_pointers(context, builder, tys, arrays, first=None, count=1):
    """Pointers to the activations of tokens first..first+count-1 (or of a 1-D token row)."""
    elts = (I8, F32, F32, I32)
    if first is None:
        return [_Activations(*[_ptr(context, builder, ty, arr, ir.Constant(I32, 0), elt)
                               for ty, arr, elt in zip(tys, arrays, elts)])]
    rows = [_row_pointers(context, builder, ty, arr, first, count) for ty, arr in zip(tys, arrays)]
    return [_Activations(*[builder.bitcast(rows[i][t], elts[i].as_pointer()) for i in range(4)]) for t in range(count)]


def row_dot(fmt):
    """Intrinsic dot(w, xq, xd, xs, xsum4, n_chunks) -> float32: one weight row (uint8 bytes) times one
    token's 8-bit activations."""
    per_step, P = _steps(fmt)

    def codegen(context, builder, sig, args):
        w, *acts, n_chunks = args
        row = _ptr(context, builder, sig.args[0], w, ir.Constant(I32, 0), I8)
        x = _activation_pointers(context, builder, sig.args[1:5], acts)[0]

        def body_for(P, per_step, base):
            def body(i, acc, extra):
                first = builder.add(base, builder.mul(i, ir.Constant(i.type, per_step)))
                blocks = _Blocks(builder, fmt, row, first, per_step)
                headers = blocks.times_dx(x, first) if _super(fmt) else None
                for g in range(0, per_step, P):
                    acc, extra = _accumulate(builder, fmt, blocks.group(g, P, headers), x,
                                             builder.add(first, ir.Constant(first.type, g)), P, acc, extra)
                if _super(fmt) and fmt.min_kind == "chunk":
                    extra = blocks.chunk_min_terms(x, first, extra)
                return acc, extra
            return body

        steps = builder.udiv(n_chunks, ir.Constant(n_chunks.type, per_step))
        zero = ir.Constant(n_chunks.type, 0)
        total = _block_loop(builder, steps, 8 * P, body_for(P, per_step, zero), n_acc=2 if per_step > 2 else 4 // per_step,
                            extra_lanes=_extra_lanes(fmt, P))
        if per_step == 1 or fmt.chunks > 1:
            return total
        done = builder.mul(steps, ir.Constant(n_chunks.type, per_step))        # an odd block at the end
        last = _block_loop(builder, builder.sub(n_chunks, done), 8, body_for(1, 1, done), n_acc=1)
        return builder.fadd(total, last)

    def typer(typingctx, w, xq, xd, xs, xsum4, n_chunks):
        return types.float32(w, xq, xd, xs, xsum4, types.intp), codegen
    return intrinsic(typer)


def tile(fmt, R=TILE[0], T=TILE[1]):
    """Intrinsic tile(w, r0, xq, xd, xs, xsum4, t0, out): out[t0:t0+T, r0:r0+R]. Each group of chunks is
    decoded once per row and each token's activations loaded once, for all R*T products."""
    per_step, P = _steps(fmt)

    def codegen(context, builder, sig, args):
        w, r0, xq, xd, xs, xsum4, t0, out = args
        w_ty, _, xq_ty, xd_ty, xs_ty, sum4_ty, _, out_ty = sig.args
        n_chunks = cgutils.unpack_tuple(builder, context.make_array(xd_ty)(context, builder, xd).shape)[1]
        rows = _row_pointers(context, builder, w_ty, w, r0, R)
        tokens = _activation_pointers(context, builder, (xq_ty, xd_ty, xs_ty, sum4_ty), (xq, xd, xs, xsum4), t0, T)

        def accumulators(P):
            return [[(cgutils.alloca_once_value(builder, ir.Constant(vec(F32, 8 * P), None)),
                      cgutils.alloca_once_value(builder, ir.Constant(vec(F32, _extra_lanes(fmt, P)), None)))
                     for _ in range(T)] for _ in range(R)]

        def run(P, per_step, first_chunk, accs):
            blocks = [_Blocks(builder, fmt, row, first_chunk, per_step) for row in rows]
            if _super(fmt):   # each token's scale enters each row's header: R * T headers a super-block
                headers = [[blk.times_dx(tokens[t], first_chunk) for t in range(T)] for blk in blocks]
            for g in range(0, per_step, P):
                ch = builder.add(first_chunk, ir.Constant(first_chunk.type, g))
                groups = [[blk.group(g, P, headers[r][t]) for t in range(T)] if _super(fmt) else [blk.group(g, P)] * T
                          for r, blk in enumerate(blocks)]
                for r in range(R):
                    for t in range(T):
                        acc, extra = accs[r][t]
                        a, e = _accumulate(builder, fmt, groups[r][t], tokens[t], ch, P, builder.load(acc), builder.load(extra))
                        builder.store(a, acc)
                        builder.store(e, extra)
            if _super(fmt) and fmt.min_kind == "chunk":
                for r in range(R):
                    for t in range(T):
                        extra = accs[r][t][1]
                        builder.store(blocks[r].chunk_min_terms(tokens[t], first_chunk, builder.load(extra)), extra)

        def totals(accs):
            return [[builder.fadd(_reduce_fadd(builder, builder.load(a)), _reduce_fadd(builder, builder.load(e)))
                     for a, e in row] for row in accs]

        wide = accumulators(P)
        steps = builder.udiv(n_chunks, ir.Constant(n_chunks.type, per_step))
        with cgutils.for_range(builder, steps) as loop:
            run(P, per_step, builder.mul(loop.index, ir.Constant(n_chunks.type, per_step)), wide)
        sums = totals(wide)
        if per_step > 1 and fmt.chunks == 1:                                 # an odd block at the end
            done = builder.mul(steps, ir.Constant(n_chunks.type, per_step))
            narrow = accumulators(1)
            with cgutils.for_range(builder, builder.sub(n_chunks, done)) as loop:
                run(1, 1, builder.add(done, loop.index), narrow)
            sums = [[builder.fadd(s, n) for s, n in zip(*pair)] for pair in zip(sums, totals(narrow))]
        for r in range(R):
            for t in range(T):
                _store_out(context, builder, out_ty, out, builder.add(t0, ir.Constant(t0.type, t)),
                           builder.add(r0, ir.Constant(r0.type, r)), sums[r][t])
        return context.get_dummy_value()

    def typer(typingctx, w, r0, xq, xd, xs, xsum4, t0, out):
        return types.none(w, types.intp, xq, xd, xs, xsum4, types.intp, out), codegen
    return intrinsic(typer)
