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

import os

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from . import cpu, load_numba_without_scipy

load_numba_without_scipy()  # before Numba's CPU target starts (on the first kernel)

I8, I16, I32, F16, F32 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.HalfType(), ir.FloatType()
# 512-bit vectors: two quantised chunks per step, 16 float lanes. LLAMAFILE_WIDE=1 forces the same code
# on an AVX2 CPU (LLVM splits the vectors), so its logic is tested there too (tests/test_kernels.py).
WIDE = cpu.has("avx512") or os.environ.get("LLAMAFILE_WIDE") == "1"


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


def _fixed_sum(builder, v):
    """The lanes' sum in one fixed order (halves added, then halves of that, ...), whatever the caller:
    the same bits from every tile shape (batch invariance)."""
    while v.type.count > 1:
        v = _halves_sum(builder, v, v.type.count)
    return builder.extract_element(v, ir.Constant(I32, 0))


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


def _load_at(builder, ptr, offset, vtype):
    """The value of type vtype at byte ptr + offset (a constant), any alignment."""
    p = builder.gep(ptr, [ir.Constant(I32, offset)]) if offset else ptr
    return builder.load(builder.bitcast(p, vtype.as_pointer()), align=1)


def _load_vec(builder, base, index, stride, vtype):
    """The vector of type vtype at base + index * stride (base: a byte or element pointer)."""
    p = builder.gep(base, [builder.mul(index, ir.Constant(index.type, stride))])
    return builder.load(builder.bitcast(p, vtype.as_pointer()), align=1)


def _int_dot32(builder, w, x, w_nonnegative):
    """<32 x i8> w . <32 x i8> x -> <8 x i32>, lane i summing bytes 4i..4i+3, without VNNI.

    x86 multiplies unsigned by signed bytes (vpmaddubsw): a signed w is made unsigned by
    moving its sign onto x (llama.cpp's trick). w_nonnegative: w is known to be in 0..127
    (4-bit quants), so no sign moving is needed.
    """
    if cpu.has("avx2"):
        u, s = (w, x) if w_nonnegative else (_abs_i8(builder, w), _sign_onto(builder, x, w))
        pairs = _call_intrinsic(builder, "llvm.x86.avx2.pmadd.ub.sw", vec(I16, 16), [u, s])   # <16 x i16>
        return _call_intrinsic(builder, "llvm.x86.avx2.pmadd.wd", vec(I32, 8),
                               [pairs, ir.Constant(vec(I16, 16), [1] * 16)])
    if cpu.has("dotprod"):
        halves = [_call_intrinsic(builder, "llvm.aarch64.neon.sdot.v4i32.v16i8", vec(I32, 4), [
            ir.Constant(vec(I32, 4), None), _slice(builder, w, i, 16), _slice(builder, x, i, 16)]) for i in (0, 16)]
        return _concat(builder, halves)
    prod = builder.mul(builder.sext(w, vec(I32, 32)), builder.sext(x, vec(I32, 32)))          # <32 x i32>
    quads = [builder.shuffle_vector(prod, prod, ir.Constant(vec(I32, 8), list(range(j, 32, 4)))) for j in range(4)]
    return builder.add(builder.add(quads[0], quads[1]), builder.add(quads[2], quads[3]))


