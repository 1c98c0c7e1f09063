"""Gemma 2: gemma's block with RMSNorms after attention and after the FFN too, softcapped attention scores
and logits, and sliding-window attention on every other layer (the first of each pair)."""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from .gemma3 import swa_layers
from .steps import add, attention_block, gated_ffn, geglu, norm
from .transformer import Transformer


class Gemma2(Transformer):
    arch = "gemma2"
    rope_neox = True

    @classmethod
    def read_config(cls, gguf):
        c = super().read_config(gguf)
        key = lambda name, default: float(gguf.get(f"{cls.arch}.{name}", default))  # noqa: E731
        scale = 1.0 / math.sqrt(c.n_embd // c.n_head if c.n_layer == 46 else c.head_dim)   # the 27B: n_embd / n_head
        return dataclasses.replace(
            c, n_swa=int(gguf.get(f"{cls.arch}.attention.sliding_window", 4096)),
            swa_layers=swa_layers(gguf, cls.arch, c.n_layer, 2), rope_base_swa=key("rope.freq_base_swa", c.rope_base),
            attn_scale=scale, attn_softcap=key("attn_logit_softcapping", 50.0),
            final_softcap=key("final_logit_softcapping", 30.0), embed_scale=float(np.sqrt(np.float32(c.n_embd))))

    def block(self, layer):
        c = self.config
        local = c.swa_layers[layer]
        return [norm("x", "attn_norm", "h"),
                *attention_block(bias_qkv=True, table=int(local), window=c.n_swa if local else 0, scale=c.attn_scale,
                                 softcap=c.attn_softcap),
                norm("proj", "post_attention_norm", "proj"),
                add("x", "proj"),
                norm("x", "ffn_norm", "h"),
                *gated_ffn(geglu),
                norm("proj", "post_ffw_norm", "proj"),
                add("x", "proj")]
