"""Llama: the decoder-only transformer that SmolLM2, Llama 2/3 and many others share.

    x = embed(tokens)
    for each block:
        x += Wo · attention(rope(Wq · norm(x)), rope(Wk · norm(x)), Wv · norm(x))
        x += Wdown · (silu(Wgate · norm(x)) * Wup · norm(x))
    logits = Wout · norm(x)          # Wout is the embedding table when the file has no output.weight

llama.cpp reads optional biases on every projection and rope_freqs (Llama 3.1+ rope scaling).
"""
from __future__ import annotations

from .steps import add, attention_block, gated_ffn, norm
from .transformer import KVCache, RunState, Transformer  # noqa: F401  (KVCache, RunState: their old home)


class Llama(Transformer):
    arch = "llama"
    rope_neox = False  # llama's GGUF layout rotates adjacent pairs
    rope_freqs = True

    def block(self, layer):
        return [norm("x", "attn_norm", "h"),
                *attention_block(bias_qkv=True, bias_out=True),
                add("x", "proj"),
                norm("x", "ffn_norm", "h"),
                *gated_ffn(bias=True),
                add("x", "proj")]
