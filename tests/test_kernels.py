"""Every Numba kernel against its numpy definition, at every CPU level this machine has.

NMSE bound 5e-4 is llama.cpp's own for quantised matmul (test-backend-ops); float formats
are held much tighter.
"""
from __future__ import annotations

import os
import subprocess
import sys

import numba
import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf import quants as gguf_quants

from kernels import cpu, ops, reference, simd
from kernels.blocks import FORMATS
from kernels.matmul import SUPPORTED, Q8Activations, block_weights, matmul, quantize_q8
from test_quants import random_blocks
from weights.quants import dequantize

QUANTISED = tuple(FORMATS)
# (rows, k, tokens): one row, rows not a multiple of any tile, one super-block, decode / tiles / panels
SHAPES = [(1, 256, 1), (37, 512, 1), (5, 256, 3), (576, 1536, 7), (13, 768, 37), (33, 512, 128)]
SHAPES_32 = [(1, 32, 1), (37, 64, 1), (5, 32, 3), (13, 96, 37), (33, 576, 128)]  # 32-weight blocks only


def nmse(ours, ref):
    return float(np.mean((ours - ref) ** 2) / np.mean(ref ** 2))


def round_to_bf16(x):
    """float32 -> the nearest bfloat16 (ties to even), as float32."""
    bits = x.view(np.uint32).astype(np.uint64)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16 << 16
    return bits.astype(np.uint32).view(np.float32)


def raw_weights(qtype, rows, k, rng):
    """Weights of type qtype, (rows, row_bytes): floats and gguf's quantisers from normal weights, the
    other quantised types (gguf cannot make them) random valid blocks, every bit pattern."""
    w = rng.standard_normal((rows, k)).astype(np.float32)
    if qtype == T.F32:
        return w.view(np.uint8)
    if qtype == T.F16:
        return w.astype(np.float16).view(np.uint8)
    try:
        return gguf_quants.quantize(w, qtype)
    except NotImplementedError:
        return random_blocks(qtype, rows * k // block_weights(qtype), seed=rows + k).reshape(rows, -1)


CASES = [(t, *shape) for t in sorted(SUPPORTED, key=lambda t: t.name) for shape in SHAPES] + \
        [(t, *shape) for t in sorted(SUPPORTED, key=lambda t: t.name) if block_weights(t) == 32 for shape in SHAPES_32]


@pytest.mark.parametrize("qtype,rows,k,n", CASES, ids=lambda v: v.name if isinstance(v, T) else str(v))
def test_matmul_matches_dequantised_reference(qtype, rows, k, n):
    rng = np.random.default_rng(rows * k + n)
    x = rng.standard_normal((n, k)).astype(np.float32)
    raw = np.ascontiguousarray(raw_weights(qtype, rows, k, rng))
    out = np.full((n, rows), np.nan, np.float32)
    matmul(qtype, raw, x, out)
    ref = x @ dequantize(raw, qtype).T
    bound = 5e-4 if qtype in QUANTISED else 1e-10
    if qtype == T.BF16 and cpu.has("bf16"):
        # the tiles multiply activations rounded to bf16 (vdpbf16ps, as llama.cpp): within bf16's
        # rounding of x (NMSE ~1e-6)
        bound = 1e-5
        assert nmse(out, round_to_bf16(x) @ dequantize(raw, qtype).T) <= 1e-5
    assert nmse(out, ref) <= bound


def test_q8_activations_match_llamacpp_rounding():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 96)).astype(np.float32)
    q8 = Q8Activations(4, 96)
    q, d, s, sum4 = q8.fill(x)
    blocks = x.reshape(4, 3, 32)
    expect_d = (np.abs(blocks).max(-1) / 127).astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(d, expect_d)
    assert np.abs(q.reshape(4, 3, 32) * d[..., None] - blocks).max() <= expect_d.max() * 0.51
    np.testing.assert_allclose(s, d * q.reshape(4, 3, 32).sum(-1), rtol=1e-3)
    np.testing.assert_array_equal(sum4, q.reshape(4, 24, 4).sum(-1, dtype=np.int32))
    quantize_q8(np.zeros((1, 32), np.float32), q[:1, :32].copy(), d[:1, :1].copy(), s[:1, :1].copy(),
                sum4[:1, :8].copy())  # zero block: no NaN


