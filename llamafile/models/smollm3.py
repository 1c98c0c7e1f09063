"""SmolLM3: llama's block, except that every 4th layer (3, 7, ...) uses no rope at all (NoPE)."""
from __future__ import annotations

from .steps import add, attention_block, gated_ffn, norm
from .transformer import Transformer

NO_ROPE_LAYER_STEP = 4  # llama.cpp's n_no_rope_layer_step for smollm3


class SmolLM3(Transformer):
    arch = "smollm3"

    def block(self, layer):
        use_rope = (layer + 1) % NO_ROPE_LAYER_STEP != 0
        return [norm("x", "attn_norm", "h"),
                *attention_block(bias_qkv=True, bias_out=True, rope_q_k=use_rope),
                add("x", "proj"),
                norm("x", "ffn_norm", "h"),
                *gated_ffn(bias=True),
                add("x", "proj")]
