"""Granite: llama's block with IBM's multipliers: the embeddings (embedding_scale), each block half's output
before the residual add (residual_scale), the attention scores (attention.scale) and the logits
(divided by logit_scale). Rope only where rope.scaling.finetuned says so (llama.cpp's switch for it)."""
from __future__ import annotations

import dataclasses

from .steps import add, attention_block, gated_ffn, norm, scale
from .transformer import Transformer


class Granite(Transformer):
    arch = "granite"
    rope_freqs = True

    @classmethod
    def read_config(cls, gguf):
        c = super().read_config(gguf)
        key = lambda name, default=0.0: float(gguf.get(f"{cls.arch}.{name}", default) or 0.0)  # noqa: E731
        return dataclasses.replace(c, logit_scale=float(gguf.require(f"{cls.arch}.logit_scale")),
                                   residual_scale=key("residual_scale"), embed_scale=key("embedding_scale"),
                                   attn_scale=key("attention.scale"),
                                   use_rope=bool(gguf.get(f"{cls.arch}.rope.scaling.finetuned", True)))

    def block(self, layer):
        c = self.config
        residual = [scale("proj", c.residual_scale)] if c.residual_scale else []
        return [norm("x", "attn_norm", "h"),
                *attention_block(bias_qkv=True, bias_out=True, rope_q_k=c.use_rope, scale=c.attn_scale),
                *residual,
                add("x", "proj"),
                norm("x", "ffn_norm", "h"),
                *gated_ffn(bias=True),
                *residual,
                add("x", "proj")]
