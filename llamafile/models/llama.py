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
from weights.quants import UnsupportedType, dequantize, format_of

from ..config import ModelConfig


@dataclass
class KVCache:
    """Keys and values of every layer for one context, allocated once."""
    k: np.ndarray  # (n_layer, n_ctx, n_head_kv, head_dim) uint16: f16 bits, as llama.cpp's default cache
    v: np.ndarray  # (n_layer, n_ctx, n_head_kv, head_dim) uint16
    n_past: int = 0

    @classmethod
    def allocate(cls, config: ModelConfig, n_ctx: int, dtype=np.uint16) -> "KVCache":
        shape = (config.n_layer, n_ctx, config.n_head_kv, config.head_dim)
        return cls(np.zeros(shape, dtype), np.zeros(shape, dtype))

    @property
    def n_ctx(self) -> int:
        return self.k.shape[1]


class RunState:
    """Every activation buffer of a forward pass, allocated once per context (llama2.c's RunState).

    A batch holds at most n_batch tokens; longer prompts are evaluated n_batch at a time.
    """

    def __init__(self, c: ModelConfig, n_batch: int):
        q_dim, kv_dim = c.n_head * c.head_dim, c.n_head_kv * c.head_dim
        self.n_batch = n_batch
        self.x = np.zeros((n_batch, c.n_embd), np.float32)       # the residual stream
        self.h = np.zeros((n_batch, c.n_embd), np.float32)       # normalised x
        self.q = np.zeros((n_batch, c.n_head, c.head_dim), np.float32)
        self.k = np.zeros((n_batch, c.n_head_kv, c.head_dim), np.float32)
        self.v = np.zeros((n_batch, c.n_head_kv, c.head_dim), np.float32)
        self.att = np.zeros((n_batch, q_dim), np.float32)        # attention output, heads side by side
        self.proj = np.zeros((n_batch, c.n_embd), np.float32)    # a block's output before the residual add
        self.gate = np.zeros((n_batch, c.n_ff), np.float32)
        self.up = np.zeros((n_batch, c.n_ff), np.float32)
        self.ffn = np.zeros((n_batch, c.n_ff), np.float32)       # silu(gate) * up
        self.logits = np.zeros((1, c.n_vocab), np.float32)       # the last token's


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
    bo: np.ndarray | None        # (n_embd,)
    ffn_norm: np.ndarray         # (n_embd,)
    gate: Tensor                 # (n_ff, n_embd)
    up: Tensor                   # (n_ff, n_embd)
    down: Tensor                 # (n_embd, n_ff)
    b_gate: np.ndarray | None    # (n_ff,)
    b_up: np.ndarray | None      # (n_ff,)
    b_down: np.ndarray | None    # (n_embd,)