def _int_dot(builder, w, x, w_nonnegative, init):
    """init + w . x for <32P x i8> w, x -> <8P x i32>, lane i summing bytes 4i..4i+3.

    With VNNI one vpdpbusd per 32 or 64 bytes, accumulating onto init; below, 32 bytes at a time.
    """
    n = w.type.count
    if cpu.has("vnni"):
        u, s = (w, x) if w_nonnegative else (_abs_i8(builder, w), _sign_onto(builder, x, w))
        as_i32 = vec(I32, n // 4)
        return _call_intrinsic(builder, f"llvm.x86.avx512.vpdpbusd.{n * 8}", as_i32,
                               [init, builder.bitcast(u, as_i32), builder.bitcast(s, as_i32)])
    parts = [_int_dot32(builder, _slice(builder, w, i, 32), _slice(builder, x, i, 32), w_nonnegative)
             for i in range(0, n, 32)]
    return builder.add(_concat(builder, parts), init)


def _scaled_add(builder, acc, v, scale):
    """acc + v * scale for <n x i32> vectors whose lanes v and scale fit in 16 bits (|v| < 2^15; the
    integer sums of a chunk of small quants, times a sub-block scale): vpdpwssd with VNNI (one instruction
    instead of vpmulld and vpaddd; v's upper half, its sign, meets scale's upper half made 0), else
    the plain multiply and add."""
    if cpu.has("vnni"):
        n = v.type.count
        low = builder.and_(scale, _const(scale.type, 0xFFFF))
        return _call_intrinsic(builder, f"llvm.x86.avx512.vpdpwssd.{n * 32}", vec(I32, n), [acc, v, low])
    return builder.add(acc, builder.mul(v, scale))


def _abs_i8(builder, w):
    n = w.type.count
    return _call_intrinsic(builder, f"llvm.abs.v{n}i8", vec(I8, n), [w, ir.Constant(ir.IntType(1), 0)])


def _sign_onto(builder, x, w):
    """x with w's sign: -x where w < 0 (x, w int8 vectors; where w is 0 the product is 0 anyway)."""
    if x.type.count == 32 and cpu.has("avx2"):
        return _call_intrinsic(builder, "llvm.x86.avx2.psign.b", vec(I8, 32), [x, w])
    negative = builder.icmp_signed("<", w, ir.Constant(w.type, None))
    return builder.select(negative, builder.sub(ir.Constant(x.type, None), x), x)


def _slice(builder, v, first, count):
    return builder.shuffle_vector(v, v, ir.Constant(vec(I32, count), list(range(first, first + count))))


def _concat(builder, parts):
    """Equal-length vectors side by side (a power of two of them)."""
    while len(parts) > 1:
        n = parts[0].type.count
        parts = [builder.shuffle_vector(a, b, ir.Constant(vec(I32, 2 * n), list(range(2 * n))))
                 for a, b in zip(parts[::2], parts[1::2])]
    return parts[0]




@intrinsic
def half_to_float(typingctx, bits):
    """uint16 IEEE half bits -> float32 (vcvtph2ps on x86, fcvt on ARM)."""
    def codegen(context, builder, sig, args):
        return half_bits_to_float(builder, args[0])
    return types.float32(types.uint16), codegen


@intrinsic
def as_float(typingctx, x):
    """A float32 as it is, or uint16 half bits (the KV cache) converted: one kernel for both."""
    if x == types.uint16:
        def codegen(context, builder, sig, args):
            return half_bits_to_float(builder, args[0])
    else:
        def codegen(context, builder, sig, args):
            return context.cast(builder, args[0], sig.args[0], types.float32)
    return types.float32(x), codegen


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


def prefetch(builder, p):
    """Ask for the cache line at p in L2 (a prefetch never faults, wherever p points)."""
    _call_intrinsic(builder, "llvm.prefetch.p0i8", ir.VoidType(), [p, ir.Constant(I32, 0), ir.Constant(I32, 2),
                                                                  ir.Constant(I32, 1)])


# At least this far ahead: with short rows, the next tile alone is read too soon after its prefetch (1 thread,
# from memory, 4 rows of 1536-wide Q4_K 14.8 -> 19.2 GB/s at 2 tiles ahead, Q6_K 18.6 -> 22.3; rows of 8960
# the same either way).
PREFETCH_BYTES = 8192


def prefetch_next_rows(context, builder, w_ty, w, rows):
    """The offset of the same place in the rows len(rows) * n further on (the tile n tiles ahead, n the fewest
    that are PREFETCH_BYTES), for a kernel reading several weight rows side by side: more streams than the
    hardware prefetchers follow (from memory, Q8_0 and F16 decoded at half speed 8 and 4 rows at a time
    without it). prefetch(builder, gep(row, offset + i)) as it goes."""
    stride = cgutils.unpack_tuple(builder, context.make_array(w_ty)(context, builder, w).strides)[0]
    tile = builder.mul(stride, ir.Constant(stride.type, len(rows)))
    one = ir.Constant(stride.type, 1)
    tiles = builder.add(builder.udiv(builder.sub(ir.Constant(stride.type, PREFETCH_BYTES), one), tile), one)
    return builder.mul(tile, tiles)


def _tile(R, T, step, lanes, load_w, load_x, multiply_add, step_bytes):
    """Intrinsic tile(w, r0, x, t0, out): out[t0:t0+T, r0:r0+R] for float32 activations x, k a
    multiple of step. Each step loads R rows' weights (load_w(builder, row, i); step_bytes each) and T
    tokens' activations (load_x(builder, x_row, i)) once and forms all R*T products from registers,
    accumulators of <lanes x float> (multiply_add(builder, acc, w, x))."""
    def codegen(context, builder, sig, args):
        w, r0, x, t0, out = args
        w_ty, _, x_ty, _, out_ty = sig.args
        k = cgutils.unpack_tuple(builder, context.make_array(x_ty)(context, builder, x).shape)[1]
        rows = _row_pointers(context, builder, w_ty, w, r0, R)
        ahead = prefetch_next_rows(context, builder, w_ty, w, rows) if T == 1 else None
        x_rows = [builder.bitcast(p, F32.as_pointer()) for p in _row_pointers(context, builder, x_ty, x, t0, T)]
        accs = [[cgutils.alloca_once_value(builder, ir.Constant(vec(F32, lanes), None)) for _ in range(T)]
                for _ in range(R)]
        with cgutils.for_range(builder, builder.udiv(k, ir.Constant(k.type, step))) as loop:
            if ahead is not None:
                at = builder.add(ahead, builder.mul(loop.index, ir.Constant(loop.index.type, step_bytes)))
                for row in rows:
                    for line in range(0, step_bytes, 64):
                        prefetch(builder, builder.gep(row, [builder.add(at, ir.Constant(at.type, line))]))
            wv = [load_w(builder, row, loop.index) for row in rows]
            xv = [load_x(builder, p, loop.index) for p in x_rows]
            for r in range(R):
                for t in range(T):
                    builder.store(multiply_add(builder, builder.load(accs[r][t]), wv[r], xv[t]), accs[r][t])
        for r in range(R):
            for t in range(T):
                _store_out(context, builder, out_ty, out, builder.add(t0, ir.Constant(t0.type, t)),
                           builder.add(r0, ir.Constant(r0.type, r)), _fixed_sum(builder, builder.load(accs[r][t])))
        return context.get_dummy_value()

    def typer(typingctx, w, r0, x, t0, out):
        return types.none(w, types.intp, x, types.intp, out), codegen
    return intrinsic(typer)


def _float_tile(load_chunk, bytes_per_weight, R, T, lanes):
    """The tile of a float format: lanes weights per step, converted to float32, fused multiply-adds."""
    def load_w(builder, row, i):
        return load_chunk(builder, builder.gep(row, [builder.mul(i, ir.Constant(i.type, lanes * bytes_per_weight))]),
                          lanes)

    def load_x(builder, x_row, i):
        return _load_vec(builder, x_row, i, lanes, vec(F32, lanes))

    def fmuladd(builder, acc, wv, xv):
        return _call_intrinsic(builder, f"llvm.fmuladd.v{lanes}f32", vec(F32, lanes), [wv, xv, acc])
    return _tile(R, T, lanes, lanes, load_w, load_x, fmuladd, lanes * bytes_per_weight)


def _load_f32xn(builder, p, n):
    return builder.load(builder.bitcast(p, vec(F32, n).as_pointer()), align=1)


def _load_f16xn(builder, p, n):
    return half_bits_to_float(builder, builder.load(builder.bitcast(p, vec(I16, n).as_pointer()), align=1))


def _load_bf16xn(builder, p, n):
    bits = builder.zext(builder.load(builder.bitcast(p, vec(I16, n).as_pointer()), align=1), vec(I32, n))
    return builder.bitcast(builder.shl(bits, ir.Constant(vec(I32, n), [16] * n)), vec(F32, n))


# Tile shapes per level: accumulators must fit the register file (32 zmm/ymm with AVX512, 16 ymm below).
# A token's products (decoding) take tiles of FLOAT_ROWS rows, so that as many independent sums are
# in flight; every shape sums each output in the same order, so a token's result is the same in
# any batch (batch invariance).
FLOAT_TILE, FLOAT_LANES = ((4, 3), 16) if WIDE else ((4, 2), 8)
FLOAT_ROWS = 4
# F16 converts each row's weights once per tile (vcvtph2ps): a taller tile shares that over more tokens.
# 8192 x 2048, 120 tokens, AVX512: 4x3 96 GFLOP/s (1 thread), 161 (2); 6x4 106, 188 (4x6 alike; 2x12, 3x8 spill)
F16_TILE = (6, 4) if WIDE else FLOAT_TILE


def _float_tiles(load, bytes_per_weight, tile=FLOAT_TILE):
    """(prompt tile, a token's FLOAT_ROWS rows, one row) of a float format."""
    return tuple(_float_tile(load, bytes_per_weight, R, T, FLOAT_LANES) for R, T in (tile, (FLOAT_ROWS, 1), (1, 1)))


TILES_F32 = _float_tiles(_load_f32xn, 4)
TILES_F16 = _float_tiles(_load_f16xn, 2, F16_TILE)
TILES_BF16 = _float_tiles(_load_bf16xn, 2)


# --- BF16 with AVX512-BF16: 32 products per vdpbf16ps ----------------------------------------
#
# The weights go to the instruction as they are in the file; the activations are rounded to
# bf16 first (to nearest even), as llama.cpp does for BF16 weights. Decoding too (tiles of
# FLOAT_ROWS rows convert a token's activations once per four rows), so that a token gets the
# same result alone as in a prompt.

class _BFloatType(ir.Type):
    """LLVM's bfloat: llvmlite has no class for it, and its IR is text."""

    def _to_string(self):
        return "bfloat"

    def __eq__(self, other):
        return isinstance(other, _BFloatType)

    def __hash__(self):
        return hash("bfloat")


BF = _BFloatType()


def _x_as_bf16(builder, x_ptr, i):
    """Activations x_ptr[32i : 32i + 32] (float) -> <32 x bfloat>."""
    lo = _load_vec(builder, x_ptr, i, 32, vec(F32, 16))
    hi = _load_vec(builder, builder.gep(x_ptr, [ir.Constant(I32, 16)]), i, 32, vec(F32, 16))
    return _call_intrinsic(builder, "llvm.x86.avx512bf16.cvtne2ps2bf16.512", vec(BF, 32), [hi, lo])


def _dpbf16(builder, acc, w, x):
    """acc (<16 x float>) + pairwise products of w and x (<32 x bfloat> each)."""
    return _call_intrinsic(builder, "llvm.x86.avx512bf16.dpbf16ps.512", vec(F32, 16), [acc, w, x])


def _bf16_tile(R, T):
    """tile_bf16(w, r0, x, t0, out) with vdpbf16ps: R rows x T tokens, 32 weights per step."""
    return _tile(R, T, 32, 16, lambda builder, row, i: _load_vec(builder, row, i, 64, vec(BF, 32)), _x_as_bf16, _dpbf16, 64)


def _bf16_rounded_tile(R, T):
    """The prompt tile reading activations already rounded to bf16 (round_to_bf16, once for a batch) rather
    than rounding them again for every R rows: 117-137 -> 191 GFLOP/s on a Zen 4 core. The same bits: the
    same instruction rounds them."""
    def load(builder, row, i):
        return _load_vec(builder, builder.bitcast(row, I8.as_pointer()), i, 64, vec(BF, 32))
    return _tile(R, T, 32, 16, load, load, _dpbf16, 64)


@intrinsic
def round_to_bf16(typingctx, x, t, i, xb):
    """xb[t, 32i : 32i + 32] = x[t, 32i : 32i + 32] rounded to bf16 bits (vcvtne2ps2bf16, as the tiles round)."""
    def codegen(context, builder, sig, args):
        x, t, i, xb = args
        src = builder.bitcast(_row_pointers(context, builder, sig.args[0], x, t, 1)[0], F32.as_pointer())
        dst = _row_pointers(context, builder, sig.args[3], xb, t, 1)[0]
        p = builder.gep(dst, [builder.mul(i, ir.Constant(i.type, 64))])
        builder.store(_x_as_bf16(builder, src, i), builder.bitcast(p, vec(BF, 32).as_pointer()), align=1)
        return context.get_dummy_value()
    return types.none(x, types.intp, types.intp, xb), codegen


HAS_BF16 = cpu.has("bf16")
BF16_TILE = (4, 4) if HAS_BF16 else FLOAT_TILE
if HAS_BF16:
    TILES_BF16 = tuple(_bf16_tile(R, T) for R, T in (BF16_TILE, (FLOAT_ROWS, 1), (1, 1)))
    BF16_ROUNDED_TILE = _bf16_rounded_tile(*BF16_TILE)


# --- rows of 16 float lanes: attention over a block of 16 queries ----------------------------
#
# kernels.ops.attention_blocked keeps a block's scores transposed, (keys, 16 queries), so its
# loops run across the queries in the lanes. Numba's own loops over such rows stay scalar (it
# cannot tell that the rows it reads and writes do not overlap), so these take a row at a time.

LANES16 = vec(F32, 16)


def _row16(context, builder, aty, arr, row):
    """Pointer to arr[row, 0:16] of a 2-D float32 array, as <16 x float>*."""
    ary = context.make_array(aty)(context, builder, arr)
    stride = cgutils.unpack_tuple(builder, ary.strides)[0]
    p = builder.gep(builder.bitcast(ary.data, I8.as_pointer()), [builder.mul(row, stride)])
    return builder.bitcast(p, LANES16.as_pointer())


def _exp(builder, x):
    """e^x for a float or a float vector, x in [-87, 88.3] (clamped outside): Cephes' expf, within
    1.4 ulp. Plain arithmetic, so loops calling it vectorise (libm's exp does not)."""
    c = lambda value: _const(x.type, value)  # noqa: E731
    lanes = f"v{x.type.count}" if isinstance(x.type, ir.VectorType) else ""
    x = builder.select(builder.fcmp_ordered("<", x, c(-87.0)), c(-87.0), x)
    x = builder.select(builder.fcmp_ordered(">", x, c(88.3)), c(88.3), x)
    n = _call_intrinsic(builder, f"llvm.floor.{lanes}f32", x.type,                     # round(x / ln 2)
                        [builder.fadd(builder.fmul(x, c(1.4426950408889634)), c(0.5))])
    r = builder.fadd(builder.fsub(x, builder.fmul(n, c(0.693359375))), builder.fmul(n, c(2.12194440e-4)))
    p = c(1.9875691500e-4)
    for coefficient in (1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1):
        p = builder.fadd(builder.fmul(p, r), c(coefficient))
    y = builder.fadd(builder.fadd(builder.fmul(builder.fmul(p, r), r), r), c(1.0))
    int_t = vec(I32, x.type.count) if lanes else I32
    exponent = builder.add(builder.fptosi(n, int_t), _const(int_t, 127))
    return builder.fmul(y, builder.bitcast(builder.shl(exponent, _const(int_t, 23)), x.type))  # y * 2^n


@intrinsic
def exp(typingctx, x):
    """e^x in float32 (see _exp): softmax and SwiGLU."""
    def codegen(context, builder, sig, args):
        return _exp(builder, args[0])
    return types.float32(types.float32), codegen


@intrinsic
def rows_softmax(typingctx, s, lo, keys, first, step, window, total):
    """Causal softmax down the columns of s (keys, 16) over keys lo..keys-1: lane i is a query at position
    first + step * i (step 1: a block of queries; 0: heads of one query) and sees keys up to its position
    (and, window > 0, the last `window` of them). s[p] becomes exp(s[p] - max) (0 where masked), total[:16]
    the sums. Masked keys add exact zeros: a lane's result does not depend on lo or keys past its own."""
    def codegen(context, builder, sig, args):
        s, lo, keys, first, step, window, total = args
        lane = builder.mul(ir.Constant(vec(I32, 16), list(range(16))), _splat(builder, builder.trunc(step, I32), 16))
        last_key = builder.add(_splat(builder, builder.trunc(first, I32), 16), lane)   # per lane
        w = _splat(builder, builder.trunc(window, I32), 16)
        no_window = builder.icmp_signed("<=", w, ir.Constant(vec(I32, 16), None))

        def visible(p):
            pv = _splat(builder, builder.trunc(p, I32), 16)
            recent = builder.icmp_signed(">", pv, builder.sub(last_key, w))
            return builder.and_(builder.icmp_signed("<=", pv, last_key), builder.or_(no_window, recent))

        top = cgutils.alloca_once_value(builder, _const(LANES16, float("-inf")))
        with cgutils.for_range_slice(builder, lo, keys, ir.Constant(lo.type, 1)) as (p, _):
            row = builder.load(_row16(context, builder, sig.args[0], s, p), align=4)
            bigger = _call_intrinsic(builder, "llvm.maxnum.v16f32", LANES16, [builder.load(top), row])
            builder.store(builder.select(visible(p), bigger, builder.load(top)), top)
        sums = cgutils.alloca_once_value(builder, ir.Constant(LANES16, None))
        with cgutils.for_range_slice(builder, lo, keys, ir.Constant(lo.type, 1)) as (p, _):
            ptr = _row16(context, builder, sig.args[0], s, p)
            e = _exp(builder, builder.fsub(builder.load(ptr, align=4), builder.load(top)))
            e = builder.select(visible(p), e, ir.Constant(LANES16, None))
            builder.store(e, ptr, align=4)
            builder.store(builder.fadd(builder.load(sums), e), sums)
        out = _ptr(context, builder, sig.args[6], total, ir.Constant(I32, 0), F32)
        builder.store(builder.load(sums), builder.bitcast(out, LANES16.as_pointer()), align=4)
        return context.get_dummy_value()
    return types.none(s, types.intp, types.intp, types.intp, types.intp, types.intp, total), codegen


KEYS_AT_ONCE = 8  # rows_scores: keys per call; rows_weighted_sum: head_dim rows per call


def _kv_row_pointer(context, builder, aty, arr, p, kvh):
    """The address (i8*) of arr[p, kvh, 0] of a (keys, kv_heads, hd) cache array."""
    ary = context.make_array(aty)(context, builder, arr)
    s0, s1, _ = cgutils.unpack_tuple(builder, ary.strides)
    return builder.gep(builder.bitcast(ary.data, I8.as_pointer()), [builder.add(builder.mul(p, s0), builder.mul(kvh, s1))])


def _kv_vec(context, builder, aty, arr, p, kvh, j0, n=KEYS_AT_ONCE):
    """arr[p, kvh, j0 : j0 + n] of a (keys, kv_heads, hd) cache array as <n x float>: halves (the KV cache)
    converted n at a time, so that each element is then a broadcast from a register (_lane), not a load
    and a conversion of its own."""
    row = _kv_row_pointer(context, builder, aty, arr, p, kvh)
    elt = I16 if aty.dtype == types.uint16 else F32
    values = builder.load(builder.bitcast(builder.gep(builder.bitcast(row, elt.as_pointer()), [j0]),
                                          vec(elt, n).as_pointer()), align=2)
    return half_bits_to_float(builder, values) if elt is I16 else values


def _fma_into(builder, acc, a, b):
    """*acc = fma(a, b, *acc) for <16 x float> a, b and an accumulator slot acc."""
    builder.store(_call_intrinsic(builder, "llvm.fma.v16f32", LANES16, [a, b, builder.load(acc)]), acc)


def _store_rows(context, builder, aty, arr, first, accs):
    """arr[first + m, :16] = *accs[m] for a 2-D float32 array."""
    for m, acc in enumerate(accs):
        builder.store(builder.load(acc), _row16(context, builder, aty, arr, builder.add(first, ir.Constant(first.type, m))),
                      align=4)


def _lane(builder, v, i):
    """<16 x float> of lane i of v."""
    return builder.shuffle_vector(v, v, ir.Constant(vec(I32, 16), [i] * 16))


def _scores(context, builder, sig, args, keys):
    """s[p0 + m, :16] = sum_j qt[j, :16] * k[p0 + m, kvh, j], j in order (fused multiply-adds), m < keys."""
    s, p0, qt, k, kvh = args
    s_ty, _, qt_ty, k_ty, _ = sig.args
    hd = cgutils.unpack_tuple(builder, context.make_array(qt_ty)(context, builder, qt).shape)[0]
    accs = [cgutils.alloca_once_value(builder, ir.Constant(LANES16, None)) for _ in range(keys)]
    with cgutils.for_range(builder, builder.udiv(hd, ir.Constant(hd.type, KEYS_AT_ONCE))) as loop:
        j0 = builder.mul(loop.index, ir.Constant(hd.type, KEYS_AT_ONCE))
        rows = [_kv_vec(context, builder, k_ty, k, builder.add(p0, ir.Constant(p0.type, m)), kvh, j0) for m in range(keys)]
        for jj in range(KEYS_AT_ONCE):
            q_row = builder.load(_row16(context, builder, qt_ty, qt, builder.add(j0, ir.Constant(j0.type, jj))), align=4)
            for row, acc in zip(rows, accs):
                _fma_into(builder, acc, q_row, _lane(builder, row, jj))
    _store_rows(context, builder, s_ty, s, p0, accs)
    return context.get_dummy_value()


@intrinsic
def rows_scores(typingctx, s, p0, qt, k, kvh):
    """s[p0 + m, :16] = sum_j qt[j, :16] * k[p0 + m, kvh, j] for m < KEYS_AT_ONCE: eight keys against 16
    queries (or heads), each loaded row of qt used for all eight (accumulators in registers). head_dim
    (qt's rows): a multiple of KEYS_AT_ONCE."""
    def codegen(context, builder, sig, args):
        return _scores(context, builder, sig, args, KEYS_AT_ONCE)
    return types.none(s, types.intp, qt, k, types.intp), codegen


@intrinsic
def row_scores(typingctx, s, p, qt, k, kvh):
    """rows_scores for one key (the same sums)."""
    def codegen(context, builder, sig, args):
        return _scores(context, builder, sig, args, 1)
    return types.none(s, types.intp, qt, k, types.intp), codegen


@intrinsic
def rows_weighted_sum(typingctx, ot, j0, s, lo, keys, v, kvh):
    """ot[j0 + m, :16] = sum_{lo <= p < keys} s[p, :16] * v[p, kvh, j0 + m], in key order, for
    m < KEYS_AT_ONCE: eight output rows held in registers while the weights of every key stream past."""
    def codegen(context, builder, sig, args):
        ot, j0, s, lo, keys, v, kvh = args
        ot_ty, _, s_ty, _, _, v_ty, _ = sig.args
        accs = [cgutils.alloca_once_value(builder, ir.Constant(LANES16, None)) for _ in range(KEYS_AT_ONCE)]
        with cgutils.for_range_slice(builder, lo, keys, ir.Constant(lo.type, 1)) as (p, _):
            weights = builder.load(_row16(context, builder, s_ty, s, p), align=4)
            values = _kv_vec(context, builder, v_ty, v, p, kvh, j0)
            for m, acc in enumerate(accs):
                _fma_into(builder, acc, weights, _lane(builder, values, m))
        _store_rows(context, builder, ot_ty, ot, j0, accs)
        return context.get_dummy_value()
    return types.none(ot, types.intp, s, types.intp, types.intp, v, types.intp), codegen


HEADS_AT_ONCE = 4  # heads_weighted_sum, block_scores: query heads per call


def _kv_chunk(context, builder, aty, arr, p, kvh, c):
    """arr[p, kvh, 16c : 16c + 16] of a (keys, kv_heads, hd) cache array as <16 x float> (halves converted
    16 at a time)."""
    width = 2 if aty.dtype == types.uint16 else 4
    ptr = builder.gep(_kv_row_pointer(context, builder, aty, arr, p, kvh), [builder.mul(c, ir.Constant(c.type, 16 * width))])
    if aty.dtype == types.uint16:
        return half_bits_to_float(builder, builder.load(builder.bitcast(ptr, vec(I16, 16).as_pointer()), align=2))
    return builder.load(builder.bitcast(ptr, LANES16.as_pointer()), align=4)


def _for_each_count(builder, count, body):
    """body(heads) for the call's count of heads (1 .. HEADS_AT_ONCE), each case compiled for exactly that
    many: no lane of work for a head the call does not have (a group of 3 or 6 heads sharing a KV head)."""
    for n in range(1, HEADS_AT_ONCE + 1):
        match = builder.icmp_signed("==" if n < HEADS_AT_ONCE else ">=", count, ir.Constant(count.type, n))
        with builder.if_then(match):
            body(n)


def _row_of(context, builder, aty, arr, row):
    """Pointer to arr[row, 0] of a 2-D float32 array."""
    ary = context.make_array(aty)(context, builder, arr)
    p = builder.gep(builder.bitcast(ary.data, I8.as_pointer()), [builder.mul(row, cgutils.unpack_tuple(builder, ary.strides)[0])])
    return builder.bitcast(p, F32.as_pointer())


def _heads_weighted_sum(chunks):
    @intrinsic
    def heads_weighted_sum(typingctx, out, s, h0, count, first, length, v, kvh, c0):
        """out[h, 16 c0 : 16 (c0 + chunks)] = (sum_{first <= p < length} s[h, p] v[p, kvh, ...]) / total, total =
        sum_{first <= p < length} s[h, p], both in key order, for h = h0 .. h0+count-1, count <= HEADS_AT_ONCE:
        query heads that share a KV head (grouped-query attention) read and convert each value row once,
        an accumulator per head and 16 dimensions in registers. out: (heads, hd) float32; s: (heads, >= length)
        float32, the softmax's numerators; v: the cache, its rows prefetched PREFETCH_KEYS ahead."""
        def codegen(context, builder, sig, args):
            out, s, h0, count, first, length, v, kvh, c0 = args
            out_ty, s_ty, v_ty = sig.args[0], sig.args[1], sig.args[6]
            width = 2 if v_ty.dtype == types.uint16 else 4

            def body(n):
                heads = [builder.add(h0, ir.Constant(h0.type, g)) for g in range(n)]
                weights = [_row_of(context, builder, s_ty, s, h) for h in heads]
                accs = [[cgutils.alloca_once_value(builder, ir.Constant(LANES16, None)) for _ in range(chunks)] for _ in heads]
                totals = [cgutils.alloca_once_value(builder, ir.Constant(F32, 0.0)) for _ in heads]
                with cgutils.for_range_slice(builder, first, length, ir.Constant(first.type, 1)) as (p, _):
                    ahead = _kv_row_pointer(context, builder, v_ty, v, builder.add(p, ir.Constant(p.type, PREFETCH_KEYS)), kvh)
                    prefetch(builder, builder.gep(ahead, [builder.mul(c0, ir.Constant(c0.type, 16 * width))]))
                    x = [_kv_chunk(context, builder, v_ty, v, p, kvh, builder.add(c0, ir.Constant(c0.type, c)))
                         for c in range(chunks)]
                    for w_row, acc, total in zip(weights, accs, totals):
                        w = builder.load(builder.gep(w_row, [p]))
                        builder.store(builder.fadd(builder.load(total), w), total)
                        for c in range(chunks):
                            _fma_into(builder, acc[c], _splat(builder, w, 16), x[c])
                for h, acc, total in zip(heads, accs, totals):
                    row = _row_of(context, builder, out_ty, out, h)
                    for c in range(chunks):
                        at = builder.mul(builder.add(c0, ir.Constant(c0.type, c)), ir.Constant(c0.type, 16))
                        builder.store(builder.fdiv(builder.load(acc[c]), _splat(builder, builder.load(total), 16)),
                                      builder.bitcast(builder.gep(row, [at]), LANES16.as_pointer()), align=4)
            _for_each_count(builder, count, body)
            return context.get_dummy_value()
        return types.none(out, s, types.intp, types.intp, types.intp, types.intp, v, types.intp, types.intp), codegen
    return heads_weighted_sum


DIMS_AT_ONCE = 2 if WIDE else 1  # heads_weighted_sum: 16-dimension chunks per call (registers: 4 heads x 2)
PREFETCH_KEYS = 32               # heads_weighted_sum: value rows read ahead (from memory, the rows of one KV head
                                 # are 128-256 bytes apart, a stride the hardware prefetchers follow poorly)
heads_weighted_sum = _heads_weighted_sum(DIMS_AT_ONCE)
heads_weighted_sum_1 = _heads_weighted_sum(1)  # a head dimension's last 16 when DIMS_AT_ONCE does not divide it


def _along_row(builder, lo, hi, sixteen_at, one_at):
    """sixteen_at(p) for p = lo, lo+16, ... while 16 fit before hi, then one_at(p) for the rest."""
    sixteen = ir.Constant(lo.type, 16)
    full = builder.add(lo, builder.mul(builder.sdiv(builder.sub(hi, lo), sixteen), sixteen))
    with cgutils.for_range_slice(builder, lo, full, sixteen) as (p, _):
        sixteen_at(p)
    with cgutils.for_range_slice(builder, full, hi, ir.Constant(lo.type, 1)) as (p, _):
        one_at(p)


@intrinsic
def row_exp(typingctx, s, h, lo, hi, top):
    """s[h, p] = exp(s[h, p] - top) for lo <= p < hi (the softmax's numerators in place), 16 lanes at a time:
    the loop that calls exp() does not vectorise by itself."""
    def codegen(context, builder, sig, args):
        s, h, lo, hi, top = args
        row = _row_of(context, builder, sig.args[0], s, h)
        tops = _splat(builder, top, 16)

        def sixteen_at(p):
            ptr = builder.bitcast(builder.gep(row, [p]), LANES16.as_pointer())
            builder.store(_exp(builder, builder.fsub(builder.load(ptr, align=4), tops)), ptr, align=4)

        def one_at(p):
            ptr = builder.gep(row, [p])
            builder.store(_exp(builder, builder.fsub(builder.load(ptr), top)), ptr)
        _along_row(builder, lo, hi, sixteen_at, one_at)
        return context.get_dummy_value()
    return types.none(s, types.intp, types.intp, types.intp, types.float32), codegen


@intrinsic
def row_max(typingctx, s, h, lo, hi):
    """max(s[h, lo:hi]) (-inf if empty), 16 lanes at a time: a max is exact in any order."""
    def codegen(context, builder, sig, args):
        s, h, lo, hi = args
        row = _row_of(context, builder, sig.args[0], s, h)
        top = cgutils.alloca_once_value(builder, _const(LANES16, float("-inf")))
        best = cgutils.alloca_once_value(builder, _const(F32, float("-inf")))

        def sixteen_at(p):
            x = builder.load(builder.bitcast(builder.gep(row, [p]), LANES16.as_pointer()), align=4)
            builder.store(_call_intrinsic(builder, "llvm.maxnum.v16f32", LANES16, [builder.load(top), x]), top)

        def one_at(p):
            x = builder.load(builder.gep(row, [p]))
            builder.store(_call_intrinsic(builder, "llvm.maxnum.f32", F32, [builder.load(best), x]), best)
        _along_row(builder, lo, hi, sixteen_at, one_at)
        lanes = _call_intrinsic(builder, "llvm.vector.reduce.fmax.v16f32", F32, [builder.load(top)])
        return _call_intrinsic(builder, "llvm.maxnum.f32", F32, [builder.load(best), lanes])
    return types.float32(s, types.intp, types.intp, types.intp), codegen


# --- decoding: keys in the lanes -----------------------------------------------------------
#
# ops.attention_decode follows _lanes' arithmetic (kernels.ops) for one query, but with keys in the
# lanes for the scores (a copy of the cache's keys transposed into blocks of 16, kt, written as
# they are stored) and head dimensions in the lanes for the weighted sum, so no lane idles
# whatever the number of heads sharing a KV head.

KEY_BLOCK = 16  # keys per block of the transposed key cache: (blocks, kv_heads, hd, 16)


def _block_scores(blocks):
    @intrinsic
    def block_scores(typingctx, s, q, h0, count, block, kt, kvh, scale):
        """s[h, 16 b : 16 b + 16] = sum over j in order of (q[h, j] * scale) * kt[b, kvh, j, :] (fused multiply-adds)
        for h = h0 .. h0+count-1, count <= HEADS_AT_ONCE, and the blocks b = block .. block+blocks-1: the
        scores of 16 keys a block, each key value converted once for all the heads. q: (heads, hd) float32;
        s: (heads, >= 16 (block + blocks)) float32. Several blocks: independent sums side by side, the next
        blocks prefetched."""
        def codegen(context, builder, sig, args):
            s, q, h0, count, block, kt, kvh, scale = args
            s_ty, q_ty, kt_ty = sig.args[0], sig.args[1], sig.args[5]
            hd = cgutils.unpack_tuple(builder, context.make_array(q_ty)(context, builder, q).shape)[1]
            ary = context.make_array(kt_ty)(context, builder, kt)
            s0, s1, s2, _ = cgutils.unpack_tuple(builder, ary.strides)
            base = builder.gep(builder.bitcast(ary.data, I8.as_pointer()), [builder.add(builder.mul(block, s0), builder.mul(kvh, s1))])

            def at(m, j):
                return builder.gep(base, [builder.add(builder.mul(ir.Constant(s0.type, m), s0), builder.mul(j, s2))])

            def body(n):
                heads = [builder.add(h0, ir.Constant(h0.type, g)) for g in range(n)]
                queries = [_row_of(context, builder, q_ty, q, h) for h in heads]
                accs = [[cgutils.alloca_once_value(builder, ir.Constant(LANES16, None)) for _ in heads] for _ in range(blocks)]
                with cgutils.for_range(builder, hd) as loop:
                    if blocks > 1:
                        for m in range(blocks, 2 * blocks):
                            prefetch(builder, at(m, loop.index))
                    keys = [half_bits_to_float(builder, builder.load(builder.bitcast(at(m, loop.index), vec(I16, 16).as_pointer()),
                                                                     align=2)) for m in range(blocks)]
                    for g, qp in enumerate(queries):
                        qs = _splat(builder, builder.fmul(builder.load(builder.gep(qp, [loop.index])), scale), 16)
                        for m in range(blocks):
                            _fma_into(builder, accs[m][g], qs, keys[m])
                for m in range(blocks):
                    first = builder.mul(builder.add(block, ir.Constant(block.type, m)), ir.Constant(block.type, 16))
                    for g, h in enumerate(heads):
                        dst = builder.gep(_row_of(context, builder, s_ty, s, h), [first])
                        builder.store(builder.load(accs[m][g]), builder.bitcast(dst, LANES16.as_pointer()), align=4)
            _for_each_count(builder, count, body)
            return context.get_dummy_value()
        return types.none(s, q, types.intp, types.intp, types.intp, kt, types.intp, types.float32), codegen
    return block_scores


BLOCKS_AT_ONCE = 4 if WIDE else 2  # blocks_scores: key blocks per call (accumulators: 4 heads x blocks)
block_scores = _block_scores(1)
blocks_scores = _block_scores(BLOCKS_AT_ONCE)
