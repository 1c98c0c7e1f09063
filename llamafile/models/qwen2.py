"""Qwen2: llama's block with biases on the q, k and v projections (and the output), and GPT-NeoX rope."""
from __future__ import annotations

from .steps import add, attention_block, gated_ffn, norm
from .transformer import Transformer


class Qwen2(Transformer):
    arch = "qwen2"
    rope_neox = True  # rotate halves of each head, not adjacent pairs
    output_bias = True

    def block(self, layer):
        return [norm("x", "attn_norm", "h"),
                *attention_block(bias_qkv=True),
                add("x", "proj"),
                norm("x", "ffn_norm", "h"),
                *gated_ffn(),
                add("x", "proj")]
