"""The numpy reference forward pass on the real SmolLM2 Q4_1 file against llama.cpp, and the model API."""
from __future__ import annotations

import os

import numpy as np
import pytest

from conftest import loaded_model, read_jsonl
from refcheck import compare, greedy_prefix_ok, summarise


@pytest.fixture(scope="module")
def smollm2_logits(smollm2_reference):
    """Reference-path logits for every text of the logits reference (same texts and ids in every variant's file)."""
    return {rec["text"]: smollm2_reference.logits(rec["ids"]) for rec in read_jsonl("logits_smollm2-f32.jsonl")}


def test_reference_texts_tokenize_to_reference_ids(smollm2):
    for rec in read_jsonl("logits_smollm2.jsonl"):
        assert smollm2.tokenize(rec["text"])[:128] == rec["ids"]


def test_logits_shape_and_dtype(smollm2):
    rec = read_jsonl("logits_smollm2.jsonl")[0]
    logits = smollm2.logits(rec["ids"])
    assert logits.dtype == np.float32 and logits.shape == (len(rec["ids"]), smollm2.config.n_vocab)
    assert np.isfinite(logits).all()


def test_exact_arithmetic_against_llamacpp_f32(smollm2_logits):
    """Q4_1 weights dequantised, f32 math, against llama.cpp on the same weights stored as f32."""
    results = [compare(smollm2_logits[r["text"]], r, margin=0.1) for r in read_jsonl("logits_smollm2-f32.jsonl")]
    kl, top1, nll_err = summarise(results)
    assert kl <= 1e-3, f"mean KL20 {kl:.2e}"
    assert top1 >= 0.995, f"top-1 agreement {top1:.2%}"
    assert nll_err <= 0.005, f"nll off by {nll_err:.2%}"


def test_same_file_as_llamacpp(smollm2_logits):
    """Against llama.cpp on the same Q4_1 file (which rounds activations to 8 bits)."""
    results = [compare(smollm2_logits[r["text"]], r, margin=0.5) for r in read_jsonl("logits_smollm2.jsonl")]
    kl, top1, nll_err = summarise(results)
    assert kl <= 0.01, f"mean KL20 {kl:.2e}"
    assert top1 >= 0.99, f"top-1 agreement {top1:.2%}"
    assert nll_err <= 0.05, f"nll off by {nll_err:.2%}"


@pytest.mark.parametrize("record", read_jsonl("gen_smollm2-f32.jsonl"), ids=lambda r: r["prompt"][:30])
def test_greedy_matches_llamacpp_f32(smollm2_reference, record):
    cut = next((k for k, m in enumerate(record["margins"]) if m < 0.05), len(record["ids"]))
    ours = list(smollm2_reference.generate(record["prompt_ids"], max_tokens=cut, temperature=0.0))
    ok, cut = greedy_prefix_ok(ours, record, tau=0.05)
    assert ok, f"first {cut} ids differ: ours {ours[:cut]} vs llama.cpp {record['ids'][:cut]}"


@pytest.mark.parametrize("name,backend", [("smollm2", "numpy"), ("smollm2-f16", "numba")])
def test_prompt_then_decode_equals_one_batch(name, backend):
    """Decoding token by token through the KV cache gives the logits of one batched evaluation (the numpy
    definition within float rounding; the kernels bit for bit: test_logits_are_batch_invariant)."""
    model = loaded_model(name, backend)
    ids = read_jsonl("gen_smollm2-f32.jsonl")[0]["prompt_ids"]
    batch = model.logits(ids)
    model.reset()
    model.eval(ids[:5])
    steps = [model.eval([t]).copy() for t in ids[5:]]  # eval returns a view it reuses
    np.testing.assert_allclose(np.stack(steps), batch[5:], atol=1e-2, rtol=0)


@pytest.mark.parametrize("name,n", [("smollm2", 520), ("smollm2-q8_0", 70), ("smollm2-f16", 70), ("smollm2-bf16", 70),
                                    ("qwen05", 70), ("gemma3", 70)])
