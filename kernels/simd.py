"""Row dot products written as LLVM vector IR, one per weight format.

Numba's integer typing widens int8 products to int64 and its loops over quantised blocks
vectorise across the wrong axis (gathers), so the inner loops live here as `@intrinsic`s
that emit LLVM vector instructions directly: load a block, widen, multiply, accumulate in
a vector register, reduce once per row. LLVM picks the instructions for the target CPU
(vpmaddwd on AVX2/AVX512, vcvtph2ps for halves, NEON on aarch64).

Every function takes a weight row as raw bytes (uint8, C-contiguous) and the activation
row, and returns float32. The numpy definitions are `weights.quants` (dequantise) and a
float dot; tests/test_kernels.py holds the two together.

Quantised formats multiply by activations quantised to 8 bits per block of 32, as
llama.cpp does: xq int8 (k,), xd float32 (k/32,) scales, xs float32 (k/32,) = xd * sum(xq).
"""
from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from . import cpu

I8, I16, I32, F16, F32 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.HalfType(), ir.FloatType()


def vec(t, n):
    return ir.VectorType(t, n)


def _ptr(context, builder, aty, arr, index, elt):
    """Pointer to arr[index] (index in elements of the array's dtype), cast to elt*."""
    data = context.make_array(aty)(context, builder, arr).data
    return builder.bitcast(builder.gep(data, [index]), elt.as_pointer())


def _call_intrinsic(builder, name, ret, args, fastmath=()):
    module = builder.module
    fn = module.globals.get(name)
    if fn is None:
        fn = ir.Function(module, ir.FunctionType(ret, [a.type for a in args]), name)
    return builder.call(fn, args, fastmath=fastmath)


def _splat(builder, value, n):
    v = ir.Constant(vec(value.type, n), None)
    v = builder.insert_element(v, value, ir.Constant(I32, 0))
    return builder.shuffle_vector(v, v, ir.Constant(vec(I32, n), [0] * n))


