"""Qwen2: llama's block with biases on the q, k and v projections (and the output), and GPT-NeoX rope."""
from __future__ import annotations

from .llama import Llama


class Qwen2(Llama):
    arch = "qwen2"
    rope_neox = True  # rotate halves of each head, not adjacent pairs
    optional = ("attn_q.bias", "attn_k.bias", "attn_v.bias", "output.bias")