def test_q8_k_activations_match_llamacpp_rounding():
    """K-quant activations as llama.cpp's quantize_row_q8_K_ref: one float scale per 256, max / -127."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 512)).astype(np.float32)
    x[1, :256] = 0  # an all-zero block
    q8 = Q8Activations(3, 512)
    q, d, s, sum4 = q8.fill(x, "q8_k")
    for t in range(3):
        for b in range(2):
            block = x[t, 256 * b : 256 * b + 256]
            top = block[np.argmax(np.abs(block))]
            iscale = np.float32(-127.0) / top if top else np.float32(0)
            expect = np.minimum(127, np.round(iscale * block)).astype(np.int8)
            np.testing.assert_array_equal(q[t, 256 * b : 256 * b + 256], expect)
            np.testing.assert_array_equal(d[t, 8 * b : 8 * b + 8], np.float32(1) / iscale if top else 0)
    np.testing.assert_allclose(s, d * q.reshape(3, 16, 32).sum(-1), rtol=1e-6)
    np.testing.assert_array_equal(sum4, q.reshape(3, 128, 4).sum(-1, dtype=np.int32))


@pytest.mark.parametrize("kind", ["q8_0", "q8_k"])
def test_q8_activations_serial_and_parallel_agree(kind):
    """A token or two are quantised on the calling thread, a batch across threads: the same bits."""
    from kernels.matmul import QUANTIZE, QUANTIZE_SERIAL
    x = np.random.default_rng(6).standard_normal((9, 512)).astype(np.float32)
    x[3] = 0
    outs = []
    for quantise in (QUANTIZE_SERIAL[kind], QUANTIZE[kind]):
        parts = (np.empty((9, 512), np.int8), np.empty((9, 16), np.float32), np.empty((9, 16), np.float32),
                 np.empty((9, 128), np.int32))
        quantise(x, *parts)
        outs.append(parts)
    for serial, parallel in zip(*outs):
        np.testing.assert_array_equal(serial, parallel)


@pytest.mark.parametrize("qtype", [T.Q4_1, T.Q4_K, T.Q6_K], ids=lambda t: t.name)
@pytest.mark.parametrize("n", [1, 9, 40])
def test_matmul_threads_are_deterministic(qtype, n):
    rng = np.random.default_rng(5)
    raw = np.ascontiguousarray(raw_weights(qtype, 300, 512, rng))
    x = rng.standard_normal((n, 512)).astype(np.float32)
    results = []
    for threads in (1, 2):
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        out = np.empty((n, 300), np.float32)
        results.append(matmul(qtype, raw, x, out))
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    np.testing.assert_array_equal(results[0], results[1])


@pytest.mark.parametrize("qtype", sorted(SUPPORTED, key=lambda t: t.name), ids=lambda t: t.name)
def test_matmul_is_batch_invariant(qtype):
    """A token's products are the same bits alone (decoding), in a few-token batch (tiles) and in a
    prompt (the VNNI panels where the CPU has them), split anywhere (issue 15: the same request always
    gives the same answer, whatever the prompt cache held)."""
    rows, k, n = 37, 768 if block_weights(qtype) > 32 else 800, 40
    rng = np.random.default_rng(11)
    raw = np.ascontiguousarray(raw_weights(qtype, rows, k, rng))
    x = rng.standard_normal((n, k)).astype(np.float32)
    whole = matmul(qtype, raw, x, np.empty((n, rows), np.float32))
    alone = np.concatenate([matmul(qtype, raw, x[t : t + 1], np.empty((1, rows), np.float32)) for t in range(n)])
    cuts = [0, 2, 5, 22, n]
    split = np.concatenate([matmul(qtype, raw, x[a:b], np.empty((b - a, rows), np.float32)) for a, b in zip(cuts, cuts[1:])])
    np.testing.assert_array_equal(alone, whole)
    np.testing.assert_array_equal(split, whole)


@pytest.mark.parametrize("heads,kv_heads,hd,start,n,window", [(14, 2, 64, 0, 40, 0), (9, 3, 64, 5, 37, 0),
                                                              (4, 1, 32, 3, 50, 16), (32, 8, 128, 17, 33, 7)])
def test_attention_is_batch_invariant(heads, kv_heads, hd, start, n, window):
    """A query's attention is the same bits alone (attention_heads: the heads in the lanes), in a prompt
    (attention_blocked: the queries in the lanes), split anywhere, over halves or their floats."""
    rng = np.random.default_rng(n)
    q = rng.standard_normal((n, heads, hd)).astype(np.float32) * 2
    k, v = (rng.standard_normal((start + n, kv_heads, hd)).astype(np.float16).view(np.uint16) for _ in range(2))
    scratch = ops.attention_scratch(numba.get_num_threads(), start + n, hd)
    whole = np.empty_like(q)
    ops.attention_blocked(q, k, v, start, scratch, whole, 0.0, window)
    np.testing.assert_allclose(whole, reference.attention(q, *(a.view(np.float16).astype(np.float32) for a in (k, v)),
                                                          start, 0.0, window), rtol=1e-4, atol=1e-5)
    as_floats = np.empty_like(q)
    ops.attention_blocked(q, *(a.view(np.float16).astype(np.float32) for a in (k, v)), start, scratch, as_floats, 0.0, window)
    alone = np.empty_like(q)
    for t in range(n):
        ops.attention_heads(q[t : t + 1], k[: start + t + 1], v[: start + t + 1], start + t, scratch, alone[t : t + 1],
                            0.0, window)
    split = np.empty_like(q)
    for a in range(0, n, 7):
        b = min(n, a + 7)
        ops.attention_blocked(q[a:b], k[: start + b], v[: start + b], start + a, scratch, split[a:b], 0.0, window)
    for other in (as_floats, alone, split):
        np.testing.assert_array_equal(other, whole)


@pytest.mark.parametrize("heads,kv_heads,hd", [(9, 3, 64), (14, 2, 64), (12, 2, 128), (8, 8, 80)])
def test_attention_decode_is_attention_heads(heads, kv_heads, hd):
    """Decoding's attention (keys transposed into blocks, one parallel step for a short context, three past
    256 keys) gives attention_heads' bits: any depth, window, number of heads per KV head (1-4 per call:
    3, 7 = 4 + 3, 6 = 4 + 2), head size (80: an odd number of 16-wide chunks), over the cache's layout
    (the values stored a KV head at a time)."""
    rng = np.random.default_rng(hd + heads)
    for depth in (0, 17, 300, 1000):
        for window in (0, 100, 300):
            for n in (1, 3):
                n_ctx = depth + n + 20
                keys = rng.standard_normal((n_ctx, kv_heads, hd)).astype(np.float32) * 2
                kt = np.zeros((-(-n_ctx // 16), kv_heads, hd, 16), np.uint16)
                ops.store_keys_transposed(kt, 0, keys)
                k = keys.astype(np.float16).view(np.uint16)
                v = np.zeros((kv_heads, n_ctx, hd), np.uint16).transpose(1, 0, 2)
                v[:] = rng.standard_normal((n_ctx, kv_heads, hd)).astype(np.float16).view(np.uint16)
                q = rng.standard_normal((n, heads, hd)).astype(np.float32)
                expect, out = np.empty_like(q), np.full_like(q, np.nan)
                ops.attention_heads(q, k[: depth + n], v[: depth + n], depth,
                                    ops.attention_scratch(numba.get_num_threads(), n_ctx, hd), expect, 0.0, window)
                ops.attention_decode(q, kt, v[: depth + n], depth, ops.decode_scores(heads, n_ctx), out, 0.0, window)
                np.testing.assert_array_equal(out, expect, err_msg=f"depth {depth}, window {window}, {n} queries")


@numba.njit(cache=True)
def _halves_to_floats(bits, out):
    for i in range(bits.shape[0]):
        out[i] = simd.half_to_float(bits[i])


@numba.njit(cache=True)
def _floats_to_halves(values, out):
    for i in range(values.shape[0]):
        out[i] = simd.float_to_half(values[i])


def test_half_conversions_exact():
    """Every half converts exactly; floats round to the nearest half as numpy does."""
    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    floats = np.empty(1 << 16, np.float32)
    _halves_to_floats(bits, floats)
    expect = bits.view(np.float16).astype(np.float32)
    finite = np.isfinite(expect)
    np.testing.assert_array_equal(floats[finite], expect[finite])
    assert np.isnan(floats[np.isnan(expect)]).all() and np.array_equal(floats[np.isinf(expect)], expect[np.isinf(expect)])
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.standard_normal(5000) * 10.0 ** rng.integers(-9, 5, 5000), [0.0, 65504.0, 65519.0]])
    values = values.astype(np.float32)
    halves = np.empty(values.shape, np.uint16)
    _floats_to_halves(values, halves)
    np.testing.assert_array_equal(halves, values.astype(np.float16).view(np.uint16))


def test_rmsnorm():
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal((5, 576)).astype(np.float32), rng.standard_normal(576).astype(np.float32)
    out = np.empty_like(x)
    ops.rmsnorm(x, w, np.float32(1e-5), out)
    np.testing.assert_allclose(out, reference.rmsnorm(x, w, 1e-5), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("neox", [False, True])
def test_rope(neox):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((6, 3, 64)).astype(np.float32)
    positions = np.arange(10, 16)
    cos, sin = np.empty((6, 32), np.float32), np.empty((6, 32), np.float32)
    ops.rope_tables(positions.astype(np.float64), 64, 10000.0, np.ones(32, np.float32), cos, sin)
    ours = x.copy()
    ops.rope(ours, cos, sin, neox)
    np.testing.assert_allclose(ours, reference.rope(x, positions, 64, 10000.0, neox), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("start,n", [(0, 1), (0, 7), (5, 1), (9, 4)])
def test_attention(start, n):
    rng = np.random.default_rng(start + n)
    q = rng.standard_normal((n, 9, 64)).astype(np.float32)
    k = rng.standard_normal((start + n, 3, 64)).astype(np.float32)
    v = rng.standard_normal((start + n, 3, 64)).astype(np.float32)
    out, scores = np.empty_like(q), np.empty((9, start + n), np.float32)
    ops.attention(q, k, v, start, scores, out)
    np.testing.assert_allclose(out, reference.attention(q, k, v, start), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("start,n", [(0, 16), (0, 37), (7, 20), (100, 33)])
def test_attention_blocked(start, n):
    """The prompt's attention, 16 queries at a time: whole and partial blocks, after a cached prefix."""
    rng = np.random.default_rng(start + n)
    q = rng.standard_normal((n, 9, 64)).astype(np.float32) * 3  # sharp distributions too
    k = rng.standard_normal((start + n + 5, 3, 64)).astype(np.float32)  # cache rows past the prompt: unused
    v = rng.standard_normal((start + n + 5, 3, 64)).astype(np.float32)
    out = np.full_like(q, np.nan)
    ops.attention_blocked(q, k, v, start, ops.attention_scratch(numba.get_num_threads(), start + n + 5, 64), out)
    np.testing.assert_allclose(out, reference.attention(q, k[: start + n], v[: start + n], start), rtol=1e-4, atol=1e-5)


