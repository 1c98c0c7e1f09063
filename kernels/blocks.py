"""Each quantised weight format as the kernels see it: one decoder class per format.

The numpy definition of every layout is its class in weights/quants.py (docstring and
dequantiser); a decoder here emits LLVM IR that reads the same bytes in place. The generic
kernels (kernels.quant: row dots and register tiles; kernels.panels: VNNI prompt tiles) walk a
row block by block and ask the decoder, for each chunk c of 32 weights of a block:

    quants(c) -> <32 x i8>    the chunk's integer quants, in weight order
    scale(c)  -> <8 x float>   the chunk's scale per 4 weights: all lanes alike, or (lane_scales:
                               sub-blocks of 16 weights) lanes 0-3 and 4-7
    min(c)    -> None, or <8 x float>: a term added per chunk, min * (the chunk's activation sum)
                 (min_kind "chunk": all lanes alike), or one per 4 weights times the sums of 4
                 activations (min_kind "lanes")

so that, with x quantised to 8 bits per 32 (xq, scale dx, as llama.cpp's q8_0/q8_1):

    sum_i w_i x_i  =  sum over chunks  dx * [ scale . (quants - offset) . xq  +  min . sum(xq) ]

`offset` (quants stored unsigned, e.g. Q4_0's 8) is folded into the integer sums. `signed`
says the quants may be negative (x86 multiplies unsigned by signed bytes, so those need the
sign moved onto the activations). The chunk index c is a Python int (the loops over a block's
chunks are unrolled); a block's shared fields are decoded once, by header(). Super-blocks
(_SuperBlock: K-quants, IQ4_XS) give integer scales instead (int_scale, int_min) and the offsets of
their block's d and dmin: the kernels sum a whole block in integers, then scale it once.

Adding a format: its numpy class in weights/quants.py, its decoder here, one line in FORMATS,
one entry in the tests' format list.
"""
from __future__ import annotations

from gguf import GGMLQuantizationType as T
from llvmlite import ir

from . import cpu
from .simd import F32, I8, I16, I32, _call_intrinsic, _concat, _const, _load_at, _splat, half_bits_to_float, vec

I1 = ir.IntType(1)


def _bytes(b, blk, offset, n=32):
    return _load_at(b, blk, offset, vec(I8, n))


def _halves(b, blk, offset, n=8):
    """The f16 at offset as <n x float>, converted after the splat. (Converting one half, LLVM loads it
    with vpinsrw into whatever register is free, which keeps a false dependency on that register's
    old value: in the row dots an accumulator, serialising the loop. Q5_0's dot ran 20% slower.)"""
    return half_bits_to_float(b, _splat(b, _load_at(b, blk, offset, I16), n))


def _shr(b, v, shift):
    """Logical shift right of every byte (a constant or a per-lane list of shifts)."""
    if isinstance(shift, int) and shift == 0:
        return v
    shifts = shift if isinstance(shift, list) else [shift] * v.type.count
    return b.lshr(v, ir.Constant(v.type, shifts))


def _and(b, v, mask):
    """v & mask: a constant, or a list of one per lane."""
    return b.and_(v, ir.Constant(v.type, mask) if isinstance(mask, list) else _const(v.type, mask))


def _shl(b, v, shift):
    return b.shl(v, _const(v.type, shift)) if shift else v


def _nibbles16(b, blk, offset):
    """16 bytes of packed 4-bit quants, low nibbles weights 0-15 and high nibbles 16-31 -> <32 x i8>.

    The bytes twice (a broadcast load), the second copy shifted right by 4; the shift is of
    32-bit lanes, since x86 has no byte shift."""
    q = _bytes(b, blk, offset, 16)
    twice = b.shuffle_vector(q, q, ir.Constant(vec(I32, 32), list(range(16)) * 2))
    shifted = b.lshr(b.bitcast(twice, vec(I32, 8)), ir.Constant(vec(I32, 8), [0] * 4 + [4] * 4))
    return _and(b, b.bitcast(shifted, vec(I8, 32)), 0x0F)


