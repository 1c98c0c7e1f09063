"""Weight formats: block layouts and their numpy reference dequantisers.

Each format is one small class: the block layout in its docstring and a vectorised
`dequantize_blocks` that is the definition the fast kernels in `kernels/` are tested
against. A row of a tensor is a whole number of blocks; `dequantize(rows, type)` turns
raw bytes of shape (rows, row_bytes) into float32 of shape (rows, n_per_row).

All multi-byte fields are little-endian; "f16" is an IEEE half. Weight indices in the
docstrings are positions within one block (0..31) or super-block (0..255), in the
order the weights appear in the row. The arithmetic is float32 in the order written
(e.g. `(d*sc)*q - dmin*m`), which is also the order of gguf.quants, so the two agree
bit for bit.

A type not listed in FORMATS raises `UnsupportedType`; we never fall back silently.
"""
from __future__ import annotations

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T

QK_K = 256  # weights per K-quant super-block

# IQ4_NL / IQ4_XS: a 4-bit index q selects one of these 16 non-uniform levels (int8).
KVALUES_IQ4NL = np.array([-127, -104, -83, -65, -49, -35, -22, -10,
                          1, 13, 25, 38, 53, 69, 89, 113], dtype=np.int8)


class QuantError(ValueError):
    """Raw weight bytes that cannot be dequantised: the message names the type and the problem."""


class UnsupportedType(QuantError):
    """A GGML weight type this project has no dequantiser for."""


# --- bit unpacking helpers: bytes -> small unsigned ints in weight order ---

