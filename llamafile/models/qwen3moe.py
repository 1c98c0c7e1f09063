"""Qwen3-MoE: qwen3's attention (per-head q/k norms) with a mixture-of-experts FFN: softmax router, the top
expert_used_count experts (of width expert_feed_forward_length), their weights renormalised."""
from __future__ import annotations

import dataclasses

from .steps import add, attention_block, moe, norm
from .transformer import Transformer


class Qwen3MoE(Transformer):
    arch = "qwen3moe"
    rope_neox = True
    moe = True

    @classmethod
    def read_config(cls, gguf):
        c = super().read_config(gguf)
        return dataclasses.replace(c, n_ff_exp=int(gguf.get(f"{cls.arch}.expert_feed_forward_length", 0) or c.n_ff))

    def block(self, layer):
        c = self.config
        return [norm("x", "attn_norm", "h"),
                *attention_block(bias_qkv=True, qk_norm=True),
                add("x", "proj"),
                norm("x", "ffn_norm", "h"),
                moe("h", "proj", c.n_expert, c.n_expert_used, c.n_ff_exp, norm_weights=True),
                add("x", "proj")]
