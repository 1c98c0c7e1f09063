"""OLMoE: a pre-norm block with RMSNorms over the whole of q and k, GPT-NeoX rope, and a mixture-of-experts
FFN whose softmax weights are not renormalised over the chosen experts."""
from __future__ import annotations

from .steps import add, attention_block, moe, norm
from .transformer import Transformer


class OLMoE(Transformer):
    arch = "olmoe"
    rope_neox = True
    moe = True

    def block(self, layer):
        c = self.config
        return [norm("x", "attn_norm", "h"),
                *attention_block(bias_qkv=True, qk_norm="whole"),
                add("x", "proj"),
                norm("x", "ffn_norm", "h"),
                moe("h", "proj", c.n_expert, c.n_expert_used, c.n_ff, norm_weights=False),
                add("x", "proj")]