def test_kv_values_are_stored_as_halves():
    x = np.random.default_rng(5).standard_normal((3, 2, 64)).astype(np.float32) * 100
    out = np.empty(x.shape, np.uint16)
    ops.store_as_half(out, x)
    np.testing.assert_array_equal(out, x.astype(np.float16).view(np.uint16))


@pytest.mark.parametrize("start,n", [(0, 1), (30, 1), (0, 20), (9, 37)])
def test_attention_over_a_half_cache(start, n):
    """The cache holds halves (uint16 bits): both attention kernels read them."""
    rng = np.random.default_rng(start + n)
    q = rng.standard_normal((n, 9, 64)).astype(np.float32)
    k, v = (rng.standard_normal((start + n, 3, 64)).astype(np.float16) for _ in range(2))
    expect = reference.attention(q, k.astype(np.float32), v.astype(np.float32), start)
    out = np.full_like(q, np.nan)
    ops.attention(q, k.view(np.uint16), v.view(np.uint16), start, np.empty((9, start + n), np.float32), out)
    np.testing.assert_allclose(out, expect, rtol=1e-4, atol=1e-5)
    scratch = ops.attention_scratch(numba.get_num_threads(), start + n, 64)
    for kernel in (ops.attention_blocked, ops.attention_heads):
        out[:] = np.nan
        kernel(q, k.view(np.uint16), v.view(np.uint16), start, scratch, out)
        np.testing.assert_allclose(out, expect, rtol=1e-4, atol=1e-5)


