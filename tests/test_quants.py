"""Our numpy dequantisers agree exactly with gguf's reference implementation."""
from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf import quants as gguf_quants

import archs_quants
from conftest import archs_model
from weights.gguf import GGUFFile
from weights.quants import FORMATS, QuantError, UnsupportedType, block_shape, dequantize

# Byte offsets of each format's f16 scale fields: random bytes there could be inf/NaN,
# so the random-block test overwrites them with real halves.
HALVES = {
    T.Q8_0: (0,), T.Q4_0: (0,), T.Q4_1: (0, 2), T.Q5_0: (0,), T.Q5_1: (0, 2), T.IQ4_NL: (0,),
    T.Q2_K: (80, 82), T.Q3_K: (108,), T.Q4_K: (0, 2), T.Q5_K: (0, 2), T.Q6_K: (208,), T.IQ4_XS: (0,),
}

# One small llama file per quantised type (the type is in most of its block matrices).
FILES = {
    T.Q4_K: "llama-Q4_K_M", T.Q2_K: "llama-Q2_K", T.Q3_K: "llama-Q3_K_M", T.Q5_K: "llama-Q5_K_M",
    T.Q6_K: "llama-Q6_K", T.IQ4_XS: "llama-IQ4_XS", T.IQ4_NL: "llama-IQ4_NL", T.Q5_0: "llama-Q5_0", T.Q5_1: "llama-Q5_1",
}


def random_blocks(qtype: T, n_blocks: int, seed: int = 0) -> np.ndarray:
    """Random valid bytes for n_blocks blocks: every bit pattern, with finite f16 scales."""
    fmt = FORMATS[qtype]
    rng = np.random.default_rng(seed)
    if qtype in (T.F32, T.F16, T.BF16):  # whole-weight floats: random finite values
        w = rng.standard_normal(n_blocks).astype(np.float32)
        raw = {T.F32: w, T.F16: w.astype(np.float16)}.get(qtype)
        raw = (w.view(np.uint32) >> 16).astype(np.uint16) if raw is None else raw
        return raw.view(np.uint8).reshape(n_blocks, fmt.type_size)
    blocks = rng.integers(0, 256, (n_blocks, fmt.type_size), dtype=np.uint8)
    for at in HALVES[qtype]:
        halves = rng.uniform(-0.1, 0.1, n_blocks).astype(np.float16)
        blocks[:, at : at + 2] = halves.view(np.uint8).reshape(n_blocks, 2)
    return blocks


def test_every_format_has_its_ggml_size():
    for qtype, fmt in FORMATS.items():
        assert fmt.type == qtype and block_shape(qtype) == (fmt.block_size, fmt.type_size)


@pytest.mark.parametrize("qtype", list(FORMATS), ids=lambda t: t.name)
def test_random_blocks_match_gguf(qtype):
    fmt = FORMATS[qtype]
    blocks = random_blocks(qtype, 500)
    ours = fmt.dequantize_blocks(blocks)
    assert ours.dtype == np.float32 and ours.shape == (500, fmt.block_size)
    assert np.isfinite(ours).all()
    # Same float32 operations in the same order as gguf.quants: bit-equal, no tolerance.
    ref = gguf_quants.dequantize(blocks.reshape(1, -1), qtype).reshape(ours.shape)
    assert np.array_equal(ours, ref)
    # and through dequantize(): 5 rows of 100 blocks
    rows = dequantize(blocks.reshape(5, -1), qtype)
    assert rows.shape == (5, 100 * fmt.block_size) and np.array_equal(rows.reshape(ours.shape), ref)


@pytest.mark.parametrize("qtype", list(FILES), ids=lambda t: t.name)
def test_real_tensors_match_gguf(qtype):
    path = archs_model(FILES[qtype])
    f = GGUFFile(path)
    tensors = [t for t in f.tensors.values() if t.type == qtype]
    assert tensors, f"no {qtype.name} tensor in {path.name}"
    for t in tensors:
        ours = dequantize(t.data, t.type)
        assert ours.shape == t.shape, t.name
        ref = gguf_quants.dequantize(np.asarray(t.data), t.type).reshape(t.shape)
        assert np.array_equal(ours, ref), t.name
        assert np.isfinite(ours).all() and np.abs(ours).max() > 0, t.name


@pytest.mark.parametrize("qtype", [T.Q5_0, T.Q5_1], ids=lambda t: t.name)
@pytest.mark.parametrize("shape", [(1, 32), (3, 64), (7, 256)])
def test_roundtrip_matches_gguf(qtype, shape):
    # the types gguf can also quantise: dequantize(quantize(w)) still resembles w
    rng = np.random.default_rng(0)
    w = rng.standard_normal(shape).astype(np.float32)
    raw = gguf_quants.quantize(w, qtype)
    ours = dequantize(raw, qtype)
    np.testing.assert_array_equal(ours, gguf_quants.dequantize(raw, qtype).reshape(shape))
    assert np.mean((ours - w) ** 2) / np.mean(w ** 2) < 0.01


