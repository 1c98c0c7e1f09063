"""Random-weight models with the dimensions of the models people run, for speed at those sizes.

    python bench/shapes.py llama-1b-q4_0 qwen-1.5b-q4_k_m gemma-1b-q4_k_m   # write them into the cache (once)
    python bench/bench.py --models llama-1b-q4_k_m --threads 2  # bench.py makes them on first use

Speed does not depend on the weights' values, and a 135M model fits in the caches where a
1B-class one streams from DRAM. Each file is `<shape>-<type>.gguf` in the cache's bench/ folder
(never committed): F16, BF16, Q8_0 and Q4_0 written with gguf's quantisers, the K-quant mixes
(Q4_K_M, Q6_K, ...) by llama.cpp's own llama_model_quantize from the F16 file (the bench extra).
The vocabulary is llama.cpp's dummy `test` one (tokens tok_0..): token ids only.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from weights.fetch import cache_dir  # noqa: E402

# Llama-3.2-1B, Qwen2.5-1.5B, Gemma-3-1B: their GGUFs' dimensions (tied embeddings, as those files have them).
SHAPES = {
    "llama-1b": dict(arch="llama", n_embd=2048, n_ff=8192, n_layer=16, n_head=32, n_head_kv=8, n_vocab=128256,
                     rope_base=500000.0, bias=False),
    "qwen-1.5b": dict(arch="qwen2", n_embd=1536, n_ff=8960, n_layer=28, n_head=12, n_head_kv=2, n_vocab=151936,
                      rope_base=1000000.0, bias=True),
    # Gemma-3-1B: head size 256, q/k norms and post-norms, 5 of every 6 layers a 512-token sliding window
    "gemma-1b": dict(arch="gemma3", n_embd=1152, n_ff=6912, n_layer=26, n_head=4, n_head_kv=1, n_vocab=262144,
                     rope_base=1000000.0, bias=False, head_dim=256, sliding_window=512),
}
GGUF_TYPES = ("f16", "bf16", "q8_0", "q4_0")


def model_file(name: str) -> Path:
    """The cached file for '<shape>-<type>', written if missing."""
    shape, _, kind = name.rpartition("-")
    if shape not in SHAPES:
        raise SystemExit(f"unknown shape '{shape}' (one of {', '.join(SHAPES)})")
    dst = cache_dir() / "bench" / f"{name}.gguf"
    if dst.exists():
        return dst
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_suffix(".partial")
    if kind in GGUF_TYPES:
        _write(SHAPES[shape], kind, tmp)
    else:
        import ctypes

        import llama_cpp  # the bench extra
        from bench import LLAMA_FTYPES
        if kind not in LLAMA_FTYPES:
            raise SystemExit(f"unknown type '{kind}' (one of {', '.join(GGUF_TYPES + tuple(LLAMA_FTYPES))})")
        src = model_file(f"{shape}-f16")
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype, params.nthread = LLAMA_FTYPES[kind], 2
        if llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(params)) != 0:
            raise SystemExit(f"llama_model_quantize failed for {name}")
    tmp.replace(dst)
    return dst


def _write(s: dict, kind: str, path: Path) -> None:
    from gguf import GGMLQuantizationType as T, GGUFWriter
    from gguf.quants import quantize

    qtype = {"f16": T.F16, "bf16": T.BF16, "q8_0": T.Q8_0, "q4_0": T.Q4_0}[kind]
    arch, d, ff, hd = s["arch"], s["n_embd"], s["n_ff"], s.get("head_dim", s["n_embd"] // s["n_head"])
    gemma = arch == "gemma3"
    w = GGUFWriter(str(path), arch)
    w.add_context_length(4096 + 512)
    w.add_embedding_length(d)
    w.add_block_count(s["n_layer"])
    w.add_feed_forward_length(ff)
    w.add_head_count(s["n_head"])
    w.add_head_count_kv(s["n_head_kv"])
    w.add_rope_dimension_count(hd)
    if "head_dim" in s:
        w.add_key_length(hd)
        w.add_value_length(hd)
    if "sliding_window" in s:
        w.add_sliding_window(s["sliding_window"])
    w.add_rope_freq_base(s["rope_base"])
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(s["n_vocab"])
    w.add_file_type({"f16": 1, "bf16": 32, "q8_0": 7, "q4_0": 2}[kind])
    w.add_tokenizer_model("test")
    w.add_token_list([f"tok_{i}" for i in range(s["n_vocab"])])
    w.add_token_types([1] * s["n_vocab"])
    w.add_token_scores([0.0] * s["n_vocab"])
    w.add_add_bos_token(False)
    w.add_add_eos_token(False)
    rng = np.random.default_rng(0)

    def matrix(name, rows, cols):
        x = (rng.standard_normal((rows, cols), dtype=np.float32) * 0.02)
        if qtype == T.F16:
            w.add_tensor(name, x.astype(np.float16))
        else:
            w.add_tensor(name, quantize(x, qtype), raw_dtype=qtype)

    def vector(name, n, value=None):
        w.add_tensor(name, np.full(n, 1.0, np.float32) if value is None else
                     (rng.standard_normal(n, dtype=np.float32) * value))

    q, kv = s["n_head"] * hd, s["n_head_kv"] * hd
    matrix("token_embd.weight", s["n_vocab"], d)
    vector("output_norm.weight", d)
    for i in range(s["n_layer"]):
        p = f"blk.{i}."
        vector(p + "attn_norm.weight", d)
        matrix(p + "attn_q.weight", q, d)
        matrix(p + "attn_k.weight", kv, d)
        matrix(p + "attn_v.weight", kv, d)
        if s["bias"]:
            for t, n in (("q", q), ("k", kv), ("v", kv)):
                vector(p + f"attn_{t}.bias", n, 0.02)
        if gemma:
            vector(p + "attn_q_norm.weight", hd)
            vector(p + "attn_k_norm.weight", hd)
            vector(p + "post_attention_norm.weight", d)
            vector(p + "post_ffw_norm.weight", d)
        matrix(p + "attn_output.weight", d, q)
        vector(p + "ffn_norm.weight", d)
        matrix(p + "ffn_gate.weight", ff, d)
        matrix(p + "ffn_up.weight", ff, d)
        matrix(p + "ffn_down.weight", d, ff)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(model_file(arg))