def test_rope_tables_as_llamacpp_computes_them():
    """float32 theta, multiplied pair by pair (ggml_rope_cache_init): close to the exact angles."""
    positions = np.array([0.0, 1.0, 77.0, 4000.0])
    cos, sin = np.empty((4, 32), np.float32), np.empty((4, 32), np.float32)
    ops.rope_tables(positions, 64, 10000.0, np.ones(32, np.float32), cos, sin)
    scale, theta = np.float32(10000.0 ** (-2 / 64)), positions.astype(np.float32)
    for i in range(32):
        np.testing.assert_array_equal(cos[:, i], np.cos(theta.astype(np.float64)).astype(np.float32))
        theta = (theta * scale).astype(np.float32)
    exact_cos, _ = reference.rope_angles(positions, 64, 10000.0)
    np.testing.assert_allclose(cos, exact_cos, atol=2e-3)


@pytest.mark.parametrize("n", [3, 200])   # the serial and the parallel kernel
def test_gelu_and_geglu_are_llamacpps_table(n):
    """gelu looks x up as a half in llama.cpp's table (GGML_GELU_FP16): the same bits as the numpy
    definition, everywhere including the +-10 edges, infinities and halves' overflow."""
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((n, 1000)) * 4).astype(np.float32)
    x[0, :8] = [-10.0, 10.0, -9.999, 9.999, np.inf, -np.inf, 70000.0, -70000.0]
    u = rng.standard_normal((n, 1000)).astype(np.float32)
    out = np.empty_like(x)
    ops.gelu(x, out)
    np.testing.assert_array_equal(out, reference.gelu(x))
    ops.geglu(x, u, out)
    np.testing.assert_array_equal(out, reference.geglu(x, u))
    with np.errstate(all="ignore"):
        exact = 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * x * (1 + 0.044715 * x * x)))
    finite = np.isfinite(x) & (np.abs(x) < 60000)
    np.testing.assert_allclose(reference.gelu(x)[finite], exact[finite], rtol=2e-3, atol=1e-3)


