"""Phi-3: llama's block with the FFN's gate and up in one matrix (ffn_up: gate, then up), q/k/v either
separate or one attn_qkv matrix, GPT-NeoX rope, and LongRoPE's two sets of frequency factors: the long
ones when the context exceeds the trained original one (rope.scaling.original_context_length), else short."""
from __future__ import annotations

from .steps import add, attention_block, copy, fused_gated_ffn, matmul, norm
from .transformer import Transformer


class Phi3(Transformer):
    arch = "phi3"
    rope_neox = True

    def buffers(self):
        c = self.config
        q_dim, kv_dim = c.n_head * c.head_dim, c.n_head_kv * c.head_dim
        return {**super().buffers(), "gateup": 2 * c.n_ff, "qkv": q_dim + 2 * kv_dim}

    def __init__(self, gguf, config, backend):
        self._fused_qkv = "blk.0.attn_qkv.weight" in gguf.tensors
        super().__init__(gguf, config, backend)

    def _load_extra(self, weights):
        c = self.config
        self.rope_long = weights.vector("rope_factors_long.weight", c.rope_dim // 2, optional=True)
        self.rope_short = weights.vector("rope_factors_short.weight", c.rope_dim // 2, optional=True)
        self.n_ctx_orig = int(self._gguf.get(f"{c.arch}.rope.scaling.original_context_length", c.n_ctx_train))

    def set_context(self, n_ctx):
        # llama.cpp: long where the context (padded to a multiple of 256) is past the original one
        self.rope_factors = self.rope_long if n_ctx > self.n_ctx_orig else self.rope_short

    def block(self, layer):
        c = self.config
        q_dim, kv_dim = c.n_head * c.head_dim, c.n_head_kv * c.head_dim
        if self._fused_qkv:
            attention = attention_block(bias_qkv=True)[3:]
            qkv = [matmul("attn_qkv", "h", "qkv", bias=True), copy("qkv", "q", 0), copy("qkv", "k", q_dim),
                   copy("qkv", "v", q_dim + kv_dim)]
        else:
            attention, qkv = attention_block(bias_qkv=True), []
        return [norm("x", "attn_norm", "h"),
                *qkv, *attention,
                add("x", "proj"),
                norm("x", "ffn_norm", "h"),
                *fused_gated_ffn(c.n_ff),
                add("x", "proj")]
