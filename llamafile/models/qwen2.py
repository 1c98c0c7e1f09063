"""Qwen2: llama's block with biases on the q, k and v projections and GPT-NeoX rope."""
from __future__ import annotations

from .llama import Llama


class Qwen2(Llama):
    arch = "qwen2"
    rope_neox = True  # rotate halves of each head, not adjacent pairs
    # the q/k/v biases are picked up by Llama when the file has them
