"""The kernel path on all six SmolLM2 files and Qwen2.5-Coder-0.5B Q4_K_M against llama.cpp, at 1 and 2 threads.

Bounds from tests/reference/README.md: *same file* for every file; *exact arithmetic*
against the f32 reference for f32/f16/bf16; *at least as accurate as llama.cpp* for the
quantised files (their vs_f32 figures); greedy continuations for q8_0 and f16.
"""
from __future__ import annotations

import numpy as np
import pytest

from conftest import loaded_model, read_jsonl
from kernels import cpu
from refcheck import compare, greedy_prefix_ok, summarise

FLOAT_FILES = ["smollm2-f32", "smollm2-f16", "smollm2-bf16"]
QUANT_FILES = ["smollm2", "smollm2-q8_0", "smollm2-q4_0"]
OTHER_FILES = ["qwen05",   # qwen2, Q4_K_M: Q5_0, Q8_0, Q6_K and Q4_K matrices; no f32 reference
               "gemma3"]   # gemma3 270M, Q4_K_M; SentencePiece (ids from the reference), sliding-window layers


@pytest.fixture(scope="module")
def logits_by_threads():
    """name -> {threads: [logits per reference text]}, computed once."""
    cache = {}

    def get(name):
        if name not in cache:
            model = loaded_model(name)
            texts = read_jsonl(f"logits_{name}.jsonl")
            cache[name] = {}
            for threads in (1, 2):
                cpu.set_threads(threads)
                cache[name][threads] = [model.logits(r["ids"]) for r in texts]
            cpu.set_threads()
        return cache[name]
    return get


@pytest.mark.parametrize("name", FLOAT_FILES + QUANT_FILES + OTHER_FILES)
def test_same_file_and_thread_determinism(logits_by_threads, name):
    runs = logits_by_threads(name)
    for one, two in zip(runs[1], runs[2]):
        np.testing.assert_array_equal(one, two)  # the summation order never depends on the thread count
    records = read_jsonl(f"logits_{name}.jsonl")
    kl, top1, nll_err = summarise([compare(lg, r, margin=0.5) for lg, r in zip(runs[2], records)])
    assert kl <= 0.01, f"mean KL20 {kl:.2e}"
    assert top1 >= 0.99, f"top-1 {top1:.2%}"
    assert nll_err <= 0.05, f"nll off by {nll_err:.2%}"


@pytest.mark.parametrize("name", FLOAT_FILES)
def test_float_files_exact_arithmetic(logits_by_threads, name):
    records = read_jsonl("logits_smollm2-f32.jsonl")
    kl, top1, nll_err = summarise([compare(lg, r, margin=0.1) for lg, r in zip(logits_by_threads(name)[2], records)])
    assert kl <= 1e-3, f"mean KL20 {kl:.2e}"
    assert top1 >= 0.995, f"top-1 {top1:.2%}"
    assert nll_err <= 0.005, f"nll off by {nll_err:.2%}"


def _llamacpp_vs_f32(name):
    """llama.cpp's own distance from f32 on this file, weighted per position like ours."""
    f32 = read_jsonl("logits_smollm2-f32.jsonl")
    recs = read_jsonl(f"logits_{name}.jsonl")
    positions = [len(r["top"]) for r in f32]
    counted = [sum(t[0][1] - t[1][1] > 0.1 for t in r["top"]) for r in f32]
    kl = np.average([r["vs_f32"]["kl20"] for r in recs], weights=positions)
    top1 = np.average([r["vs_f32"]["top1"] for r in recs], weights=counted)
    return kl, top1


@pytest.mark.parametrize("name", QUANT_FILES)
def test_quantised_files_as_accurate_as_llamacpp(logits_by_threads, name):
    records = read_jsonl("logits_smollm2-f32.jsonl")
    kl, top1, _ = summarise([compare(lg, r, margin=0.1) for lg, r in zip(logits_by_threads(name)[2], records)])
    ref_kl, ref_top1 = _llamacpp_vs_f32(name)
    assert kl <= 1.25 * ref_kl + 2e-4, f"mean KL20 {kl:.4f} vs llama.cpp's {ref_kl:.4f}"
    assert top1 >= ref_top1 - 0.01, f"top-1 {top1:.2%} vs llama.cpp's {ref_top1:.2%}"


@pytest.mark.parametrize("name,tau", [("smollm2-q8_0", 0.5), ("smollm2-f16", 0.05), ("qwen05", 0.5), ("gemma3", 0.5)])
def test_greedy_continuations(name, tau):
    model = loaded_model(name)
    for record in read_jsonl(f"gen_{name}.jsonl"):
        cut = next((k for k, m in enumerate(record["margins"]) if m < tau), len(record["ids"]))
        ours = list(model.generate(record["prompt_ids"], max_tokens=max(cut, 1), temperature=0.0))
        ok, cut = greedy_prefix_ok(ours, record, tau)
        assert ok, f"{record['prompt'][:40]!r}: first {cut} ids differ: {ours[:cut]} vs {record['ids'][:cut]}"