class Llama:
    arch = "llama"
    rope_neox = False  # llama's GGUF layout rotates adjacent pairs

    fuse_decode = True  # decode through llamafile.models.fused where possible (~20% faster)
    # the optional tensors llama.cpp reads for this architecture (any other tensor fails the load)
    optional = ("attn_q.bias", "attn_k.bias", "attn_v.bias", "attn_output.bias", "ffn_gate.bias", "ffn_up.bias",
                "ffn_down.bias", "rope_freqs")

    def __init__(self, gguf: GGUFFile, config: ModelConfig, backend):
        self.config, self.backend = config, backend
        self._gguf = gguf
        c = config
        q_dim, kv_dim = c.n_head * c.head_dim, c.n_head_kv * c.head_dim
        weights = _TensorLoader(gguf, self.optional)
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
                bo=weights.vector(f"blk.{i}.attn_output.bias", c.n_embd, optional=True),
                ffn_norm=weights.vector(f"blk.{i}.ffn_norm.weight", c.n_embd),
                gate=weights.matrix(f"blk.{i}.ffn_gate.weight", (c.n_ff, c.n_embd)),
                up=weights.matrix(f"blk.{i}.ffn_up.weight", (c.n_ff, c.n_embd)),
                down=weights.matrix(f"blk.{i}.ffn_down.weight", (c.n_embd, c.n_ff)),
                b_gate=weights.vector(f"blk.{i}.ffn_gate.bias", c.n_ff, optional=True),
                b_up=weights.vector(f"blk.{i}.ffn_up.bias", c.n_ff, optional=True),
                b_down=weights.vector(f"blk.{i}.ffn_down.bias", c.n_embd, optional=True),
            )
            for i in range(c.n_layer)
        ]
        self.output_norm = weights.vector("output_norm.weight", c.n_embd)
        self.output = (weights.matrix("output.weight", (c.n_vocab, c.n_embd))
                       if "output.weight" in gguf.tensors else self.token_embd)
        self.output_bias = weights.vector("output.bias", c.n_vocab, optional=True)
        # rope frequency factors (Llama 3.1+ rope scaling): angle_i = pos * base^(-2i/d) / factor_i
        self.rope_factors = weights.vector("rope_freqs.weight", c.rope_dim // 2, optional=True)
        weights.check_all_used()

    def forward(self, tokens: np.ndarray, cache: KVCache, state: RunState, all_logits: bool = False) -> np.ndarray:
        """Evaluate tokens at positions cache.n_past.. and append their keys and values.

        tokens: (n,) -> logits (n, n_vocab) with all_logits, else the last token's (1, n_vocab),
        a view into state that the next call overwrites.
        """
        n = len(tokens)
        out = np.empty((n, self.config.n_vocab), np.float32) if all_logits else None
        for first in range(0, n, state.n_batch):
            chunk = tokens[first : first + state.n_batch]
            is_last = first + len(chunk) == n
            logits = self._forward_batch(chunk, cache, state, "all" if all_logits else "last" if is_last else None,
                                         out[first : first + len(chunk)] if all_logits else state.logits)
        return logits

    def _decoder(self):
        """The one-call decode step (llamafile.models.fused) where the backend and weights allow."""
        if not hasattr(self, "_fused"):
            self._fused = None
            if getattr(self.backend, "name", "") == "numba":
                from .fused import FusedDecoder
                self._fused = FusedDecoder.build(self, self._gguf)
        return self._fused

    def _forward_batch(self, tokens: np.ndarray, cache: KVCache, s: RunState, logits_for: str | None,
                       out: np.ndarray) -> np.ndarray | None:
        c, ops = self.config, self.backend
        n, start = len(tokens), cache.n_past
        if n == 1 and self.fuse_decode and self._decoder() is not None:
            return self._decode_fused(tokens, cache, s, logits_for, out)
        x, h, q, k, v = s.x[:n], s.h[:n], s.q[:n], s.k[:n], s.v[:n]                    # (n, ...)
        att, proj, gate, up, ffn = s.att[:n], s.proj[:n], s.gate[:n], s.up[:n], s.ffn[:n]
        angles = ops.rope_angles(np.arange(start, start + n), c.rope_dim, c.rope_base, self.rope_factors)
        ops.embed(self.token_embd, tokens, x)                                            # (n, n_embd)
        for layer, b in enumerate(self.blocks):
            # attention
            shared = ops.prepare(ops.rmsnorm(x, b.attn_norm, c.norm_eps, h))           # one input for q, k, v
            ops.matmul(b.wq, shared, q.reshape(n, -1))
            ops.matmul(b.wk, shared, k.reshape(n, -1))
            ops.matmul(b.wv, shared, v.reshape(n, -1))
            _add_bias(q, b.bq), _add_bias(k, b.bk), _add_bias(v, b.bv)
            ops.rope(q, angles, self.rope_neox)
            ops.rope(k, angles, self.rope_neox)
            ops.store_kv(cache.k[layer, start : start + n], k)     # as halves, as llama.cpp's cache
            ops.store_kv(cache.v[layer, start : start + n], v)
            ops.attention(q, cache.k[layer, : start + n], cache.v[layer, : start + n], start,
                          att.reshape(n, c.n_head, c.head_dim))
            x += _biased(ops.matmul(b.wo, att, proj), b.bo)
            # feed-forward
            shared = ops.prepare(ops.rmsnorm(x, b.ffn_norm, c.norm_eps, h))           # one input for gate, up
            _biased(ops.matmul(b.gate, shared, gate), b.b_gate)
            _biased(ops.matmul(b.up, shared, up), b.b_up)
            x += _biased(ops.matmul(b.down, ops.swiglu(gate, up, ffn), proj), b.b_down)
        cache.n_past = start + n
        if logits_for is None:
            return None
        rows = x if logits_for == "all" else x[-1:]                                     # (n or 1, n_embd)
        return _biased(ops.matmul(self.output, ops.rmsnorm(rows, self.output_norm, c.norm_eps, h[: len(rows)]), out),
                       self.output_bias)


    def _decode_fused(self, tokens, cache: KVCache, s: RunState, logits_for, out):
        c, ops, start = self.config, self.backend, cache.n_past
        x = s.x[:1]
        ops.embed(self.token_embd, tokens, x)
        cos, sin = ops.rope_angles(np.arange(start, start + 1), c.rope_dim, c.rope_base, self.rope_factors)
        buffers = (s.h[:1], s.q[:1], s.k[:1], s.v[:1], s.att[:1], s.proj[:1], s.gate[:1], s.up[:1], s.ffn[:1],
                   ops._scores)
        self._fused(x, cache, start, cos, sin, self.rope_neox, c.norm_eps, buffers)
        cache.n_past = start + 1
        if logits_for is None:
            return None
        return _biased(ops.matmul(self.output, ops.rmsnorm(x, self.output_norm, c.norm_eps, s.h[:1]), out),
                       self.output_bias)


def _biased(y: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """y (n, dim) += bias (dim,) where the file has one; y."""
    if bias is not None:
        y += bias
    return y


def _add_bias(y: np.ndarray, bias: np.ndarray | None) -> None:
    """y: (n, heads, head_dim) += bias (heads * head_dim,), where the file has one."""
    if bias is not None:
        y += bias.reshape(y.shape[1:])


class _TensorLoader:
    """Looks tensors up by name, checks their shapes and types, and that the model uses every one.

    optional: the kinds of tensor (a name less its "blk.N." and ".weight") the architecture may read
    where the file has them; any tensor left unread fails the load, naming it (a file with a tensor
    we ignore would give plausible garbage)."""

    def __init__(self, gguf: GGUFFile, optional=()):
        self.gguf, self.optional, self.used = gguf, set(optional), set()

    def _get(self, name: str) -> Tensor:
        t = self.gguf.tensor(name)
        try:
            format_of(t.type)
        except UnsupportedType as e:
            raise GGUFError(f"{self.gguf.path}: tensor '{name}': {e}") from None
        self.used.add(name)
        return t

    def check_all_used(self) -> None:
        unused = sorted(set(self.gguf.tensors) - self.used)
        if unused:
            more = f" and {len(unused) - 1} more" if len(unused) > 1 else ""
            raise GGUFError(f"{self.gguf.path}: tensor '{unused[0]}'{more} is not used by the "
                            f"{self.gguf.get('general.architecture')} architecture (an unsupported variant?)")

    def matrix(self, name: str, shape: tuple[int, int]) -> Tensor:
        t = self._get(name)
        if tuple(t.shape) != shape:
            raise GGUFError(f"{self.gguf.path}: tensor '{name}' has shape {tuple(t.shape)}, expected {shape}")
        return t

    def vector(self, name: str, size: int, optional: bool = False) -> np.ndarray | None:
        kind = name.split(".", 2)[2] if name.startswith("blk.") else name
        kind = kind.removesuffix(".weight")
        if optional and (name not in self.gguf.tensors or kind not in self.optional):
            return None
        t = self._get(name)
        if tuple(t.shape) != (size,):
            raise GGUFError(f"{self.gguf.path}: tensor '{name}' has shape {tuple(t.shape)}, expected ({size},)")
        return dequantize(t.data, t.type)  # small: norms and biases live in RAM as float32
