"""Llama: the decoder-only transformer that SmolLM2, Llama 2/3 and many others share.

    x = embed(tokens)
    for each block:
        x += Wo · attention(rope(Wq · norm(x)), rope(Wk · norm(x)), Wv · norm(x))
        x += Wdown · (silu(Wgate · norm(x)) * Wup · norm(x))
    logits = Wout · norm(x)          # Wout is the embedding table when the file has no output.weight

Weights stay in the memory-mapped file: each is a `weights.gguf.Tensor` view that the
backend reads block by block.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from weights.gguf import GGUFError, GGUFFile, Tensor
from weights.quants import dequantize

from ..config import ModelConfig


@dataclass
class KVCache:
    """Keys and values of every layer for one context, allocated once."""
    k: np.ndarray  # (n_layer, n_ctx, n_head_kv, head_dim)
    v: np.ndarray  # (n_layer, n_ctx, n_head_kv, head_dim)
    n_past: int = 0

    @classmethod
    def allocate(cls, config: ModelConfig, n_ctx: int, dtype=np.float32) -> "KVCache":
        shape = (config.n_layer, n_ctx, config.n_head_kv, config.head_dim)
        return cls(np.zeros(shape, dtype), np.zeros(shape, dtype))

    @property
    def n_ctx(self) -> int:
        return self.k.shape[1]


@dataclass
class Block:
    attn_norm: np.ndarray        # (n_embd,)
    wq: Tensor                   # (n_head * head_dim, n_embd)
    wk: Tensor                   # (n_head_kv * head_dim, n_embd)
    wv: Tensor                   # (n_head_kv * head_dim, n_embd)
    wo: Tensor                   # (n_embd, n_head * head_dim)
    bq: np.ndarray | None        # (n_head * head_dim,) where the file has biases
    bk: np.ndarray | None
    bv: np.ndarray | None
    ffn_norm: np.ndarray         # (n_embd,)
    gate: Tensor                 # (n_ff, n_embd)
    up: Tensor                   # (n_ff, n_embd)
    down: Tensor                 # (n_embd, n_ff)


class Llama:
    arch = "llama"
    rope_neox = False  # llama's GGUF layout rotates adjacent pairs

    def __init__(self, gguf: GGUFFile, config: ModelConfig, backend):
        self.config, self.backend = config, backend
        c = config
        q_dim, kv_dim = c.n_head * c.head_dim, c.n_head_kv * c.head_dim
        weights = _TensorLoader(gguf)
        self.token_embd = weights.matrix("token_embd.weight", (c.n_vocab, c.n_embd))
        self.blocks = [
            Block(
                attn_norm=weights.vector(f"blk.{i}.attn_norm.weight", c.n_embd),
                wq=weights.matrix(f"blk.{i}.attn_q.weight", (q_dim, c.n_embd)),
                wk=weights.matrix(f"blk.{i}.attn_k.weight", (kv_dim, c.n_embd)),
                wv=weights.matrix(f"blk.{i}.attn_v.weight", (kv_dim, c.n_embd)),
                wo=weights.matrix(f"blk.{i}.attn_output.weight", (c.n_embd, q_dim)),
                bq=weights.vector(f"blk.{i}.attn_q.bias", q_dim, optional=True),
                bk=weights.vector(f"blk.{i}.attn_k.bias", kv_dim, optional=True),
                bv=weights.vector(f"blk.{i}.attn_v.bias", kv_dim, optional=True),
                ffn_norm=weights.vector(f"blk.{i}.ffn_norm.weight", c.n_embd),
                gate=weights.matrix(f"blk.{i}.ffn_gate.weight", (c.n_ff, c.n_embd)),
                up=weights.matrix(f"blk.{i}.ffn_up.weight", (c.n_ff, c.n_embd)),
                down=weights.matrix(f"blk.{i}.ffn_down.weight", (c.n_embd, c.n_ff)),
            )
            for i in range(c.n_layer)
        ]
        self.output_norm = weights.vector("output_norm.weight", c.n_embd)
        self.output = (weights.matrix("output.weight", (c.n_vocab, c.n_embd))
                       if "output.weight" in gguf.tensors else self.token_embd)

    def forward(self, tokens: np.ndarray, cache: KVCache, all_logits: bool = True) -> np.ndarray:
        """Evaluate tokens at positions cache.n_past.. and append their keys and values.

        tokens: (n,) -> logits (n, n_vocab), or (1, n_vocab) for the last token only.
        """
        c, ops = self.config, self.backend
        n, start = len(tokens), cache.n_past
        positions = np.arange(start, start + n)                                    # (n,)
        x = ops.embed(self.token_embd, tokens)                                     # (n, n_embd)
        for layer, b in enumerate(self.blocks):
            # attention
            h = ops.prepare(ops.rmsnorm(x, b.attn_norm, c.norm_eps))              # (n, n_embd), shared by q, k, v
            q = _with_bias(ops.matmul(b.wq, h), b.bq).reshape(n, c.n_head, c.head_dim)
            k = _with_bias(ops.matmul(b.wk, h), b.bk).reshape(n, c.n_head_kv, c.head_dim)
            v = _with_bias(ops.matmul(b.wv, h), b.bv).reshape(n, c.n_head_kv, c.head_dim)
            q = ops.rope(q, positions, c.rope_dim, c.rope_base, self.rope_neox)
            k = ops.rope(k, positions, c.rope_dim, c.rope_base, self.rope_neox)
            cache.k[layer, start : start + n] = k
            cache.v[layer, start : start + n] = v
            att = ops.attention(q, cache.k[layer, : start + n], cache.v[layer, : start + n], start)
            x = x + ops.matmul(b.wo, att.reshape(n, c.n_head * c.head_dim))
            # feed-forward
            h = ops.prepare(ops.rmsnorm(x, b.ffn_norm, c.norm_eps))               # shared by gate and up
            x = x + ops.matmul(b.down, ops.swiglu(ops.matmul(b.gate, h), ops.matmul(b.up, h)))
        cache.n_past = start + n
        if not all_logits:
            x = x[-1:]
        return ops.matmul(self.output, ops.rmsnorm(x, self.output_norm, c.norm_eps))  # (n or 1, n_vocab)


def _with_bias(y: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    return y if bias is None else y + bias


class _TensorLoader:
    """Looks tensors up by name and checks their shapes against the config."""

    def __init__(self, gguf: GGUFFile):
        self.gguf = gguf

    def matrix(self, name: str, shape: tuple[int, int]) -> Tensor:
        t = self.gguf.tensor(name)
        if tuple(t.shape) != shape:
            raise GGUFError(f"{self.gguf.path}: tensor '{name}' has shape {tuple(t.shape)}, expected {shape}")
        return t

    def vector(self, name: str, size: int, optional: bool = False) -> np.ndarray | None:
        if optional and name not in self.gguf.tensors:
            return None
        t = self.gguf.tensor(name)
        if tuple(t.shape) != (size,):
            raise GGUFError(f"{self.gguf.path}: tensor '{name}' has shape {tuple(t.shape)}, expected ({size},)")
        return dequantize(t.data, t.type)  # small: norms and biases live in RAM as float32
