"""Phi-2: attention and a plain GELU FFN side by side on the same LayerNorm'd input (parallel residual:
x += attention(h) + ffn(h)), biases everywhere, partial GPT-NeoX rope, an output bias."""
from __future__ import annotations

from .steps import add, attention_block, layernorm, plain_ffn
from .transformer import Transformer


class Phi2(Transformer):
    arch = "phi2"
    rope_neox = True
    output_layernorm = True
    output_bias = True

    def buffers(self):
        return {**super().buffers(), "proj2": self.config.n_embd}

    def block(self, layer):
        return [layernorm("x", "attn_norm", "h"),
                *attention_block(bias_qkv=True, bias_out=True),
                *plain_ffn(dst="proj2"),
                add("proj", "proj2"),      # llama.cpp's order: (attention + ffn) + x
                add("x", "proj")]
