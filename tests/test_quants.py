"""Our numpy dequantisers agree exactly with gguf's reference implementation."""
from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf import quants as gguf_quants

from weights.quants import FORMATS, block_shape, dequantize


@pytest.mark.parametrize("qtype", list(FORMATS), ids=lambda t: t.name)
@pytest.mark.parametrize("shape", [(1, 32), (3, 64), (7, 256)])
def test_roundtrip_matches_gguf(qtype, shape):
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
    assert block_shape(T.Q4_1) == (32, 20) and block_shape(T.Q8_0) == (32, 34)
