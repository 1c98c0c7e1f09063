"""gpt-oss: attention with a learnt sink logit per head and biases, sliding-window attention on every other
layer (the first of each pair), and a mixture of experts with a biased router whose top-k logits are
softmaxed, experts with biases and gpt-oss's clamped SwiGLU (x = min(gate, 7), (clamp(up, ±7) + 1) · x · σ(1.702 x)).
The FFN's norm is named post_attention_norm in the file."""
from __future__ import annotations

import dataclasses

from .gemma3 import swa_layers
from .steps import add, attention_block, moe, norm
from .transformer import Transformer


class GPTOSS(Transformer):
    arch = "gpt-oss"
    rope_neox = True
    moe = True

    @classmethod
    def read_config(cls, gguf):
        c = super().read_config(gguf)
        return dataclasses.replace(
            c, n_swa=int(gguf.require(f"{cls.arch}.attention.sliding_window")),
            swa_layers=swa_layers(gguf, cls.arch, c.n_layer, 2),
            rope_base_swa=float(gguf.get(f"{cls.arch}.rope.freq_base_swa", c.rope_base)),
            n_ff_exp=int(gguf.get(f"{cls.arch}.expert_feed_forward_length", 0) or c.n_ff))

    def block(self, layer):
        c = self.config
        local = c.swa_layers[layer]
        return [norm("x", "attn_norm", "h"),
                *attention_block(bias_qkv=True, bias_out=True, table=int(local), window=c.n_swa if local else 0,
                                 sinks=True),
                add("x", "proj"),
                norm("x", "post_attention_norm", "h"),
                moe("h", "proj", c.n_expert, c.n_expert_used, c.n_ff_exp, norm_weights=False, gating="softmax_weight",
                    act="oai", bias=True),
                add("x", "proj")]
