"""GLM-4: pre- and post-norms around attention and the FFN; the FFN's gate and up are one matrix (ffn_up,
2 n_ff rows: gate, then up); llama-layout rope (adjacent pairs, possibly over part of each head), or, where the
file gives rope.dimension_sections (M-RoPE), GPT-NeoX layout: for text all sections rotate by the token's
position, which is NeoX rope."""
from __future__ import annotations

from .steps import add, attention_block, fused_gated_ffn, norm
from .transformer import Transformer


class GLM4(Transformer):
    arch = "glm4"
    rope_neox = False

    def __init__(self, gguf, config, backend):
        sections = gguf.get(f"{config.arch}.rope.dimension_sections")
        self.rope_neox = sections is not None and any(int(s) for s in list(sections)[:3])
        super().__init__(gguf, config, backend)

    def buffers(self):
        return {**super().buffers(), "gateup": 2 * self.config.n_ff}

    def block(self, layer):
        return [norm("x", "attn_norm", "h"),
                *attention_block(bias_qkv=True),
                norm("proj", "post_attention_norm", "proj"),
                add("x", "proj"),
                norm("x", "ffn_norm", "h"),
                *fused_gated_ffn(self.config.n_ff),
                norm("proj", "post_ffw_norm", "proj"),
                add("x", "proj")]
