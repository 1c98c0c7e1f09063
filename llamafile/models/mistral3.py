"""Mistral 3 (Ministral): llama's block, with the same optional biases and rope_freqs.

llama.cpp also reads an attention temperature scale (Llama 4 style, for long contexts); a file that sets
one is refused rather than run without it.
"""
from __future__ import annotations

from weights.gguf import GGUFError

from .llama import Llama


class Mistral3(Llama):
    arch = "mistral3"

    @classmethod
    def read_config(cls, gguf):
        if float(gguf.get(f"{cls.arch}.attention.temperature_scale", 0.0) or 0.0):
            raise GGUFError(f"{gguf.path}: attention temperature scaling is not supported yet")
        return super().read_config(gguf)
