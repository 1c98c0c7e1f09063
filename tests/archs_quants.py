"""Deterministic numpy quantisers for the archs test models (tests/archs_models.py).

Round to nearest with per-block scales (and mins), no search: not llama-quantize's quality, but every
step is an element-wise IEEE operation, max/min/abs or a first-index argmin, so the bytes are the same
on every machine and numpy version (no float sums, whose order could vary). Each writes the block layout
of its class in weights/quants.py, whose dequantisers (and gguf.quants') read it back. gguf.quants'
own quantisers are not used: their bytes change between gguf versions (0.17's Q5_0 rounds in float64,
0.19's in float32).

quantize(w, type): float32 (rows, n_per_row) -> uint8 (rows, row_bytes).
"""
from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as T

from weights.quants import KVALUES_IQ4NL, QK_K

KV = KVALUES_IQ4NL.astype(np.float32)


def _f16(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float32 -> (its nearest half as float32, the half's two bytes)."""
    h = x.astype(np.float16)
    return h.astype(np.float32), h.view(np.uint8).reshape(*x.shape[:-1], 2)


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a / b, and 0 where b is 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b == 0, np.float32(0), a / np.where(b == 0, np.float32(1), b)).astype(np.float32)


def _signed_absmax(x: np.ndarray) -> np.ndarray:
    """The element of largest magnitude along the last axis (the first such, with its sign), keepdims."""
    return np.take_along_axis(x, np.abs(x).argmax(axis=-1)[..., None], axis=-1)


def _round(x: np.ndarray, lo: int, hi: int) -> np.ndarray:
    return np.clip(np.rint(x), lo, hi).astype(np.uint8 if lo >= 0 else np.int8)


def _pack_bit_planes(bits: np.ndarray) -> np.ndarray:
    """(n, 256) single bits -> (n, 32) bytes: bit i//32 of byte i%32 is bit i (the K-quants' high bits)."""
    n = len(bits)
    return np.packbits(bits.reshape(n, 8, 32).transpose(0, 2, 1), axis=-1, bitorder="little").reshape(n, 32)


def _pack_crumbs(q: np.ndarray) -> np.ndarray:
    """(n, 256) 2-bit values -> (n, 64) bytes: weight 128h + 32k + l is bits 2k..2k+1 of byte 32h + l."""
    q = q.reshape(len(q), 2, 4, 32).astype(np.uint8)
    return (q[:, :, 0] | q[:, :, 1] << 2 | q[:, :, 2] << 4 | q[:, :, 3] << 6).reshape(len(q), 64)


def _pack_nibbles(q: np.ndarray, group: int) -> np.ndarray:
    """(n, m) 4-bit values -> (n, m/2) bytes, per group of `group` values: the first half in the low
    nibbles, the second half in the high ones (Q4_0 order for group 32, Q4_K order for group 64)."""
    q = q.reshape(len(q), -1, 2, group // 2).astype(np.uint8)
    return (q[:, :, 0] | q[:, :, 1] << 4).reshape(len(q), -1)


def _scale_min_blocks(x: np.ndarray, levels: int, scale_levels: int):
    """Sub-blocks x (n, k, size) -> w ~ (d*sc)*q - (dmin*m): q in 0..levels, sc and m in 0..scale_levels;
    returns q (n, k, size) uint8, sc, m (n, k) uint8 and the bytes of d and dmin (n, 2) each."""
    lo = np.minimum(x.min(axis=-1), 0)                               # (n, k): the min, never above 0
    scale = (x.max(axis=-1) - lo) / np.float32(levels)
    d, d_bytes = _f16(scale.max(axis=-1, keepdims=True) / np.float32(scale_levels))
    dmin, dmin_bytes = _f16(-lo.min(axis=-1, keepdims=True) / np.float32(scale_levels))
    sc = _round(_div(scale, d), 0, scale_levels)
    m = _round(_div(-lo, dmin), 0, scale_levels)
    dl, ml = d * sc.astype(np.float32), dmin * m.astype(np.float32)
    q = _round(_div(x + ml[..., None], dl[..., None]), 0, levels)
    return q, sc, m, d_bytes, dmin_bytes


def _signed_scale_blocks(x: np.ndarray, qmin: float, scale_min: int, scale_max: int):
    """Sub-blocks x (n, k, size) -> w ~ (d*sc)*v: the sub-block's largest magnitude maps to qmin (< 0),
    sc in scale_min..scale_max (the largest sub-block scale maps to scale_min). Returns (d*sc) as float32
    (n, k, 1), sc (n, k) int8 and the bytes of d (n, 2)."""
    scale = _signed_absmax(x)[..., 0] / np.float32(qmin)             # (n, k)
    d, d_bytes = _f16(_signed_absmax(scale) / np.float32(scale_min))
    sc = _round(_div(scale, d), scale_min, scale_max)
    return (d * sc.astype(np.float32))[..., None], sc, d_bytes


def _nearest_iq4(t: np.ndarray) -> np.ndarray:
    """Index of the IQ4_NL level nearest to each t (the lower on a tie)."""
    return np.abs(t[..., None] - KV).argmin(axis=-1).astype(np.uint8)


def _q_bits(q: np.ndarray) -> np.ndarray:
    """(n, 32) 5-bit values -> (n, 4) bytes of qh, a little-endian uint32 whose bit i is q[i]'s bit 4."""
    return np.packbits(q >> 4, axis=-1, bitorder="little")


def q8_0(x: np.ndarray) -> np.ndarray:
    dl, _, d = _signed_scale_blocks(x.reshape(len(x), 1, 32), -127, 1, 1)  # d = the block's scale
    return np.concatenate([d, _round(_div(x.reshape(len(x), 1, 32), dl), -128, 127).reshape(len(x), 32)
                           .view(np.uint8)], axis=-1)


def q4_0(x: np.ndarray) -> np.ndarray:
    n = len(x)
    dl, _, d = _signed_scale_blocks(x.reshape(n, 1, 32), -8, 1, 1)
    q = (_round(_div(x.reshape(n, 1, 32), dl), -8, 7).astype(np.int16) + 8).astype(np.uint8).reshape(n, 32)
    return np.concatenate([d, _pack_nibbles(q, 32)], axis=-1)


def q5_0(x: np.ndarray) -> np.ndarray:
    n = len(x)
    dl, _, d = _signed_scale_blocks(x.reshape(n, 1, 32), -16, 1, 1)
    q = (_round(_div(x.reshape(n, 1, 32), dl), -16, 15).astype(np.int16) + 16).astype(np.uint8).reshape(n, 32)
    return np.concatenate([d, _q_bits(q), _pack_nibbles(q & 15, 32)], axis=-1)


def _min_scale(x: np.ndarray, levels: int):
    """Blocks x (n, 32) -> w ~ d*q + m, q in 0..levels: q (n, 32) uint8 and the bytes of d and m."""
    lo = x.min(axis=-1, keepdims=True)
    d, d_bytes = _f16((x.max(axis=-1, keepdims=True) - lo) / np.float32(levels))
    m, m_bytes = _f16(lo)
    return _round(_div(x - m, d), 0, levels), d_bytes, m_bytes


def q4_1(x: np.ndarray) -> np.ndarray:
    q, d, m = _min_scale(x, 15)
    return np.concatenate([d, m, _pack_nibbles(q, 32)], axis=-1)


def q5_1(x: np.ndarray) -> np.ndarray:
    q, d, m = _min_scale(x, 31)
    return np.concatenate([d, m, _q_bits(q), _pack_nibbles(q & 15, 32)], axis=-1)


def q2_k(x: np.ndarray) -> np.ndarray:
    n = len(x)
    q, sc, m, d, dmin = _scale_min_blocks(x.reshape(n, 16, 16), 3, 15)
    return np.concatenate([sc | m << 4, _pack_crumbs(q.reshape(n, QK_K)), d, dmin], axis=-1)


def q3_k(x: np.ndarray) -> np.ndarray:
    n = len(x)
    dl, sc, d = _signed_scale_blocks(x.reshape(n, 16, 16), -4, -32, 31)
    u = (_round(_div(x.reshape(n, 16, 16), dl), -4, 3).astype(np.int16) + 4).astype(np.uint8).reshape(n, QK_K)
    v = (sc.astype(np.int16) + 32).astype(np.uint8)                                             # 0..63
    low = (v[:, :8] & 15) | (v[:, 8:] & 15) << 4                      # scale s < 8 low nibble, s >= 8 high
    high = (v >> 4).reshape(n, 4, 4)                                  # [s // 4, s % 4]
    high = high[:, 0] | high[:, 1] << 2 | high[:, 2] << 4 | high[:, 3] << 6
    return np.concatenate([_pack_bit_planes(u >> 2), _pack_crumbs(u & 3), low, high, d], axis=-1)


def _k_scales(sc: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Eight 6-bit scales and mins -> the 12 bytes weights.quants._k_scales_mins reads."""
    return np.concatenate([sc[:, :4] | (sc[:, 4:] >> 4) << 6, m[:, :4] | (m[:, 4:] >> 4) << 6,
                           (sc[:, 4:] & 15) | (m[:, 4:] & 15) << 4], axis=-1)


def q4_k(x: np.ndarray) -> np.ndarray:
    n = len(x)
    q, sc, m, d, dmin = _scale_min_blocks(x.reshape(n, 8, 32), 15, 63)
    return np.concatenate([d, dmin, _k_scales(sc, m), _pack_nibbles(q.reshape(n, QK_K), 64)], axis=-1)


def q5_k(x: np.ndarray) -> np.ndarray:
    n = len(x)
    q, sc, m, d, dmin = _scale_min_blocks(x.reshape(n, 8, 32), 31, 63)
    q = q.reshape(n, QK_K)
    return np.concatenate([d, dmin, _k_scales(sc, m), _pack_bit_planes(q >> 4),
                           _pack_nibbles(q & 15, 64)], axis=-1)


def q6_k(x: np.ndarray) -> np.ndarray:
    n = len(x)
    dl, sc, d = _signed_scale_blocks(x.reshape(n, 16, 16), -32, -128, 127)
    u = (_round(_div(x.reshape(n, 16, 16), dl), -32, 31).astype(np.int16) + 32).astype(np.uint8)
    u = u.reshape(n, QK_K)
    ql = _pack_nibbles(u & 15, 128)                                   # weight 128h + r: ql[64h + r % 64]
    return np.concatenate([ql, _pack_crumbs(u >> 4), sc.view(np.uint8), d], axis=-1)


def iq4_nl(x: np.ndarray) -> np.ndarray:
    n = len(x)
    dl, _, d = _signed_scale_blocks(x.reshape(n, 1, 32), KV[0], 1, 1)  # d = the block's scale, sc = 1
    return np.concatenate([d, _pack_nibbles(_nearest_iq4(_div(x.reshape(n, 1, 32), dl)).reshape(n, 32), 32)],
                          axis=-1)


def iq4_xs(x: np.ndarray) -> np.ndarray:
    n = len(x)
    dl, ls, d = _signed_scale_blocks(x.reshape(n, 8, 32), KV[0], -32, 31)
    v = (ls.astype(np.int16) + 32).astype(np.uint8)                   # (n, 8), 0..63
    high = (v >> 4).astype(np.uint16) << (2 * np.arange(8, dtype=np.uint16))
    scales_h = np.bitwise_or.reduce(high, axis=-1).astype("<u2").view(np.uint8).reshape(n, 2)
    scales_l = (v[:, 0::2] & 15) | (v[:, 1::2] & 15) << 4
    idx = _nearest_iq4(_div(x.reshape(n, 8, 32), dl)).reshape(n, QK_K)
    return np.concatenate([d, scales_h, scales_l, _pack_nibbles(idx, 32)], axis=-1)


QUANTISERS = {T.Q8_0: q8_0, T.Q4_0: q4_0, T.Q4_1: q4_1, T.Q5_0: q5_0, T.Q5_1: q5_1, T.IQ4_NL: iq4_nl,
              T.Q2_K: q2_k, T.Q3_K: q3_k, T.Q4_K: q4_k, T.Q5_K: q5_k, T.Q6_K: q6_k, T.IQ4_XS: iq4_xs}


def quantize(w: np.ndarray, qtype: T) -> np.ndarray:
    """float32 rows (rows, n_per_row) -> their blocks as uint8 (rows, row_bytes)."""
    w = np.ascontiguousarray(w, dtype=np.float32)
    block = QK_K if qtype in (T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K, T.IQ4_XS) else 32
    if qtype not in QUANTISERS or w.shape[-1] % block:
        raise ValueError(f"cannot quantise rows of {w.shape[-1]} to {T(qtype).name}")
    rows = w.shape[0]
    blocks = QUANTISERS[qtype](w.reshape(-1, block))
    return np.ascontiguousarray(blocks, dtype=np.uint8).reshape(rows, -1)
