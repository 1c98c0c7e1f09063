"""Qwen3: qwen2's block without the output bias, with an RMSNorm on each head of q and k before rope."""
from __future__ import annotations

from .steps import add, attention_block, gated_ffn, norm
from .transformer import Transformer


class Qwen3(Transformer):
    arch = "qwen3"
    rope_neox = True
    not_for_logits = ("cls.output.weight",)  # the reranker head (pooling only)

    def block(self, layer):
        return [norm("x", "attn_norm", "h"),
                *attention_block(bias_qkv=True, qk_norm=True),   # q/k/v biases where the file has them
                add("x", "proj"),
                norm("x", "ffn_norm", "h"),
                *gated_ffn(),
                add("x", "proj")]
