"""EXAONE 4: OLMo 2's post-norm block with per-head q/k norms and rope_freqs. The 32B (64 layers) has
sliding-window layers (3 of each 4) and only those rotate; the others use no position encoding."""
from __future__ import annotations

import dataclasses

from .gemma3 import swa_layers
from .steps import add, attention_block, gated_ffn, norm
from .transformer import Transformer


class Exaone4(Transformer):
    arch = "exaone4"
    rope_neox = True
    rope_freqs = True

    @classmethod
    def read_config(cls, gguf):
        c = super().read_config(gguf)
        if c.n_layer != 64:    # llama.cpp turns sliding windows on for the 32B only
            return c
        return dataclasses.replace(c, n_swa=int(gguf.get(f"{cls.arch}.attention.sliding_window", 4096)),
                                   swa_layers=swa_layers(gguf, cls.arch, c.n_layer, 4))

    def block(self, layer):
        c = self.config
        local = bool(c.swa_layers and c.swa_layers[layer])
        return [*attention_block(bias_qkv=True, qk_norm=True, rope_q_k=local or not c.n_swa,
                                 window=c.n_swa if local else 0, src="x"),
                norm("proj", "post_attention_norm", "proj"),
                add("x", "proj"),
                *gated_ffn(src="x"),
                norm("proj", "post_ffw_norm", "proj"),
                add("x", "proj")]
