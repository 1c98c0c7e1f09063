"""llama.cpp's tiny random-weight test models (tests/reference/archs) against its logits.

Each model has four token sequences with llama.cpp's full log-softmax at every position; we
compare centred log-probs by NMSE over all positions, with the bounds of the archs README:
F16/F32 models 1e-4, quantised ones max(1e-4, 0.2 Q) against llama.cpp on the same file and
1.25 Q against its F32 model, Q being llama.cpp's own quantised-vs-F32 error (README table).
"""
from __future__ import annotations

import json
import re

import numba
import numpy as np
import pytest

from conftest import ARCHS, archs_model

QUANT_TYPES = ("Q4_K_M", "Q5_K_M", "Q6_K", "Q3_K_M", "Q2_K", "IQ4_XS", "IQ4_NL", "Q5_0", "Q5_1")
# every architecture model of the archs README
ARCH_MODELS = ("llama-dense", "qwen2-dense", "qwen3-dense", "gemma3-dense", "phi3-dense", "mistral3-dense",
               "smollm3-dense", "granite-dense", "gemma2-dense", "gemma-dense", "olmo2-dense", "starcoder2-dense",
               "stablelm-dense", "phi2-dense", "glm4-dense", "exaone4-dense", "llama-moe", "qwen3moe-moe",
               "olmoe-moe", "gpt-oss-moe")


def _q_table() -> dict[str, float]:
    """llama.cpp's own error Q per quantised model, from the README's table."""
    text = (ARCHS / "README.md").read_text()
    return {m: float(q) for m, q in re.findall(r"^\| ([\w-]+) \| ([0-9.e+-]+) \|$", text, re.M)}


def records(model: str) -> list[dict]:
    with open(ARCHS / "logits" / f"{model}.jsonl") as f:
        return [json.loads(line) for line in f if line.strip()]


def centred(logp: np.ndarray) -> np.ndarray:
    return logp - logp.mean(axis=-1, keepdims=True)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def nmse(ours: list[np.ndarray], ref: list[np.ndarray]) -> float:
    num = sum(float(((centred(a) - centred(b)) ** 2).sum()) for a, b in zip(ours, ref))
    return num / sum(float((centred(b) ** 2).sum()) for b in ref)


def load(model: str):
    import llamafile
    return llamafile.load(archs_model(model), n_ctx=256)


def all_logprobs(m, recs) -> list[np.ndarray]:
    return [log_softmax(m.logits(r["ids"])) for r in recs]


@pytest.fixture(scope="module")
def q_table():
    return _q_table()


def logprobs_at_1_and_2_threads(m, recs) -> list[np.ndarray]:
    """Through the kernels at 1 and 2 threads, which must agree bit for bit; the 1-thread result."""
    results = []
    for threads in (1, 2):
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        results.append(all_logprobs(m, recs))
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)
    return results[0]


def greedy_cut(rec: dict, tau: float = 0.05) -> int:
    return next((k for k, margin in enumerate(rec["margins"]) if margin < tau), len(rec["gen"]))


@pytest.mark.parametrize("model", ARCH_MODELS)
def test_architecture_against_llamacpp(model):
    """Each architecture's random model: NMSE <= 1e-4 over all positions at 1 and 2 threads (bit-identical),
    greedy ids as llama.cpp's up to its first margin < 0.05, and the ids decoded one by one within the bound."""
    recs = records(model)
    m = load(model)
    ours = logprobs_at_1_and_2_threads(m, recs)
    error = nmse(ours, [np.array(r["logprobs"]) for r in recs])
    assert error <= 1e-4, f"{model}: NMSE {error:.2e} against llama.cpp"
    for rec in recs:
        cut = greedy_cut(rec)
        got = list(m.generate(rec["ids"], max_tokens=max(cut, 1), temperature=0.0))
        assert got[:cut] == rec["gen"][:cut], f"{model}: greedy ids differ within the first {cut}"
    rec = recs[2]
    m.reset()
    m.eval(rec["ids"][:1])
    steps = [log_softmax(m.eval([t]).copy()[None])[0] for t in rec["ids"][1:]]
    one_by_one = nmse([np.stack(steps)], [np.array(rec["logprobs"][1:])])
    assert one_by_one <= 1e-4, f"{model}: decoding one by one NMSE {one_by_one:.2e}"