def _bits32(b, word):
    """An i32 -> <32 x i8>: byte i is bit i (0 or 1)."""
    return b.zext(b.bitcast(word, vec(I1, 32)), vec(I8, 32))


def _pick(b, v, lanes):
    return b.shuffle_vector(v, v, ir.Constant(vec(I32, len(lanes)), lanes))


def lookup16(b, table, idx):
    """<32 x i8> indices 0..15 -> table[idx] (a 16-entry signed byte table): pshufb / tbl, else selects."""
    n = idx.type.count
    if cpu.is_arm():
        t = ir.Constant(vec(I8, 16), table)
        halves = [_call_intrinsic(b, "llvm.aarch64.neon.tbl1.v16i8", vec(I8, 16), [t, _pick(b, idx, list(range(i, i + 16)))])
                  for i in range(0, n, 16)]
        return _concat(b, halves)
    if cpu.has("avx2"):  # vpshufb looks up within each 128-bit lane: the table in both
        return _call_intrinsic(b, "llvm.x86.avx2.pshuf.b", vec(I8, 32), [ir.Constant(vec(I8, 32), table * 2), idx])
    out = ir.Constant(vec(I8, n), None)   # SSE2 has no byte shuffle: one compare and select per entry
    for value, entry in enumerate(table):
        hit = b.icmp_unsigned("==", idx, ir.Constant(idx.type, [value] * n))
        out = b.select(hit, ir.Constant(vec(I8, n), [entry] * n), out)
    return out


class Decoder:
    """The defaults of a block format; subclasses name the fields."""
    type: T
    weights: int = 32    # per block
    nbytes: int          # per block
    offset: int = 0      # weights are proportional to (quant - offset)
    signed: bool = False
    min_kind: str | None = None   # None, "chunk" (a float per chunk) or "lanes" (<8 x float>)
    lane_scales: bool = False     # scale(c) is <8 x float>
    activations: str = "q8_0"     # how x is quantised for it, as llama.cpp pairs them: q8_0, or q8_k (one
                                  # scale per 256) for the super-block formats (kernels.matmul.QUANTIZE)
    # Blocks of 32 packing weights i and 16 + i into the low and high nibbles of byte i (Q4_0's layout) name
    # where, so a token's row dots can read them in that order (kernels.quant._nibble_order): the 16 bytes
    # at nibbles_at, the f16 scale at scale_at, a minimum's at min_at; `table` maps nibbles to values.
    nibbles_at: int | None = None
    scale_at: int = 0
    min_at: int = 0
    high_bits_at: int | None = None   # a u32 whose bit i is weight i's fifth bit (Q5_0, Q5_1)
    table: list | None = None

    @property
    def chunks(self) -> int:
        return self.weights // 32

    def header(self, b, blk):
        return None

    def min(self, b, blk, hdr, c):
        return None


# --- blocks of 32 weights ---------------------------------------------------------------------

class Q8_0(Decoder):
    """d (f16) at 0, 32 int8 quants at 2."""
    type, nbytes, signed = T.Q8_0, 34, True

    def quants(self, b, blk, hdr, c):
        return _bytes(b, blk, 2)

    def scale(self, b, blk, hdr, c):
        return _halves(b, blk, 0)


class Q4_0(Decoder):
    """d at 0, 16 bytes of nibbles at 2; w = d (q - 8)."""
    type, nbytes, offset = T.Q4_0, 18, 8
    nibbles_at = 2

    def quants(self, b, blk, hdr, c):
        return _nibbles16(b, blk, 2)

    def scale(self, b, blk, hdr, c):
        return _halves(b, blk, 0)


class Q4_1(Decoder):
    """d at 0, m at 2, nibbles at 4; w = d q + m."""
    type, nbytes, min_kind = T.Q4_1, 20, "chunk"
    nibbles_at, min_at = 4, 2

    def quants(self, b, blk, hdr, c):
        return _nibbles16(b, blk, 4)

    def scale(self, b, blk, hdr, c):
        return _halves(b, blk, 0)

    def min(self, b, blk, hdr, c):
        return _halves(b, blk, 2)


