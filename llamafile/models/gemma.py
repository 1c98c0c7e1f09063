"""Gemma (1): llama's block with the embedding scaled by sqrt(n_embd), a GELU-gated FFN and GPT-NeoX rope.
The norms' weights are used as stored (llama.cpp's converter already added Gemma's 1)."""
from __future__ import annotations

import dataclasses

import numpy as np

from .steps import add, attention_block, gated_ffn, geglu, norm
from .transformer import Transformer


class Gemma(Transformer):
    arch = "gemma"
    rope_neox = True

    @classmethod
    def read_config(cls, gguf):
        c = super().read_config(gguf)
        return dataclasses.replace(c, embed_scale=float(np.sqrt(np.float32(c.n_embd))))

    def block(self, layer):
        return [norm("x", "attn_norm", "h"),
                *attention_block(bias_qkv=True),
                add("x", "proj"),
                norm("x", "ffn_norm", "h"),
                *gated_ffn(geglu),
                add("x", "proj")]
