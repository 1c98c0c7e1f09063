"""Gemma 3: RMSNorms after attention and after the FFN too, q/k norms, a GELU-gated FFN, the embedding
scaled by sqrt(n_embd), and sliding-window attention on the local layers with their own rope base.

    x = embed(tokens) * sqrt(n_embd)
    for each block:
        x += post_norm(Wo · attention(rope(qnorm(Wq · norm(x))), rope(knorm(Wk · norm(x))), Wv · norm(x)))
        x += post_norm(Wdown · (gelu(Wgate · norm(x)) * Wup · norm(x)))
    logits = Wout · norm(x)          (cap · tanh(logits / cap) where final_logit_softcapping is set)

The norms' weights are used as stored: llama.cpp's converter already added Gemma's 1.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from .steps import add, attention_block, gated_ffn, geglu, norm
from .transformer import Transformer


def swa_layers(gguf, arch: str, n_layer: int, default_pattern: int, dense_first: bool = False) -> tuple:
    """Which layers use the sliding window: the file's per-layer array, else every layer but the last of
    each group of pattern layers (llama.cpp's load_swa_pattern / set_swa_pattern)."""
    pattern = gguf.get(f"{arch}.attention.sliding_window_pattern")
    if pattern is not None and np.ndim(pattern) > 0:
        flags = [bool(v) for v in np.asarray(pattern).reshape(-1)]
        return tuple(flags[:n_layer]) + (False,) * (n_layer - len(flags))
    n = int(pattern) if pattern is not None else default_pattern
    if dense_first:
        return tuple(n == 0 or i % n != 0 for i in range(n_layer))
    return tuple(n == 0 or i % n < n - 1 for i in range(n_layer))


class Gemma3(Transformer):
    arch = "gemma3"
    rope_neox = True

    @classmethod
    def read_config(cls, gguf):
        c = super().read_config(gguf)
        n_swa = int(gguf.get(f"{cls.arch}.attention.sliding_window", 0) or 0)
        extra = {}
        if n_swa > 0:
            extra = dict(n_swa=n_swa, swa_layers=swa_layers(gguf, cls.arch, c.n_layer, 6),
                         rope_base_swa=float(gguf.get(f"{cls.arch}.rope.freq_base_swa", 10000.0)))
        # gemma_pytorch's query_pre_attn_scalar: n_embd / n_head for the 27B (62 layers), else head_dim
        scale = 1.0 / math.sqrt(c.n_embd // c.n_head if c.n_layer == 62 else c.head_dim)
        return dataclasses.replace(c, attn_scale=scale, embed_scale=float(np.sqrt(np.float32(c.n_embd))),
                                   final_softcap=float(gguf.get(f"{cls.arch}.final_logit_softcapping", 0.0) or 0.0),
                                   **extra)

    def block(self, layer):
        c = self.config
        local = bool(c.swa_layers and c.swa_layers[layer])
        return [norm("x", "attn_norm", "h"),
                *attention_block(bias_qkv=True, qk_norm=True, table=int(local), window=c.n_swa if local else 0,
                                 scale=c.attn_scale),
                norm("proj", "post_attention_norm", "proj"),
                add("x", "proj"),
                norm("x", "ffn_norm", "h"),
                *gated_ffn(geglu),
                norm("proj", "post_ffw_norm", "proj"),
                add("x", "proj")]
