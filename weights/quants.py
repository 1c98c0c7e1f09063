"""Weight formats: block layouts and their numpy reference dequantisers.

Each format is one small class: the block layout in its docstring and a vectorised
`dequantize_blocks` that is the definition the fast kernels in `kernels/` are tested
against. A row of a tensor is a whole number of blocks; `dequantize(rows, type)` turns
raw bytes of shape (rows, row_bytes) into float32 of shape (rows, n_per_row).

Formats we do not write out here (the K-quants and Q5_x that real files also carry)
fall back to `gguf.quants`, the reference implementation from llama.cpp's authors.
"""
from __future__ import annotations

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T
from gguf import quants as gguf_quants


def _f16(raw: np.ndarray) -> np.ndarray:
    """Little-endian half floats stored as pairs of bytes -> float32, shape (..., 1)."""
    return raw.view(np.float16).astype(np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """(n_blocks, 16) packed bytes -> (n_blocks, 32) uint8: low nibbles first, then high."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


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


FORMATS: dict[T, type[Format]] = {f.type: f for f in (F32, F16, BF16, Q8_0, Q4_0, Q4_1)}


def block_shape(qtype: T) -> tuple[int, int]:
    """(weights per block, bytes per block) for any type ggml knows."""
    return GGML_QUANT_SIZES[qtype]


def dequantize(rows: np.ndarray, qtype: T) -> np.ndarray:
    """Raw bytes (rows, row_bytes) or (row_bytes,) -> float32 (rows, n_per_row) or (n_per_row,)."""
    block_size, type_size = block_shape(qtype)
    raw = np.ascontiguousarray(rows, dtype=np.uint8)
    lead = raw.shape[:-1]
    n_blocks = raw.shape[-1] // type_size
    fmt = FORMATS.get(qtype)
    if fmt is None:  # K-quants, Q5_x, ...: gguf's reference
        out = gguf_quants.dequantize(raw.reshape(-1, n_blocks * type_size), qtype)
    else:
        out = fmt.dequantize_blocks(raw.reshape(-1, type_size))
    return np.asarray(out, dtype=np.float32).reshape(*lead, n_blocks * block_size)