def test_swiglu():
    rng = np.random.default_rng(4)
    g, u = rng.standard_normal((3, 100)).astype(np.float32), rng.standard_normal((3, 100)).astype(np.float32)
    out = np.empty_like(g)
    ops.swiglu(g, u, out)
    np.testing.assert_allclose(out, reference.swiglu(g, u), rtol=1e-5, atol=1e-6)


LOWER_LEVELS = [lv for lv in cpu.levels()[: cpu.levels().index(cpu.detect())]]
# What a lower level changes, to keep the compile time down: avx512vnni differs from avx512bf16 only in
# the BF16 kernels; generic (SSE2 on x86, which no one decodes on) gets one format of each family.
LEVEL_TESTS = {
    "avx512vnni": "BF16 or bf16",
    "generic": "attention or half or (matmul and (F32 or F16 or Q8_0 or Q4_1 or Q5_0 or IQ4_NL or Q4_K or Q6_K))",
}


@pytest.mark.skipif(os.environ.get("LLAMAFILE_CPU") is not None, reason="already inside a forced-level run")
@pytest.mark.parametrize("level", LOWER_LEVELS)
def test_lower_cpu_levels(level):
    """The same kernel tests, compiled for a lower CPU level in a fresh process."""
    env = dict(os.environ, LLAMAFILE_CPU=level)
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", __file__,
                        "-k", LEVEL_TESTS.get(level, "matmul or attention or half")],
                       env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]


@pytest.mark.skipif(os.environ.get("LLAMAFILE_CPU") is not None or cpu.has("vnni") or cpu.is_arm(),
                    reason="the panels run natively here, or cannot run")
def test_avx512_code_emulated():
    """The AVX-512 kernels' logic on a CPU without it: two chunks per step (LLAMAFILE_WIDE, LLVM splits
    the vectors) and the VNNI prompt panels (LLAMAFILE_PANELS, dot products emulated), for a signed,
    a 32-weight and two super-block formats. (Emulated panels compile slowly: a few formats only.)"""
    env = dict(os.environ, LLAMAFILE_PANELS="1", LLAMAFILE_WIDE="1")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", __file__,
                        "-k", "matmul_matches and (Q8_0 or Q5_1 or Q4_K or Q2_K)"], env=env, capture_output=True,
                       text=True, timeout=1800)
    assert r.returncode == 0 and " passed" in r.stdout, r.stdout[-3000:] + r.stderr[-2000:]


def test_cpu_level_choice():
    assert cpu.LEVEL in cpu.levels()
    with pytest.raises(cpu.CPULevelError, match="unknown"):
        cpu.choose("pentium")


@pytest.mark.parametrize("n,k", [(1, 1), (10, 3), (1000, 40), (262144, 40), (50, 50), (50, 80)])
def test_top_k_matches_reference(n, k):
    from kernels.select import reference_top_k, top_k
    rng = np.random.default_rng(n + k)
    for values in (rng.standard_normal(n).astype(np.float32),
                   rng.integers(0, 5, n).astype(np.float32),                   # many ties
                   np.where(rng.random(n) < 0.1, np.nan, rng.standard_normal(n)).astype(np.float32),
                   np.sort(rng.standard_normal(n)).astype(np.float32),             # rising with the id
                   -np.sort(rng.standard_normal(n)).astype(np.float32),
                   np.full(n, np.nan, np.float32)):
        ids, best = np.empty(k, np.int64), np.empty(k, np.float64)
        m = top_k(values, k, ids, best)
        ref = reference_top_k(values, k)
        np.testing.assert_array_equal(ids[:m], ref)