class Q5_0(Decoder):
    """d at 0, qh (u32: bit i is weight i's fifth bit) at 2, nibbles at 6; w = d (q - 16)."""
    type, nbytes, offset = T.Q5_0, 22, 16
    nibbles_at, high_bits_at = 6, 2

    def quants(self, b, blk, hdr, c):
        return b.or_(_nibbles16(b, blk, 6), _shl(b, _bits32(b, _load_at(b, blk, 2, I32)), 4))

    def scale(self, b, blk, hdr, c):
        return _halves(b, blk, 0)


class Q5_1(Decoder):
    """d at 0, m at 2, qh at 4, nibbles at 8; w = d q + m."""
    type, nbytes, min_kind = T.Q5_1, 24, "chunk"
    nibbles_at, min_at, high_bits_at = 8, 2, 4

    def quants(self, b, blk, hdr, c):
        return b.or_(_nibbles16(b, blk, 8), _shl(b, _bits32(b, _load_at(b, blk, 4, I32)), 4))

    def scale(self, b, blk, hdr, c):
        return _halves(b, blk, 0)

    def min(self, b, blk, hdr, c):
        return _halves(b, blk, 2)


IQ4_VALUES = [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113]


class IQ4_NL(Decoder):
    """d at 0, nibbles at 2 (as Q4_0) indexing the non-linear table IQ4_VALUES; w = d table[q]."""
    type, nbytes, signed = T.IQ4_NL, 18, True
    nibbles_at, table = 2, IQ4_VALUES

    def quants(self, b, blk, hdr, c):
        return lookup16(b, IQ4_VALUES, _nibbles16(b, blk, 2))

    def scale(self, b, blk, hdr, c):
        return _halves(b, blk, 0)


# --- K-quants: super-blocks of 256 weights --------------------------------------------------

def _k_scales_mins(b, blk, offset):
    """The 12 bytes of 6-bit scales and mins of Q4_K / Q5_K -> (<8 x i8> scales, <8 x i8> mins).

    Chunk j < 4: scale = s[j] & 63, min = s[j+4] & 63; j >= 4: scale = (s[j+4] & 15) | (s[j-4] >> 6) << 4,
    min = (s[j+4] >> 4) | (s[j] >> 6) << 4."""
    s = _bytes(b, blk, offset, 12)
    a, m, hi = _pick(b, s, [0, 1, 2, 3]), _pick(b, s, [4, 5, 6, 7]), _pick(b, s, [8, 9, 10, 11])
    joined = lambda low, high: _pick2(b, low, high)  # noqa: E731
    scales = joined(_and(b, a, 63), b.or_(_and(b, hi, 15), _shl(b, _shr(b, a, 6), 4)))
    mins = joined(_and(b, m, 63), b.or_(_shr(b, hi, 4), _shl(b, _shr(b, m, 6), 4)))
    return scales, mins


def _pick2(b, lo, hi):
    n = lo.type.count
    return b.shuffle_vector(lo, hi, ir.Constant(vec(I32, 2 * n), list(range(2 * n))))


class _SuperBlock(Decoder):
    """Super-blocks of 256 weights with integer sub-block scales: w = d * scale * (q - offset) - dmin * min.

    The kernels sum scale * (q - offset) . xq exactly in integers over the whole block and multiply by
    d once, as llama.cpp does: header(b, blk) decodes the integer scales once, int_scale(c) gives chunk
    c's as <8 x i32> per 4 weights (lanes 0-3 and 4-7 differ for sub-blocks of 16), and d is the f16 at
    byte offset d_at. Minimums per 16 (min_kind "lanes") are summed the same way (int_min, dmin_at);
    a minimum per chunk ("chunk") is a float term per chunk, min(c) = -dmin * min, times xs."""
    weights, activations = 256, "q8_k"
    dmin_at: int | None = None
    small_sums = True     # a chunk's integer sums per 4 weights fit in 16 bits (|quant - offset| <= 63)

    def int_min(self, b, blk, hdr, c):
        return None

    def chunk_groups(self, b, blk, hdr, P):
        """The block's quants as registers of P chunks: [(chunks, <32P x i8>)], chunks in order."""
        return [(tuple(range(g, g + P)), _concat(b, [self.quants(b, blk, hdr, c) for c in range(g, g + P)]))
                for g in range(0, self.chunks, P)]


