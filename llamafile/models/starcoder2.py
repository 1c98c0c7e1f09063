"""StarCoder 2: LayerNorms with biases, biases on every projection, a plain GELU FFN (up, gelu, down),
GPT-NeoX rope."""
from __future__ import annotations

from .steps import add, attention_block, layernorm, plain_ffn
from .transformer import Transformer


class StarCoder2(Transformer):
    arch = "starcoder2"
    rope_neox = True
    output_layernorm = True

    def block(self, layer):
        return [layernorm("x", "attn_norm", "h"),
                *attention_block(bias_qkv=True, bias_out=True),
                add("x", "proj"),
                layernorm("x", "ffn_norm", "h"),
                *plain_ffn(),
                add("x", "proj")]
