"""StableLM: LayerNorms with biases, optional per-head LayerNorms on q and k (each head its own weights),
partial GPT-NeoX rope (rope.dimension_count of each head), a SiLU-gated FFN; without an ffn_norm the FFN
reads the attention's normalised input (parallel blocks, StableLM 2 1.6B's "use_parallel_residual")."""
from __future__ import annotations

from .steps import add, attention_block, gated_ffn, layernorm
from .transformer import Transformer


class StableLM(Transformer):
    arch = "stablelm"
    rope_neox = True
    output_layernorm = True

    def __init__(self, gguf, config, backend):
        self._tensors = gguf.tensors
        super().__init__(gguf, config, backend)

    def block(self, layer):
        has = lambda kind: f"blk.{layer}.{kind}.weight" in self._tensors  # noqa: E731
        steps = attention_block(bias_qkv=True)
        if has("attn_q_norm"):
            steps[3:3] = [layernorm("q", "attn_q_norm", "q", per_head=True),
                          layernorm("k", "attn_k_norm", "k", per_head=True)]
        ffn_norm = [layernorm("x", "ffn_norm", "h2")] if has("ffn_norm") else []
        return [layernorm("x", "attn_norm", "h"),
                *steps,
                add("x", "proj"),
                *ffn_norm,
                *gated_ffn(src="h2" if ffn_norm else "h"),
                add("x", "proj")]

    def buffers(self):
        return {**super().buffers(), "h2": self.config.n_embd}