def _halves_sum(builder, v, n):
    """<n x T> -> <n/2 x T>: first half plus second half (keeps the sum, halves the width)."""
    lo = builder.shuffle_vector(v, v, ir.Constant(vec(I32, n // 2), list(range(n // 2))))
    hi = builder.shuffle_vector(v, v, ir.Constant(vec(I32, n // 2), list(range(n // 2, n))))
    return builder.add(lo, hi) if isinstance(v.type.element, ir.IntType) else builder.fadd(lo, hi)


def _reduce_fadd(builder, acc):
    # reassoc: an in-order reduction would serialise the lanes
    lanes = acc.type.count
    return _call_intrinsic(builder, f"llvm.vector.reduce.fadd.v{lanes}f32", F32,
                           [ir.Constant(F32, 0.0), acc], fastmath=("reassoc",))


def _native_halves() -> bool:
    """Whether the target converts halves in hardware (F16C on x86, always on aarch64)."""
    return cpu.is_arm() or cpu.has("avx2")


def _const(t, value):
    return ir.Constant(t, [value] * t.count) if isinstance(t, ir.VectorType) else ir.Constant(t, value)


def half_bits_to_float(builder, bits):
    """i16 (or <n x i16>) IEEE half bits -> float (or <n x float>).

    vcvtph2ps where the target has it; otherwise integer arithmetic (x86-64 without F16C
    has no instruction, and LLVM's libcall is not linked into Numba's JIT).
    """
    is_vec = isinstance(bits.type, ir.VectorType)
    n = bits.type.count if is_vec else None
    half_t, float_t, i32_t = (vec(F16, n), vec(F32, n), vec(I32, n)) if is_vec else (F16, F32, I32)
    if _native_halves():
        return builder.fpext(builder.bitcast(bits, half_t), float_t)
    h = builder.zext(bits, i32_t)
    magnitude = builder.shl(builder.and_(h, _const(i32_t, 0x7FFF)), _const(i32_t, 13))  # exponent+mantissa in place
    exponent = builder.and_(magnitude, _const(i32_t, 0x7C00 << 13))
    normal = builder.add(magnitude, _const(i32_t, (127 - 15) << 23))                    # rebias the exponent
    inf_nan = builder.add(normal, _const(i32_t, (128 - 16) << 23))
    # subnormal: let the FPU renormalise: (magnitude + 1<<23 as float) - 2^-14
    sub = builder.fsub(builder.bitcast(builder.add(normal, _const(i32_t, 1 << 23)), float_t),
                       _const(float_t, 2.0 ** -14))
    out = builder.select(builder.icmp_unsigned("==", exponent, _const(i32_t, 0x7C00 << 13)), inf_nan, normal)
    out = builder.select(builder.icmp_unsigned("==", exponent, _const(i32_t, 0)), builder.bitcast(sub, i32_t), out)
    sign = builder.shl(builder.and_(h, _const(i32_t, 0x8000)), _const(i32_t, 16))
    return builder.bitcast(builder.or_(out, sign), float_t)


def float_to_half_bits(builder, value):
    """float -> i16 bits of the nearest half (ties to even); hardware or integer arithmetic as above.

    The integer path covers what activation scales need: zero, subnormal and normal halves;
    values past the half range become infinity.
    """
    if _native_halves():
        return builder.bitcast(builder.fptrunc(value, F16), I16)
    f = builder.bitcast(value, I32)
    sign = builder.and_(builder.lshr(f, ir.Constant(I32, 16)), ir.Constant(I32, 0x8000))
    absf = builder.and_(f, ir.Constant(I32, 0x7FFFFFFF))
    # normal halves: round the mantissa to 10 bits, ties to even, then rebias the exponent
    odd = builder.and_(builder.lshr(absf, ir.Constant(I32, 13)), ir.Constant(I32, 1))
    rounded = builder.add(absf, builder.add(ir.Constant(I32, 0xFFF), odd))
    normal = builder.lshr(builder.sub(rounded, ir.Constant(I32, (127 - 15) << 23)), ir.Constant(I32, 13))
    # subnormal halves: value / 2^-24 rounded to an integer, by adding 0.5 (the FPU rounds to even)
    sub_f = builder.fadd(builder.bitcast(absf, F32), ir.Constant(F32, 0.5))
    sub = builder.sub(builder.bitcast(sub_f, I32), builder.bitcast(ir.Constant(F32, 0.5), I32))
    is_sub = builder.icmp_unsigned("<", absf, ir.Constant(I32, 113 << 23))                # below 2^-14
    too_big = builder.icmp_unsigned(">=", rounded, ir.Constant(I32, 143 << 23))         # rounds past 65504
    out = builder.select(is_sub, sub, builder.select(too_big, ir.Constant(I32, 0x7C00), normal))
    return builder.trunc(builder.or_(out, sign), I16)


def _load_f16_at(builder, row_ptr, byte_offset):
    """A little-endian half at row_ptr + byte_offset (any alignment) -> float."""
    p = builder.bitcast(builder.gep(row_ptr, [ir.Constant(I32, byte_offset)]), I16.as_pointer())
    return half_bits_to_float(builder, builder.load(p, align=1))


def _load_vec(builder, base, index, stride, vtype):
    """The vector of type vtype at base + index * stride (base: a byte or element pointer)."""
    p = builder.gep(base, [builder.mul(index, ir.Constant(index.type, stride))])
    return builder.load(builder.bitcast(p, vtype.as_pointer()), align=1)


def _block_loop(builder, n, lanes, body, n_acc=4):
    """Sum body's contributions over steps 0..n-1 -> float32.

    body(i, acc, extra) -> (acc, extra): acc a <lanes x float> accumulator, extra a scalar one
    (for per-block terms such as Q4_1's minimum). Steps go round-robin to n_acc independent
    accumulators so consecutive blocks do not wait on each other's multiply-add.
    """
    zero = ir.Constant(vec(F32, lanes), None)
    accs = [cgutils.alloca_once_value(builder, zero) for _ in range(n_acc)]
    extra = cgutils.alloca_once_value(builder, ir.Constant(F32, 0.0))

    def step(i, acc):
        new_acc, new_extra = body(i, builder.load(acc), builder.load(extra))
        builder.store(new_acc, acc)
        builder.store(new_extra, extra)

    width = ir.Constant(n.type, n_acc)
    with cgutils.for_range(builder, builder.udiv(n, width)) as loop:
        first = builder.mul(loop.index, width)
        for j, acc in enumerate(accs):
            step(builder.add(first, ir.Constant(n.type, j)), acc)
    done = builder.mul(builder.udiv(n, width), width)
    with cgutils.for_range(builder, builder.sub(n, done)) as loop:  # the remaining steps
        step(builder.add(done, loop.index), accs[0])
    total = builder.load(accs[0])
    for acc in accs[1:]:
        total = builder.fadd(total, builder.load(acc))
    return builder.fadd(_reduce_fadd(builder, total), builder.load(extra))


def _int_dot32(builder, w, x, w_nonnegative):
    """<32 x i8> w . <32 x i8> x -> <8 x i32> partial sums, with the best instructions the level has.

    x86 multiplies unsigned by signed bytes (vpmaddubsw, or vpdpbusd with VNNI): a signed w
    is made unsigned by moving its sign onto x (llama.cpp's trick). w_nonnegative: w is
    known to be in 0..127 (4-bit quants), so no sign moving is needed.
    """
    if cpu.has("avx2"):
        if w_nonnegative:
            u, s = w, x
        else:
            u = _call_intrinsic(builder, "llvm.abs.v32i8", vec(I8, 32), [w, ir.Constant(ir.IntType(1), 0)])
            s = _call_intrinsic(builder, "llvm.x86.avx2.psign.b", vec(I8, 32), [x, w])
        if cpu.has("vnni"):
            as_i32 = vec(I32, 8)
            return _call_intrinsic(builder, "llvm.x86.avx512.vpdpbusd.256", as_i32,
                                   [ir.Constant(as_i32, None), builder.bitcast(u, as_i32), builder.bitcast(s, as_i32)])
        pairs = _call_intrinsic(builder, "llvm.x86.avx2.pmadd.ub.sw", vec(I16, 16), [u, s])   # <16 x i16>
        return _call_intrinsic(builder, "llvm.x86.avx2.pmadd.wd", vec(I32, 8),
                               [pairs, ir.Constant(vec(I16, 16), [1] * 16)])
    if cpu.has("dotprod"):
        halves = []
        for h in (range(0, 16), range(16, 32)):
            idx = ir.Constant(vec(I32, 16), list(h))
            halves.append(_call_intrinsic(builder, "llvm.aarch64.neon.sdot.v4i32.v16i8", vec(I32, 4), [
                ir.Constant(vec(I32, 4), None), builder.shuffle_vector(w, w, idx), builder.shuffle_vector(x, x, idx)]))
        return builder.shuffle_vector(halves[0], halves[1], ir.Constant(vec(I32, 8), list(range(8))))
    prod = builder.mul(builder.sext(w, vec(I32, 32)), builder.sext(x, vec(I32, 32)))
    return _halves_sum(builder, _halves_sum(builder, prod, 32), 16)


def _nibbles(builder, packed):
    """<16 x i8> packed -> <32 x i8>: low nibbles (weights 0..15), then high nibbles (16..31)."""
    lo = builder.and_(packed, ir.Constant(vec(I8, 16), [0x0F] * 16))
    hi = builder.lshr(packed, ir.Constant(vec(I8, 16), [4] * 16))
    return builder.shuffle_vector(lo, hi, ir.Constant(vec(I32, 32), list(range(32))))


def _quant_dot(block_bytes, unpack, correction):
    """Codegen of a row dot for a 32-weight block format against q8 activations.

    unpack(builder, block) -> (<32 x i8> quants, quants known non-negative);
    correction(builder, block, d_w, xs_b) -> a float added per block (Q4_0's -8 offset,
    Q4_1's minimum), or None.
    """
    def codegen(context, builder, sig, args):
        w, xq, xd, xs, nblk = args
        row = _ptr(context, builder, sig.args[0], w, ir.Constant(I32, 0), I8)
        x_row = _ptr(context, builder, sig.args[1], xq, ir.Constant(I32, 0), I8)

        def body(b, acc, extra):                                                  # acc: <8 x float>
            block = builder.gep(row, [builder.mul(b, ir.Constant(b.type, block_bytes))])
            quants, nonnegative = unpack(builder, block)
            isum = _int_dot32(builder, quants, _load_vec(builder, x_row, b, 32, vec(I8, 32)), nonnegative)
            d_w = _load_f16_at(builder, block, 0)
            scale = builder.fmul(d_w, builder.load(_ptr(context, builder, sig.args[2], xd, b, F32)))
            acc = _call_intrinsic(builder, "llvm.fmuladd.v8f32", vec(F32, 8),
                                  [builder.sitofp(isum, vec(F32, 8)), _splat(builder, scale, 8), acc])
            if correction is not None:
                xs_b = builder.load(_ptr(context, builder, sig.args[3], xs, b, F32))
                extra = builder.fadd(extra, correction(builder, block, d_w, xs_b))
            return acc, extra

        return _block_loop(builder, nblk, 8, body)

    def typer(typingctx, w, xq, xd, xs, nblk):
        return types.float32(w, xq, xd, xs, types.intp), codegen
    return intrinsic(typer)


def _packed_nibbles_at(builder, block, offset):
    return _nibbles(builder, _load_vec(builder, builder.gep(block, [ir.Constant(I32, offset)]),
                                       ir.Constant(I32, 0), 0, vec(I8, 16)))


# Q8_0: d, 32 x int8                      sum_j d*q_j * x_j
def _unpack_q8_0(b, blk):
    return _load_vec(b, b.gep(blk, [ir.Constant(I32, 2)]), ir.Constant(I32, 0), 0, vec(I8, 32)), False


# Q4_0: d, 16 bytes of nibbles            sum_j d*(q_j - 8) * x_j = d*(sum_j q_j x_j) - 8*d*sum_j x_j
def _unpack_q4_0(b, blk):
    return _packed_nibbles_at(b, blk, 2), True


def _minus_8(b, blk, d_w, xs):
    return b.fmul(b.fmul(d_w, ir.Constant(F32, -8.0)), xs)


# Q4_1: d, m, 16 bytes of nibbles         sum_j (d*q_j + m) * x_j = d*(sum_j q_j x_j) + m*sum_j x_j
def _unpack_q4_1(b, blk):
    return _packed_nibbles_at(b, blk, 4), True


def _minimum(b, blk, d_w, xs):
    return b.fmul(_load_f16_at(b, blk, 2), xs)


dot_q8_0 = _quant_dot(34, _unpack_q8_0, None)
dot_q4_0 = _quant_dot(18, _unpack_q4_0, _minus_8)
dot_q4_1 = _quant_dot(20, _unpack_q4_1, _minimum)


def _float_dot(load_chunk, bytes_per_chunk):
    """Row dot of a float format, 32 weights per step, against float32 activations."""
    def codegen(context, builder, sig, args):
        w, x, n_chunks = args
        row = _ptr(context, builder, sig.args[0], w, ir.Constant(I32, 0), I8)
        x_row = _ptr(context, builder, sig.args[1], x, ir.Constant(I32, 0), F32)

        def body(i, acc, extra):                                                   # acc: <16 x float>
            wv = load_chunk(builder, builder.gep(row, [builder.mul(i, ir.Constant(i.type, bytes_per_chunk))]))
            prod = builder.fmul(wv, _load_vec(builder, x_row, i, 32, vec(F32, 32)), flags=("contract",))
            return builder.fadd(acc, _halves_sum(builder, prod, 32), flags=("contract", "reassoc")), extra

        return _block_loop(builder, n_chunks, 16, body)

    def typer(typingctx, w, x, n_chunks):
        return types.float32(w, x, types.intp), codegen
    return intrinsic(typer)


def _load_f32x32(builder, p):
    return builder.load(builder.bitcast(p, vec(F32, 32).as_pointer()), align=1)


def _load_f16x32(builder, p):
    return half_bits_to_float(builder, builder.load(builder.bitcast(p, vec(I16, 32).as_pointer()), align=1))


def _load_bf16x32(builder, p):
    bits = builder.zext(builder.load(builder.bitcast(p, vec(I16, 32).as_pointer()), align=1), vec(I32, 32))
    return builder.bitcast(builder.shl(bits, ir.Constant(vec(I32, 32), [16] * 32)), vec(F32, 32))


dot_f32 = _float_dot(_load_f32x32, 128)
dot_f16 = _float_dot(_load_f16x32, 64)
dot_bf16 = _float_dot(_load_bf16x32, 64)


@intrinsic
def half_to_float(typingctx, bits):
    """uint16 IEEE half bits -> float32 (vcvtph2ps on x86, fcvt on ARM)."""
    def codegen(context, builder, sig, args):
        return half_bits_to_float(builder, args[0])
    return types.float32(types.uint16), codegen


@intrinsic
def float_to_half(typingctx, value):
    """float32 -> the bits of the nearest IEEE half (round to nearest even), as uint16."""
    def codegen(context, builder, sig, args):
        return float_to_half_bits(builder, args[0])
    return types.uint16(types.float32), codegen


# --- register tiles: R weight rows x T tokens at once (tinyBLAS's idea) -------------------
#
# A prompt multiplies every weight row by many tokens. Computing one output at a time
# re-reads and re-converts each weight block for every token; a tile loads R rows' blocks
# and T tokens' activations once per step and forms all R*T products from registers.

def _row_pointers(context, builder, aty, arr, first, count):
    """Byte pointers to rows first..first+count-1 of a 2-D array."""
    ary = context.make_array(aty)(context, builder, arr)
    stride = cgutils.unpack_tuple(builder, ary.strides)[0]
    base = builder.bitcast(ary.data, I8.as_pointer())
    return [builder.gep(base, [builder.mul(builder.add(first, ir.Constant(first.type, i)), stride)])
            for i in range(count)]


def _store_out(context, builder, aty, out, t, r, value):
    """out[t, r] = value for a 2-D float32 array."""
    ary = context.make_array(aty)(context, builder, out)
    s0, s1 = cgutils.unpack_tuple(builder, ary.strides)
    base = builder.bitcast(ary.data, I8.as_pointer())
    p = builder.gep(base, [builder.add(builder.mul(t, s0), builder.mul(r, s1))])
    builder.store(value, builder.bitcast(p, F32.as_pointer()))


def _quant_tile(block_bytes, unpack, correction, R, T):
    """Intrinsic tile(w, r0, xq, xd, xs, t0, out): out[t0:t0+T, r0:r0+R] for a quantised format.

    w: (rows, row_bytes) uint8; xq: (n, k) int8; xd, xs: (n, k/32) float32; out: (n, rows).
    """
    def codegen(context, builder, sig, args):
        w, r0, xq, xd, xs, t0, out = args
        w_ty, _, xq_ty, xd_ty, xs_ty, _, out_ty = sig.args
        nblk = cgutils.unpack_tuple(builder, context.make_array(xd_ty)(context, builder, xd).shape)[1]
        rows = _row_pointers(context, builder, w_ty, w, r0, R)
        xq_rows = _row_pointers(context, builder, xq_ty, xq, t0, T)
        xd_rows = [builder.bitcast(p, F32.as_pointer()) for p in _row_pointers(context, builder, xd_ty, xd, t0, T)]
        xs_rows = [builder.bitcast(p, F32.as_pointer()) for p in _row_pointers(context, builder, xs_ty, xs, t0, T)]
        accs = [[cgutils.alloca_once_value(builder, ir.Constant(vec(F32, 8), None)) for _ in range(T)] for _ in range(R)]
        extras = [[cgutils.alloca_once_value(builder, ir.Constant(F32, 0.0)) for _ in range(T)] for _ in range(R)]
        with cgutils.for_range(builder, nblk) as loop:
            b = loop.index
            blocks = [builder.gep(row, [builder.mul(b, ir.Constant(b.type, block_bytes))]) for row in rows]
            unpacked = [unpack(builder, blk) for blk in blocks]                       # R x (<32 x i8>, nonneg)
            d_w = [_load_f16_at(builder, blk, 0) for blk in blocks]
            x_q = [_load_vec(builder, p, b, 32, vec(I8, 32)) for p in xq_rows]
            d_x = [builder.load(builder.gep(p, [b])) for p in xd_rows]
            s_x = [builder.load(builder.gep(p, [b])) for p in xs_rows] if correction else None
            dw_lanes = [_splat(builder, d, 8) for d in d_w]                          # broadcast once per row
            dx_lanes = [_splat(builder, d, 8) for d in d_x]                          # and once per token
            for r in range(R):
                quants, nonnegative = unpacked[r]
                for t in range(T):
                    isum = _int_dot32(builder, quants, x_q[t], nonnegative)
                    scale = builder.fmul(dw_lanes[r], dx_lanes[t])
                    acc = _call_intrinsic(builder, "llvm.fmuladd.v8f32", vec(F32, 8),
                                          [builder.sitofp(isum, vec(F32, 8)), scale, builder.load(accs[r][t])])
                    builder.store(acc, accs[r][t])
                    if correction is not None:
                        extra = builder.fadd(builder.load(extras[r][t]), correction(builder, blocks[r], d_w[r], s_x[t]))
                        builder.store(extra, extras[r][t])
        for r in range(R):
            for t in range(T):
                total = builder.fadd(_reduce_fadd(builder, builder.load(accs[r][t])), builder.load(extras[r][t]))
                _store_out(context, builder, out_ty, out, builder.add(t0, ir.Constant(t0.type, t)),
                           builder.add(r0, ir.Constant(r0.type, r)), total)
        return context.get_dummy_value()

    def typer(typingctx, w, r0, xq, xd, xs, t0, out):
        return types.none(w, types.intp, xq, xd, xs, types.intp, out), codegen
    return intrinsic(typer)


def _float_tile(load_chunk, bytes_per_weight, R, T, lanes):
    """Intrinsic tile(w, r0, x, t0, out): out[t0:t0+T, r0:r0+R] for a float format, k a multiple of lanes."""
    def codegen(context, builder, sig, args):
        w, r0, x, t0, out = args
        w_ty, _, x_ty, _, out_ty = sig.args
        k = cgutils.unpack_tuple(builder, context.make_array(x_ty)(context, builder, x).shape)[1]
        rows = _row_pointers(context, builder, w_ty, w, r0, R)
        x_rows = [builder.bitcast(p, F32.as_pointer()) for p in _row_pointers(context, builder, x_ty, x, t0, T)]
        accs = [[cgutils.alloca_once_value(builder, ir.Constant(vec(F32, lanes), None)) for _ in range(T)]
                for _ in range(R)]
        with cgutils.for_range(builder, builder.udiv(k, ir.Constant(k.type, lanes))) as loop:
            i = loop.index
            wv = [load_chunk(builder, builder.gep(row, [builder.mul(i, ir.Constant(i.type, lanes * bytes_per_weight))]),
                             lanes) for row in rows]
            xv = [_load_vec(builder, p, i, lanes, vec(F32, lanes)) for p in x_rows]
            for r in range(R):
                for t in range(T):
                    acc = _call_intrinsic(builder, f"llvm.fmuladd.v{lanes}f32", vec(F32, lanes),
                                          [wv[r], xv[t], builder.load(accs[r][t])])
                    builder.store(acc, accs[r][t])
        for r in range(R):
            for t in range(T):
                _store_out(context, builder, out_ty, out, builder.add(t0, ir.Constant(t0.type, t)),
                           builder.add(r0, ir.Constant(r0.type, r)), _reduce_fadd(builder, builder.load(accs[r][t])))
        return context.get_dummy_value()

    def typer(typingctx, w, r0, x, t0, out):
        return types.none(w, types.intp, x, types.intp, out), codegen
    return intrinsic(typer)


def _load_f32xn(builder, p, n):
    return builder.load(builder.bitcast(p, vec(F32, n).as_pointer()), align=1)


def _load_f16xn(builder, p, n):
    return half_bits_to_float(builder, builder.load(builder.bitcast(p, vec(I16, n).as_pointer()), align=1))


def _load_bf16xn(builder, p, n):
    bits = builder.zext(builder.load(builder.bitcast(p, vec(I16, n).as_pointer()), align=1), vec(I32, n))
    return builder.bitcast(builder.shl(bits, ir.Constant(vec(I32, n), [16] * n)), vec(F32, n))


# Tile shapes per level: accumulators must fit the register file (32 zmm/ymm with AVX512, 16 ymm below).
WIDE = cpu.has("avx512")
QUANT_TILE = (4, 4) if WIDE else (2, 3)
FLOAT_TILE, FLOAT_LANES = ((4, 3), 16) if WIDE else ((4, 2), 8)

tile_q8_0 = _quant_tile(34, _unpack_q8_0, None, *QUANT_TILE)
tile_q4_0 = _quant_tile(18, _unpack_q4_0, _minus_8, *QUANT_TILE)
tile_q4_1 = _quant_tile(20, _unpack_q4_1, _minimum, *QUANT_TILE)
tile_f32 = _float_tile(_load_f32xn, 4, *FLOAT_TILE, FLOAT_LANES)
tile_f16 = _float_tile(_load_f16xn, 2, *FLOAT_TILE, FLOAT_LANES)
tile_bf16 = _float_tile(_load_bf16xn, 2, *FLOAT_TILE, FLOAT_LANES)