def _f16(raw: np.ndarray) -> np.ndarray:
    """Little-endian half floats stored as pairs of bytes -> float32, shape (..., 1)."""
    return raw.view(np.float16).astype(np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """(..., m) packed bytes -> (..., 2m) uint8: the m low nibbles first, then the m high."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def _crumbs(qs: np.ndarray) -> np.ndarray:
    """(..., m) packed bytes -> (..., 4m) uint8 of 2-bit fields: element k*m + l is
    bits 2k..2k+1 of byte l (bits 0-1 of every byte first, then bits 2-3, ...)."""
    return np.concatenate([(qs >> s) & 3 for s in (0, 2, 4, 6)], axis=-1)


def _bit_planes(bits: np.ndarray) -> np.ndarray:
    """(..., m) bytes -> (..., 8m) uint8 of single bits: element k*m + l is bit k of byte l
    (the K-quants' high-bit arrays: weight i's bit is bit i//32 of byte i%32)."""
    return np.concatenate([(bits >> s) & 1 for s in range(8)], axis=-1)


def _bits_of_u32(qh: np.ndarray) -> np.ndarray:
    """(..., 4) bytes of a little-endian uint32 -> (..., 32) uint8: element i is bit i."""
    return np.unpackbits(qh, axis=-1, bitorder="little")


def _k_scales_mins(scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K/Q5_K: 12 bytes b -> eight 6-bit scales sc[j] and mins m[j], each (n, 8) float32.

    j < 4:  sc[j] = b[j] & 63                             m[j] = b[j+4] & 63
    j >= 4: sc[j] = (b[j+4] & 15) | (b[j-4] >> 6) << 4    m[j] = (b[j+4] >> 4) | (b[j] >> 6) << 4
    (the low six bits of bytes 0-3 / 4-7 hold sc/m 0-3; bytes 8-11 the low nibbles of
    sc/m 4-7; the spare top two bits of bytes 0-3 / 4-7 their high bits.)
    """
    lo, mid, hi = scales[:, 0:4], scales[:, 4:8], scales[:, 8:12]
    sc = np.concatenate([lo & 63, (hi & 15) | ((lo >> 6) << 4)], axis=-1)
    m = np.concatenate([mid & 63, (hi >> 4) | ((mid >> 6) << 4)], axis=-1)
    return sc.astype(np.float32), m.astype(np.float32)


def _per_sub_block(x: np.ndarray, scale: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Reshape weights (n, N) to (n, N//size, size) and scales (n, N//size) to (..., 1)."""
    n = x.shape[0]
    return x.reshape(n, -1, size), scale.reshape(n, -1, 1)


class Format:
    type: T
    block_size: int  # weights per block
    type_size: int   # bytes per block
    # dequantize_blocks(blocks): (n_blocks, type_size) uint8 -> (n_blocks, block_size) float32


class F32(Format):
    """F32: one little-endian float32 per weight."""
    type, block_size, type_size = T.F32, 1, 4

    @classmethod
    def dequantize_blocks(cls, blocks):
        return blocks.view(np.float32).copy()


class F16(Format):
    """F16: one IEEE half per weight."""
    type, block_size, type_size = T.F16, 1, 2

    @classmethod
    def dequantize_blocks(cls, blocks):
        return _f16(blocks)


class BF16(Format):
    """BF16: the top 16 bits of a float32; w = float32(bits << 16)."""
    type, block_size, type_size = T.BF16, 1, 2

    @classmethod
    def dequantize_blocks(cls, blocks):
        return (blocks.view(np.uint16).astype(np.uint32) << 16).view(np.float32)


class Q8_0(Format):
    """Q8_0: 32 weights per block = f16 scale d + 32 x int8 q; w = d*q (34 bytes)."""
    type, block_size, type_size = T.Q8_0, 32, 34

    @classmethod
    def dequantize_blocks(cls, blocks):
        d = _f16(blocks[:, :2])                                    # (n_blocks, 1)
        q = blocks[:, 2:].view(np.int8).astype(np.float32)        # (n_blocks, 32)
        return d * q


class Q4_0(Format):
    """Q4_0: 32 weights per block = f16 scale d + 16 bytes of 4-bit q;
    byte j holds weight j (low nibble) and weight j+16 (high nibble); w = d*(q-8) (18 bytes)."""
    type, block_size, type_size = T.Q4_0, 32, 18

    @classmethod
    def dequantize_blocks(cls, blocks):
        d = _f16(blocks[:, :2])                                    # (n_blocks, 1)
        q = _nibbles(blocks[:, 2:]).astype(np.float32) - 8.0       # (n_blocks, 32)
        return d * q


class Q4_1(Format):
    """Q4_1: 32 weights per block = f16 scale d + f16 minimum m + 16 bytes of 4-bit q
    (nibble order as Q4_0); w = d*q + m (20 bytes)."""
    type, block_size, type_size = T.Q4_1, 32, 20

    @classmethod
    def dequantize_blocks(cls, blocks):
        d = _f16(blocks[:, 0:2])                                   # (n_blocks, 1)
        m = _f16(blocks[:, 2:4])                                   # (n_blocks, 1)
        q = _nibbles(blocks[:, 4:]).astype(np.float32)             # (n_blocks, 32)
        return d * q + m


class Q5_0(Format):
    """Q5_0: 32 weights per block (22 bytes):
        bytes 0-1   f16 scale d
        bytes 2-5   qh, a little-endian uint32: bit i is the 5th (high) bit of weight i
        bytes 6-21  qs[16]: weight j (j < 16) is the low nibble of qs[j], weight j+16 the high
    q = nibble | (bit i of qh) << 4, in 0..31;  w = d*(q - 16)."""
    type, block_size, type_size = T.Q5_0, 32, 22

    @classmethod
    def dequantize_blocks(cls, blocks):
        d = _f16(blocks[:, 0:2])                                   # (n_blocks, 1)
        q = _nibbles(blocks[:, 6:22]) | (_bits_of_u32(blocks[:, 2:6]) << 4)
        return d * (q.astype(np.float32) - 16.0)


class Q5_1(Format):
    """Q5_1: 32 weights per block (24 bytes):
        bytes 0-1   f16 scale d         bytes 2-3  f16 minimum m
        bytes 4-7   qh (little-endian uint32): bit i is the high bit of weight i
        bytes 8-23  qs[16], nibble order as Q5_0
    q = nibble | (bit i of qh) << 4, in 0..31;  w = d*q + m."""
    type, block_size, type_size = T.Q5_1, 32, 24

    @classmethod
    def dequantize_blocks(cls, blocks):
        d = _f16(blocks[:, 0:2])                                   # (n_blocks, 1)
        m = _f16(blocks[:, 2:4])                                   # (n_blocks, 1)
        q = _nibbles(blocks[:, 8:24]) | (_bits_of_u32(blocks[:, 4:8]) << 4)
        return d * q.astype(np.float32) + m


class IQ4_NL(Format):
    """IQ4_NL: 32 weights per block (18 bytes): f16 scale d (bytes 0-1) + qs[16] (bytes 2-17),
    nibble order as Q4_0 (weight j low nibble of qs[j], weight j+16 the high one);
    w = d * KVALUES_IQ4NL[nibble], a fixed non-uniform table of 16 int8 levels."""
    type, block_size, type_size = T.IQ4_NL, 32, 18

    @classmethod
    def dequantize_blocks(cls, blocks):
        d = _f16(blocks[:, 0:2])                                   # (n_blocks, 1)
        return d * KVALUES_IQ4NL[_nibbles(blocks[:, 2:18])].astype(np.float32)


class Q2_K(Format):
    """Q2_K: 256 weights per super-block = 16 sub-blocks of 16 (84 bytes):
        bytes 0-15   scales[16]: sub-block s = i//16 has scale scales[s] & 15, min scales[s] >> 4
        bytes 16-79  qs[64], 2-bit q: weight i = 128h + 32k + l (h < 2, k < 4, l < 32)
                     is bits 2k..2k+1 of qs[32h + l]
        bytes 80-81  f16 d (scale of the scales)    bytes 82-83  f16 dmin (scale of the mins)
    w = (d*(scales[s] & 15))*q - dmin*(scales[s] >> 4)."""
    type, block_size, type_size = T.Q2_K, QK_K, 84

    @classmethod
    def dequantize_blocks(cls, blocks):
        n = len(blocks)
        scales = blocks[:, 0:16]
        d, dmin = _f16(blocks[:, 80:82]), _f16(blocks[:, 82:84])                  # (n, 1)
        dl = d * (scales & 15).astype(np.float32)                                   # (n, 16)
        ml = dmin * (scales >> 4).astype(np.float32)
        q = _crumbs(blocks[:, 16:80].reshape(n, 2, 32)).reshape(n, QK_K).astype(np.float32)
        q, dl = _per_sub_block(q, dl, 16)
        return (dl * q - ml.reshape(n, 16, 1)).reshape(n, QK_K)


class Q3_K(Format):
    """Q3_K: 256 weights per super-block = 16 sub-blocks of 16 (110 bytes):
        bytes 0-31    hmask[32]: the high bit of weight i is bit i//32 of hmask[i%32]
        bytes 32-95   qs[64], the low 2 bits: weight i = 128h + 32k + l is bits 2k..2k+1
                      of qs[32h + l] (as Q2_K)
        bytes 96-107  b[12]: sixteen 6-bit scales, sub-block s = i//16:
                      low 4 bits: s < 8 ? b[s] & 15 : b[s-8] >> 4
                      high 2 bits: (b[8 + s%4] >> 2*(s//4)) & 3;  sc[s] = that 6-bit value - 32
        bytes 108-109 f16 d
    q = low2 - (high bit set ? 0 : 4), in -4..3;  w = (d*sc[s])*q."""
    type, block_size, type_size = T.Q3_K, QK_K, 110

    @staticmethod
    def scales(b: np.ndarray) -> np.ndarray:
        """(n, 12) bytes -> (n, 16) signed scales (value - 32) as float32."""
        low = _nibbles(b[:, 0:8])                                   # s < 8: b[s] & 15; else b[s-8] >> 4
        high = _crumbs(b[:, 8:12])                                  # element s: (b[8 + s%4] >> 2*(s//4)) & 3
        return (low | (high << 4)).astype(np.float32) - 32.0

    @classmethod
    def dequantize_blocks(cls, blocks):
        n = len(blocks)
        d = _f16(blocks[:, 108:110])                                               # (n, 1)
        dl = d * cls.scales(blocks[:, 96:108])                                      # (n, 16)
        low = _crumbs(blocks[:, 32:96].reshape(n, 2, 32)).reshape(n, QK_K)
        high = _bit_planes(blocks[:, 0:32])                                         # (n, 256)
        q = low.astype(np.float32) - 4.0 * (1 - high).astype(np.float32)
        q, dl = _per_sub_block(q, dl, 16)
        return (dl * q).reshape(n, QK_K)


class Q4_K(Format):
    """Q4_K: 256 weights per super-block = 8 sub-blocks of 32 (144 bytes):
        bytes 0-1    f16 d      bytes 2-3  f16 dmin
        bytes 4-15   eight 6-bit scales sc[s] and mins m[s], s = i//32 (see _k_scales_mins)
        bytes 16-143 qs[128], 4-bit q: for j < 4, l < 32, weight 64j + l is the low nibble
                     of qs[32j + l] and weight 64j + 32 + l its high nibble
    w = (d*sc[s])*q - dmin*m[s]."""
    type, block_size, type_size = T.Q4_K, QK_K, 144

    @classmethod
    def dequantize_blocks(cls, blocks):
        n = len(blocks)
        d, dmin = _f16(blocks[:, 0:2]), _f16(blocks[:, 2:4])                       # (n, 1)
        sc, m = _k_scales_mins(blocks[:, 4:16])                                     # (n, 8)
        q = _nibbles(blocks[:, 16:144].reshape(n, 4, 32)).reshape(n, QK_K).astype(np.float32)
        q, dl = _per_sub_block(q, d * sc, 32)
        return (dl * q - (dmin * m).reshape(n, 8, 1)).reshape(n, QK_K)


class Q5_K(Format):
    """Q5_K: 256 weights per super-block = 8 sub-blocks of 32 (176 bytes):
        bytes 0-1    f16 d      bytes 2-3  f16 dmin
        bytes 4-15   eight 6-bit scales sc[s] and mins m[s], s = i//32 (as Q4_K)
        bytes 16-47  qh[32]: the 5th bit of weight i is bit i//32 of qh[i%32]
        bytes 48-175 qs[128]: the low 4 bits, nibble order as Q4_K
    q = nibble | high << 4, in 0..31;  w = (d*sc[s])*q - dmin*m[s]."""
    type, block_size, type_size = T.Q5_K, QK_K, 176

    @classmethod
    def dequantize_blocks(cls, blocks):
        n = len(blocks)
        d, dmin = _f16(blocks[:, 0:2]), _f16(blocks[:, 2:4])                       # (n, 1)
        sc, m = _k_scales_mins(blocks[:, 4:16])                                     # (n, 8)
        low = _nibbles(blocks[:, 48:176].reshape(n, 4, 32)).reshape(n, QK_K)
        q = (low | (_bit_planes(blocks[:, 16:48]) << 4)).astype(np.float32)
        q, dl = _per_sub_block(q, d * sc, 32)
        return (dl * q - (dmin * m).reshape(n, 8, 1)).reshape(n, QK_K)


class Q6_K(Format):
    """Q6_K: 256 weights per super-block = 16 sub-blocks of 16 (210 bytes):
        bytes 0-127    ql[128], the low 4 bits: weight i = 128h + r (h < 2, r < 128) is the
                       low nibble of ql[64h + r] for r < 64, the high nibble of ql[64h + r-64]
        bytes 128-191  qh[64], the high 2 bits: weight 128h + 32k + l (k < 4, l < 32) is
                       bits 2k..2k+1 of qh[32h + l]
        bytes 192-207  scales[16], int8: sub-block s = i//16
        bytes 208-209  f16 d
    q = (low | high << 4) - 32, in -32..31;  w = (d*scales[s])*q."""
    type, block_size, type_size = T.Q6_K, QK_K, 210

    @classmethod
    def dequantize_blocks(cls, blocks):
        n = len(blocks)
        d = _f16(blocks[:, 208:210])                                               # (n, 1)
        dl = d * blocks[:, 192:208].view(np.int8).astype(np.float32)               # (n, 16)
        low = _nibbles(blocks[:, 0:128].reshape(n, 2, 64)).reshape(n, QK_K)
        high = _crumbs(blocks[:, 128:192].reshape(n, 2, 32)).reshape(n, QK_K)
        q = (low | (high << 4)).astype(np.float32) - 32.0
        q, dl = _per_sub_block(q, dl, 16)
        return (dl * q).reshape(n, QK_K)


class IQ4_XS(Format):
    """IQ4_XS: 256 weights per super-block = 8 sub-blocks of 32 (136 bytes):
        bytes 0-1    f16 d
        bytes 2-3    scales_h, little-endian uint16: bits 2s..2s+1 are the high 2 bits of
                     sub-block s's scale (s = i//32)
        bytes 4-7    scales_l[4]: the low 4 bits of scale s are nibble s%2 (low first) of
                     scales_l[s//2];  ls[s] = (low | high << 4) - 32, in -32..31
        bytes 8-135  qs[128]: sub-block s uses qs[16s .. 16s+15] in Q4_0/IQ4_NL order
                     (weight 32s + j low nibble of qs[16s + j], 32s + 16 + j the high one)
    w = (d*ls[s]) * KVALUES_IQ4NL[nibble]."""
    type, block_size, type_size = T.IQ4_XS, QK_K, 136

    @classmethod
    def dequantize_blocks(cls, blocks):
        n = len(blocks)
        d = _f16(blocks[:, 0:2])                                                   # (n, 1)
        low = _nibbles(blocks[:, 4:8, None]).reshape(n, 8)            # scales_l[s//2] nibble s%2
        high = _crumbs(blocks[:, 2:4, None]).reshape(n, 8)            # scales_h bits 2s..2s+1
        ls = (low | (high << 4)).astype(np.float32) - 32.0
        q = KVALUES_IQ4NL[_nibbles(blocks[:, 8:136].reshape(n, 8, 16))].astype(np.float32)
        return (d.reshape(n, 1, 1) * ls.reshape(n, 8, 1) * q).reshape(n, QK_K)


FORMATS: dict[T, type[Format]] = {f.type: f for f in (
    F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL,
    Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_XS)}


def block_shape(qtype: T) -> tuple[int, int]:
    """(weights per block, bytes per block) for any type ggml knows."""
    return GGML_QUANT_SIZES[qtype]


def format_of(qtype) -> type[Format]:
    """The Format class for a GGML type; UnsupportedType if we have none."""
    try:
        qtype = T(qtype)
    except ValueError:
        raise UnsupportedType(f"unknown GGML weight type {qtype!r}") from None
    fmt = FORMATS.get(qtype)
    if fmt is None:
        have = ", ".join(t.name for t in FORMATS)
        raise UnsupportedType(f"weight type {qtype.name} is not supported (supported: {have})")
    return fmt


def dequantize(rows: np.ndarray, qtype: T) -> np.ndarray:
    """Raw bytes (rows, row_bytes) or (row_bytes,) -> float32 (rows, n_per_row) or (n_per_row,)."""
    fmt = format_of(qtype)
    raw = np.ascontiguousarray(rows, dtype=np.uint8)
    if raw.ndim == 0 or raw.shape[-1] % fmt.type_size:
        size = raw.shape[-1] if raw.ndim else 0
        raise QuantError(f"{fmt.type.name} row of {size} bytes is not a whole number of "
                         f"{fmt.type_size}-byte blocks")
    lead = raw.shape[:-1]
    n_blocks = raw.shape[-1] // fmt.type_size
    out = fmt.dequantize_blocks(raw.reshape(-1, fmt.type_size))
    return np.asarray(out, dtype=np.float32).reshape(*lead, n_blocks * fmt.block_size)