def _widen(b, v, signed=False):
    """<n x i8> -> <n x i32>."""
    return (b.sext if signed else b.zext)(v, vec(I32, v.type.count))


class Q4_K(_SuperBlock):
    """d at 0, dmin at 2, 12 bytes of 6-bit scales/mins at 4, 128 bytes of nibbles at 16.
    Chunk c: the low (c even) or high (c odd) nibbles of qs[32 (c//2) : 32 (c//2) + 32];
    w = d scale_c q - dmin min_c."""
    type, nbytes, min_kind, d_at = T.Q4_K, 144, "chunk", 0

    def header(self, b, blk):
        scales, mins = _k_scales_mins(b, blk, 4)
        return _widen(b, scales), b.fmul(b.uitofp(mins, vec(F32, 8)), b.fneg(_halves(b, blk, 2)))

    def quants(self, b, blk, hdr, c):
        return _and(b, _shr(b, _bytes(b, blk, 16 + 32 * (c // 2)), 4 * (c % 2)), 0x0F)

    def chunk_groups(self, b, blk, hdr, P):
        """Two chunks a register (AVX512): 64 bytes of nibbles hold chunks 4m, 4m+2 in their low nibbles
        and 4m+1, 4m+3 in their high ones, so a register of each without joining halves."""
        if P != 2:
            return super().chunk_groups(b, blk, hdr, P)
        groups = []
        for m in range(self.chunks // 4):
            low, high = self.nibble_pair(b, blk, m)
            groups += [((4 * m, 4 * m + 2), low), ((4 * m + 1, 4 * m + 3), high)]
        return groups

    def nibble_pair(self, b, blk, m):
        """The quants of chunks (4m, 4m+2) and (4m+1, 4m+3): <64 x i8> each."""
        v = _bytes(b, blk, 16 + 64 * m, 64)
        return _and(b, v, 0x0F), _and(b, _shr(b, v, 4), 0x0F)

    def int_scale(self, b, blk, hdr, c):
        return _pick(b, hdr[0], [c] * 8)

    def min(self, b, blk, hdr, c):
        return _pick(b, hdr[1], [c] * 8)


class Q5_K(Q4_K):
    """As Q4_K, with qh[32] at 16 and the nibbles at 48: weight l of chunk c has fifth bit (qh[l] >> c) & 1."""
    type, nbytes = T.Q5_K, 176

    def quants(self, b, blk, hdr, c):
        low = _and(b, _shr(b, _bytes(b, blk, 48 + 32 * (c // 2)), 4 * (c % 2)), 0x0F)
        return b.or_(low, _shl(b, _and(b, _shr(b, _bytes(b, blk, 16), c), 1), 4))

    def nibble_pair(self, b, blk, m):
        v = _bytes(b, blk, 48 + 64 * m, 64)
        qh = _bytes(b, blk, 16, 32)
        qh = b.shuffle_vector(qh, qh, ir.Constant(vec(I32, 64), list(range(32)) * 2))
        zero = ir.Constant(qh.type, None)

        def fifth(c0, c1):   # 16 where bit c0 (first 32 bytes) or c1 (next 32) of qh is set
            bit = b.icmp_unsigned("!=", _and(b, qh, [1 << c0] * 32 + [1 << c1] * 32), zero)
            return b.select(bit, _const(qh.type, 16), zero)
        return (b.or_(_and(b, v, 0x0F), fifth(4 * m, 4 * m + 2)),
                b.or_(_and(b, _shr(b, v, 4), 0x0F), fifth(4 * m + 1, 4 * m + 3)))


def _sixteens(b, v, c):
    """<16 x T> per 16-weight group -> <8 x T> for chunk c: lanes 0-3 group 2c, 4-7 group 2c + 1."""
    return b.shuffle_vector(v, v, ir.Constant(vec(I32, 8), [2 * c] * 4 + [2 * c + 1] * 4))


class Q6_K(_SuperBlock):
    """ql[128] at 0, qh[64] at 128, 16 int8 scales at 192, d at 208. Chunk c = 4n + j: low 4 bits from
    ql[64n + 32 (j % 2) + l] (low nibble for j < 2, else high), high 2 bits (qh[32n + l] >> 2j) & 3;
    scales 2c (weights 0-15) and 2c + 1 (16-31); w = d scale (q - 32)."""
    type, nbytes, offset, lane_scales, d_at = T.Q6_K, 210, 32, True, 208

    def header(self, b, blk):
        return _widen(b, _bytes(b, blk, 192, 16), signed=True)

    def quants(self, b, blk, hdr, c):
        n, j = divmod(c, 4)
        low = _and(b, _shr(b, _bytes(b, blk, 64 * n + 32 * (j % 2)), 4 * (j // 2)), 0x0F)
        high = _and(b, _shr(b, _bytes(b, blk, 128 + 32 * n), 2 * j), 3)
        return b.or_(low, _shl(b, high, 4))

    def int_scale(self, b, blk, hdr, c):
        return _sixteens(b, hdr, c)

    def chunk_groups(self, b, blk, hdr, P):
        """Two chunks a register (AVX512): ql[64n : 64n + 64] holds chunks 4n, 4n+1 in its low nibbles and
        4n+2, 4n+3 in its high ones, their high bits the same 32 bytes of qh shifted by 0, 2 and 4, 6."""
        if P != 2:
            return super().chunk_groups(b, blk, hdr, P)
        groups = []
        for n in range(self.chunks // 4):
            ql = _bytes(b, blk, 64 * n, 64)
            qh = _bytes(b, blk, 128 + 32 * n, 32)
            qh = b.bitcast(b.shuffle_vector(qh, qh, ir.Constant(vec(I32, 64), list(range(32)) * 2)), vec(I16, 32))
            for j, low in ((0, _and(b, ql, 0x0F)), (2, _and(b, _shr(b, ql, 4), 0x0F))):
                # bits 2j, 2j+1 (first 32 bytes) and 2j+2, 2j+3 (next 32) of qh, moved to bits 4 and 5
                shifts = [4 - 2 * j] * 16 + [2 - 2 * j] * 16
                moved = b.shl(qh, ir.Constant(qh.type, [max(0, v) for v in shifts]))
                moved = b.lshr(moved, ir.Constant(qh.type, [max(0, -v) for v in shifts]))
                high = _and(b, b.bitcast(moved, vec(I8, 64)), 0x30)
                groups.append(((4 * n + j, 4 * n + j + 1), b.or_(low, high)))
        return groups


def _q3_k_scales(b, blk, offset):
    """Q3_K's 12 bytes -> <16 x i8> signed scales: scale i has low 4 bits from byte i % 8 (low nibble
    for i < 8, else high) and high 2 bits (byte 8 + i % 4 >> 2 (i // 4)) & 3, minus 32."""
    s = _bytes(b, blk, offset, 12)
    low = _and(b, _shr(b, _pick(b, s, list(range(8)) * 2), [0] * 8 + [4] * 8), 15)
    high = _and(b, _shr(b, _pick(b, s, [8, 9, 10, 11] * 4), [0] * 4 + [2] * 4 + [4] * 4 + [6] * 4), 3)
    return b.sub(b.or_(low, _shl(b, high, 4)), _const(vec(I8, 16), 32))


class Q3_K(_SuperBlock):
    """hmask[32] at 0, qs[64] at 32, 12 bytes of 6-bit scales at 96, d at 108. Chunk c = 4n + j:
    low 2 bits (qs[32n + l] >> 2j) & 3, and 4 more when bit c of hmask[l] is set; scales 2c and
    2c + 1; w = d scale (q - 4)."""
    type, nbytes, offset, lane_scales, d_at = T.Q3_K, 110, 4, True, 108

    def header(self, b, blk):
        return _widen(b, _q3_k_scales(b, blk, 96), signed=True)

    def quants(self, b, blk, hdr, c):
        n, j = divmod(c, 4)
        low = _and(b, _shr(b, _bytes(b, blk, 32 + 32 * n), 2 * j), 3)
        return b.or_(low, _shl(b, _and(b, _shr(b, _bytes(b, blk, 0), c), 1), 2))

    def int_scale(self, b, blk, hdr, c):
        return _sixteens(b, hdr, c)


class Q2_K(_SuperBlock):
    """16 bytes of (scale | min << 4) at 0, qs[64] at 16, d at 80, dmin at 82. Chunk c = 4n + j:
    (qs[32n + l] >> 2j) & 3; groups 2c and 2c + 1; w = d scale q - dmin min."""
    type, nbytes, lane_scales, min_kind, d_at, dmin_at = T.Q2_K, 84, True, "lanes", 80, 82

    def header(self, b, blk):
        s = _bytes(b, blk, 0, 16)
        return _widen(b, _and(b, s, 15)), _widen(b, _shr(b, s, 4))

    def quants(self, b, blk, hdr, c):
        n, j = divmod(c, 4)
        return _and(b, _shr(b, _bytes(b, blk, 16 + 32 * n), 2 * j), 3)

    def int_scale(self, b, blk, hdr, c):
        return _sixteens(b, hdr[0], c)

    def int_min(self, b, blk, hdr, c):
        return _sixteens(b, hdr[1], c)


class IQ4_XS(_SuperBlock):
    """d at 0, scales_h (u16) at 2, scales_l[4] at 4, qs[128] at 8. Chunk c: nibbles of qs[16c : 16c + 16]
    (as Q4_0) indexing IQ4_VALUES; scale d (ls - 32), ls = (scales_l[c/2] >> 4 (c%2)) & 15 |
    ((scales_h >> 2c) & 3) << 4."""
    type, nbytes, signed, d_at = T.IQ4_XS, 136, True, 0
    small_sums = False    # table values up to 127: 4 x 127 x 127 does not fit in 16 bits

    def header(self, b, blk):
        low = _and(b, _shr(b, _pick(b, _bytes(b, blk, 4, 4), [0, 0, 1, 1, 2, 2, 3, 3]), [0, 4] * 4), 15)
        h = _load_at(b, blk, 2, I16)
        h8 = b.insert_element(ir.Constant(vec(I16, 8), None), h, ir.Constant(I32, 0))
        h8 = b.shuffle_vector(h8, h8, ir.Constant(vec(I32, 8), [0] * 8))
        high = b.trunc(b.and_(b.lshr(h8, ir.Constant(vec(I16, 8), list(range(0, 16, 2)))), _const(vec(I16, 8), 3)),
                       vec(I8, 8))
        return _widen(b, b.sub(b.or_(low, _shl(b, high, 4)), _const(vec(I8, 8), 32)), signed=True)

    def quants(self, b, blk, hdr, c):
        return lookup16(b, IQ4_VALUES, _nibbles16(b, blk, 8 + 16 * c))

    def int_scale(self, b, blk, hdr, c):
        return _pick(b, hdr, [c] * 8)


FORMATS = {d.type: d for d in (Q8_0(), Q4_0(), Q4_1(), Q5_0(), Q5_1(), IQ4_NL(),
                                Q2_K(), Q3_K(), Q4_K(), Q5_K(), Q6_K(), IQ4_XS())}