@pytest.mark.parametrize("model", [m for m in ARCH_MODELS if m.endswith("-dense")])
def test_fused_decode_is_the_step_by_step_path(model):
    """The one-call decode (llamafile.models.fused), compiled with only the steps this architecture uses
    (copies, biases, per-head LayerNorms, GELU, GeGLU, scales, ...), gives the step-by-step path's logits
    bit for bit."""
    m = load(model)
    ids = records(model)[2]["ids"]

    def decode(fused):
        m.net.fuse_decode = fused
        m.reset()
        m.eval(ids[:2])
        return np.stack([m.eval([t]).copy() for t in ids[2:8]])
    try:
        np.testing.assert_array_equal(decode(True), decode(False))
        assert m.net._fused is not None, f"{model}: not decoded in one call"
    finally:
        m.net.fuse_decode = type(m.net).fuse_decode


@pytest.mark.parametrize("family", ["llama", "qwen3"])
@pytest.mark.parametrize("qtype", QUANT_TYPES)
def test_quantised_against_llamacpp(family, qtype, q_table):
    """Through the kernels at 1 and 2 threads (bit-identical), within the README's bounds."""
    name = f"{family}-{qtype}"
    recs, f32 = records(name), records(f"{family}-dense-f32")
    m = load(name)
    ours, Q = logprobs_at_1_and_2_threads(m, recs), q_table[name]
    same = nmse(ours, [np.array(r["logprobs"]) for r in recs])
    vs_f32 = nmse(ours, [np.array(r["logprobs"]) for r in f32])
    assert same <= max(1e-4, 0.2 * Q), f"{name}: NMSE {same:.2e} against llama.cpp on the same file"
    assert vs_f32 <= 1.25 * Q, f"{name}: NMSE {vs_f32:.2e} against llama.cpp's F32 model (Q = {Q:.2e})"


@pytest.mark.parametrize("model", ["llama-dense-f32", "llama-dense", "llama-Q4_K_M", "llama-Q6_K", "qwen3-dense-f32",
                                   "qwen3-Q4_K_M"])
def test_greedy_and_decoding_one_by_one(model):
    """Greedy ids as llama.cpp's up to its first small margin; decoding the ids one at a time stays in bound."""
    m = load(model)
    rec = records(model)[2]
    cut = next((k for k, margin in enumerate(rec["margins"]) if margin < 0.05), len(rec["gen"]))
    ours = list(m.generate(rec["ids"], max_tokens=max(cut, 1), temperature=0.0))
    assert ours[:cut] == rec["gen"][:cut]
    m.reset()
    m.eval(rec["ids"][:1])
    steps = [log_softmax(m.eval([t]).copy()[None])[0] for t in rec["ids"][1:]]
    one_by_one = nmse([np.stack(steps)], [np.array(rec["logprobs"][1:])])
    assert one_by_one <= max(1e-4, 0.2 * _q_table().get(model, 0.0))


def test_archs_models_are_generated_and_checked(tmp_path):
    """A model is made from its description (conftest.archs_model does this into the cache): a damaged file is
    made again, and a file that does not have the committed digest is an error, not a silent new model."""
    import archs_models
    want = archs_models.digests()["qwen3-Q4_K_M.gguf"]
    path = archs_models.build("qwen3-Q4_K_M", tmp_path)
    assert archs_models.sha256(path) == want
    with open(path, "r+b") as f:
        f.seek(-1, 2)
        f.write(b"\x7f")
    assert archs_models.sha256(archs_models.build("qwen3-Q4_K_M", tmp_path)) == want
    other = tmp_path / "other"
    other.mkdir()
    (other / "models.json").write_text((ARCHS / "models.json").read_text())
    (other / "SHA256SUMS").write_text(f"{'0' * 64}  qwen3-Q4_K_M.gguf\n")
    with pytest.raises(archs_models.DigestMismatch, match="qwen3-Q4_K_M.gguf has sha256"):
        archs_models.build("qwen3-Q4_K_M", tmp_path / "out", other)
    assert not (tmp_path / "out" / "qwen3-Q4_K_M.gguf").exists() and not list((tmp_path / "out").iterdir())


def test_test_vocabulary_runs_on_ids_only():
    """llama.cpp's dummy `test` tokenizer: the model loads and runs on ids; text is a clear error."""
    import llamafile
    m = load("llama-Q4_K_M")
    assert m.logits([1, 2, 3]).shape == (3, m.config.n_vocab)
    with pytest.raises(llamafile.GGUFError, match="tokenizer 'test'"):
        m.tokenize("hello")
