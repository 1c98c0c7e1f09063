"""Llama: the decoder-only transformer that SmolLM2, Llama 2/3 and many others share.

    x = embed(tokens)
    for each block:
        x += Wo · attention(rope(Wq · norm(x)), rope(Wk · norm(x)), Wv · norm(x))
        x += Wdown · (silu(Wgate · norm(x)) * Wup · norm(x))
    logits = Wout · norm(x)          # Wout is the embedding table when the file has no output.weight

llama.cpp reads optional biases on every projection and rope_freqs (Llama 3.1+ rope scaling). With
expert_count set (Mixtral) the FFN is a mixture of experts, its top-k weights renormalised.
"""
from __future__ import annotations

from .steps import add, attention_block, gated_ffn, moe, norm
from .transformer import KVCache, RunState, Transformer  # noqa: F401  (KVCache, RunState: their old home)


class Llama(Transformer):
    arch = "llama"
    rope_neox = False  # llama's GGUF layout rotates adjacent pairs
    rope_freqs = True
    moe = True

    def block(self, layer):
        c = self.config
        ffn = ([moe("h", "proj", c.n_expert, c.n_expert_used, c.n_ff, norm_weights=True)] if c.n_expert
               else gated_ffn(bias=True))
        return [norm("x", "attn_norm", "h"),
                *attention_block(bias_qkv=True, bias_out=True),
                add("x", "proj"),
                norm("x", "ffn_norm", "h"),
                *ffn,
                add("x", "proj")]