def test_logits_are_batch_invariant(name, n):
    """Issue 15: a token's logits are the same bits whether it is evaluated alone (decoding), in a prompt of
    any size, or split anywhere, after any prefix, so the same request always gives the same answer
    whatever the prompt cache held. Every quantised and float kernel and attention follow one order per
    output (kernels.quant, kernels.panels, kernels.simd's tiles, kernels.ops._lanes)."""
    model = loaded_model(name)
    ids = [int(t) for t in np.random.default_rng(3).integers(100, 5000, n)]
    model.reset()
    whole = model.eval(ids, all_logits=True).copy()
    model.reset()
    alone = np.stack([model.eval([t]).copy() for t in ids])
    model.reset()
    cuts = [0, 1, 3, 20, 23, 43, 48, 70] + ([200, 201, 512, n] if n > 70 else [])
    split = np.concatenate([model.eval(ids[a:b], all_logits=True).copy() for a, b in zip(cuts, cuts[1:])])
    np.testing.assert_array_equal(alone, whole)
    np.testing.assert_array_equal(split, whole)


def test_context_overflow_is_a_clear_error(smollm2):
    import llamafile
    with pytest.raises(llamafile.ContextOverflowError, match="context"):
        smollm2.logits([1] * (smollm2.n_ctx + 1))


def _resident_anonymous() -> int:
    line = next(x for x in open("/proc/self/status").read().splitlines() if x.startswith("RssAnon:"))
    return int(line.split()[1]) * 1024


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads Linux's /proc/self/status")
def test_an_unused_context_takes_no_memory():
    """The KV cache becomes resident as positions are written, 4 KB at a time: with numpy's 2 MB pages one
    token in every layer made most of a context's cache resident (100 MB of Llama-1B's 4.6k context)."""
    from types import SimpleNamespace

    from llamafile.models.transformer import KVCache
    before = _resident_anonymous()
    cache = KVCache.allocate(SimpleNamespace(n_layer=16, n_head_kv=8, head_dim=64), 8192)
    cache.k[:, 0] = cache.v[:, 0] = cache.kt[:, 0] = 1  # a token in every layer and KV head
    assert cache.k.nbytes + cache.v.nbytes + cache.kt.nbytes == 3 * 128 << 20
    assert _resident_anonymous() - before < 16 << 20
    assert not cache.k[:, 1:].any() and cache.v[:, 0].all()


def test_sampling_is_seeded(smollm2):
    ids = smollm2.tokenize("Once upon a time")
    a = list(smollm2.generate(ids, max_tokens=8, temperature=0.8, seed=7))
    b = list(smollm2.generate(ids, max_tokens=8, temperature=0.8, seed=7))
    assert a == b and len(a) == 8


@pytest.mark.parametrize("name", ["smollm2", "smollm2-q4_0", "smollm2-bf16"])
def test_fused_decode_is_the_step_by_step_path(name):
    """The one-call decode step (llamafile.models.fused) runs the same kernels in the same order."""
    model = loaded_model(name)
    ids = read_jsonl("gen_smollm2-f32.jsonl")[1]["prompt_ids"]

    def decode(fused):
        model.net.fuse_decode = fused
        model.reset()
        model.eval(ids[:3])
        return np.stack([model.eval([t]).copy() for t in ids[3:]])
    try:
        np.testing.assert_array_equal(decode(True), decode(False))
    finally:
        model.net.fuse_decode = type(model.net).fuse_decode


@pytest.mark.parametrize("name", ["smollm2", "smollm2-bf16"])
def test_same_prompt_same_logits_with_or_without_reuse(name):
    """A prompt evaluated fresh, again after its own generation (prefix reused), and after a longer prompt
    that shares part of it (a different split into batches) gives the same logits."""
    model = loaded_model(name)
    ids = read_jsonl("gen_smollm2-f32.jsonl")[0]["prompt_ids"]
    model.reset()
    fresh = model.eval_prompt(ids).copy()
    list(model.generate(ids, max_tokens=4))   # the context now holds ids and a reply
    reused = model.eval_prompt(ids).copy()
    model.eval_prompt(ids[:3] + [500, 600, 700] * 10)  # a longer prompt sharing 3 tokens
    after_other = model.eval_prompt(ids).copy()
    np.testing.assert_array_equal(fresh, reused)
    np.testing.assert_array_equal(fresh, after_other)