# tests/archs_quants.py's round-to-nearest quantisers (they make the archs test models): NMSE bounds on
# N(0, 1) rows, a little above what they give (llama-quantize: Q2_K 0.09, Q3_K 0.023, Q4_K 0.005, ...)
ARCHS_NMSE = {T.Q8_0: 4e-5, T.Q4_0: 0.009, T.Q4_1: 0.008, T.Q5_0: 0.0025, T.Q5_1: 0.002, T.IQ4_NL: 0.008,
              T.Q2_K: 0.12, T.Q3_K: 0.03, T.Q4_K: 0.008, T.Q5_K: 0.002, T.Q6_K: 5e-4, T.IQ4_XS: 0.008}


def test_archs_quantisers_cover_every_quantised_format():
    assert set(archs_quants.QUANTISERS) == set(ARCHS_NMSE) == set(FORMATS) - {T.F32, T.F16, T.BF16}


@pytest.mark.parametrize("qtype", list(ARCHS_NMSE), ids=lambda t: t.name)
def test_archs_quantisers_round_trip(qtype):
    """The blocks they write are read back by gguf and by us alike, near the input; a zero block stays zero,
    and each block's largest weight keeps its sign."""
    w = np.random.RandomState(0).standard_normal((8, 512)).astype(np.float32)
    w[1], w[2, :256] = 0, np.abs(w[2, :256])
    raw = archs_quants.quantize(w, qtype)
    block_size, type_size = block_shape(qtype)
    assert raw.dtype == np.uint8 and raw.shape == (8, 512 // block_size * type_size)
    ours = dequantize(raw, qtype)
    np.testing.assert_array_equal(ours, gguf_quants.dequantize(raw, qtype).reshape(w.shape))
    assert np.mean((ours - w) ** 2) / np.mean(w ** 2) < ARCHS_NMSE[qtype]
    assert not ours[1].any() and (ours[2, :256] >= -0.05 * w[2].max()).all()
    blocks, back = w.reshape(-1, block_size), ours.reshape(-1, block_size)
    at = np.abs(blocks).argmax(axis=1)
    k = np.arange(len(blocks))
    assert (np.sign(back[k, at]) == np.sign(blocks[k, at]))[np.abs(blocks[k, at]) > 0].all()


@pytest.mark.parametrize("qtype", [T.F32, T.F16, T.Q8_0, T.Q4_0, T.Q4_1], ids=lambda t: t.name)
@pytest.mark.parametrize("shape", [(1, 32), (3, 64), (7, 256)])
def test_roundtrip_simple_formats(qtype, shape):
    rng = np.random.default_rng(0)
    w = rng.standard_normal(shape).astype(np.float32)
    if qtype == T.F32:
        raw = w.view(np.uint8)
    elif qtype == T.F16:
        raw = w.astype(np.float16).view(np.uint8)
    else:
        raw = gguf_quants.quantize(w, qtype)
    ours = dequantize(raw, qtype)
    assert ours.dtype == np.float32 and ours.shape == shape
    np.testing.assert_array_equal(ours, gguf_quants.dequantize(raw, qtype).reshape(shape))
    assert np.mean((ours - w) ** 2) / np.mean(w ** 2) < 0.02  # a 4-bit format still resembles its input


def test_one_row_and_block_sizes():
    raw = gguf_quants.quantize(np.linspace(-1, 1, 64, dtype=np.float32)[None], T.Q8_0)[0]
    assert dequantize(raw, T.Q8_0).shape == (64,)
    assert dequantize(random_blocks(T.Q6_K, 2).reshape(-1), T.Q6_K).shape == (512,)
    assert block_shape(T.Q4_1) == (32, 20) and block_shape(T.Q8_0) == (32, 34)


@pytest.mark.parametrize("qtype", [T.IQ2_XXS, T.IQ1_S, T.TQ1_0, T.Q8_K, T.MXFP4], ids=lambda t: t.name)
def test_unsupported_type_is_a_clear_error(qtype):
    _, type_size = block_shape(qtype)
    with pytest.raises(UnsupportedType, match=f"weight type {qtype.name} is not supported"):
        dequantize(np.zeros((2, type_size), np.uint8), qtype)
    assert issubclass(UnsupportedType, ValueError)


def test_unknown_type_number_is_unsupported():
    with pytest.raises(UnsupportedType, match="unknown GGML weight type 999"):
        dequantize(np.zeros(32, np.uint8), 999)


@pytest.mark.parametrize("qtype,nbytes", [(T.Q4_K, 143), (T.Q6_K, 211), (T.Q5_0, 23), (T.F32, 6)],
                         ids=lambda v: getattr(v, "name", str(v)))
def test_partial_block_is_a_clear_error(qtype, nbytes):
    with pytest.raises(QuantError, match=f"{qtype.name} row of {nbytes} bytes is not a whole number"):
        dequantize(np.zeros((3, nbytes), np.uint8), qtype)


# --- the docstrings are the spec for kernels: a per-weight scalar reading of each one ---

def _h(b, at):
    return np.float32(b[at : at + 2].view(np.float16)[0])


def _k_scale_min(b, s):  # Q4_K/Q5_K 6-bit scale and min of sub-block s from 12 bytes b
    if s < 4:
        return b[s] & 63, b[s + 4] & 63
    return (b[s + 4] & 15) | ((b[s - 4] >> 6) << 4), (b[s + 4] >> 4) | ((b[s] >> 6) << 4)


def _nibble_q4(qs, i):  # 32-weight nibble order: weight j low nibble of qs[j], j+16 the high
    return qs[i % 16] >> 4 if i >= 16 else qs[i] & 15


def scalar_weight(qtype, b, i):
    """Weight i of one block b (uint8), read as its format's docstring says."""
    f32, b = np.float32, b.astype(np.int64)
    bi = b.astype(np.uint8)
    if qtype in (T.Q5_0, T.Q5_1):
        qh_at, qs_at = (2, 6) if qtype == T.Q5_0 else (4, 8)
        qh = int.from_bytes(bytes(bi[qh_at : qh_at + 4]), "little")
        q = _nibble_q4(b[qs_at:], i) | ((qh >> i) & 1) << 4
        d = _h(bi, 0)
        return d * f32(q - 16) if qtype == T.Q5_0 else d * f32(q) + _h(bi, 2)
    if qtype == T.IQ4_NL:
        return _h(bi, 0) * f32(KV[_nibble_q4(b[2:], i)])
    h, r, k, l, s = i // 128, i % 128, (i % 128) // 32, i % 32, i // 16
    if qtype == T.Q2_K:
        q = (b[16 + 32 * h + l] >> 2 * k) & 3
        return (_h(bi, 80) * f32(b[s] & 15)) * f32(q) - _h(bi, 82) * f32(b[s] >> 4)
    if qtype == T.Q3_K:
        sb = b[96:108]
        sc = ((sb[s] & 15) if s < 8 else (sb[s - 8] >> 4)) | (((sb[8 + s % 4] >> 2 * (s // 4)) & 3) << 4)
        low = (b[32 + 32 * h + l] >> 2 * k) & 3
        high = (b[i % 32] >> (i // 32)) & 1
        return (_h(bi, 108) * f32(sc - 32)) * f32(low - (0 if high else 4))
    if qtype in (T.Q4_K, T.Q5_K):
        s, j, l64 = i // 32, i // 64, i % 64
        sc, m = _k_scale_min(b[4:16], s)
        qs = b[16:] if qtype == T.Q4_K else b[48:]
        q = qs[32 * j + l64] & 15 if l64 < 32 else qs[32 * j + l64 - 32] >> 4
        if qtype == T.Q5_K:
            q |= ((b[16 + i % 32] >> (i // 32)) & 1) << 4
        return (_h(bi, 0) * f32(sc)) * f32(q) - _h(bi, 2) * f32(m)
    if qtype == T.Q6_K:
        low = b[64 * h + r] & 15 if r < 64 else b[64 * h + r - 64] >> 4
        high = (b[128 + 32 * h + l] >> 2 * k) & 3
        return (_h(bi, 208) * f32(bi[192 + s].view(np.int8))) * f32((low | high << 4) - 32)
    if qtype == T.IQ4_XS:
        s = i // 32
        scales_h = int(b[2]) | int(b[3]) << 8
        ls = ((b[4 + s // 2] >> 4 * (s % 2)) & 15) | ((scales_h >> 2 * s) & 3) << 4
        return (_h(bi, 0) * f32(ls - 32)) * f32(KV[_nibble_q4(b[8 + 16 * s :], i % 32)])
    raise AssertionError(qtype)


KV = [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113]
NEW = [T.Q5_0, T.Q5_1, T.IQ4_NL, T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K, T.IQ4_XS]


@pytest.mark.parametrize("qtype", NEW, ids=lambda t: t.name)
def test_docstring_layout_weight_by_weight(qtype):
    fmt = FORMATS[qtype]
    blocks = random_blocks(qtype, 3, seed=1)
    ours = fmt.dequantize_blocks(blocks)
    for n, b in enumerate(blocks):
        want = [scalar_weight(qtype, b, i) for i in range(fmt.block_size)]
        assert np.array_equal(ours[n], np.array(want, dtype=np.float32)), qtype.name
