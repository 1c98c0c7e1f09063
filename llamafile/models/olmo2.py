"""OLMo 2: no norm before attention or the FFN; RMSNorms after each instead, and over the whole of q and of k
(not per head) before rope. Optional sliding-window layers (same rope base)."""
from __future__ import annotations

import dataclasses

from .gemma3 import swa_layers
from .steps import add, attention_block, gated_ffn, norm
from .transformer import Transformer


class OLMo2(Transformer):
    arch = "olmo2"
    rope_neox = True

    @classmethod
    def read_config(cls, gguf):
        c = super().read_config(gguf)
        n_swa = int(gguf.get(f"{cls.arch}.attention.sliding_window", 0) or 0)
        if n_swa <= 0:
            return c
        return dataclasses.replace(c, n_swa=n_swa, swa_layers=swa_layers(gguf, cls.arch, c.n_layer, 4))

    def block(self, layer):
        c = self.config
        local = bool(c.swa_layers and c.swa_layers[layer])
        return [*attention_block(bias_qkv=True, qk_norm="whole", window=c.n_swa if local else 0, src="x"),
                norm("proj", "post_attention_norm", "proj"),
                add("x", "proj"),
                *gated_ffn(src="x"),
                norm("proj", "post_ffw_norm", "proj"),
                add("x", "proj")]
