"""The decoder-only transformer every architecture file describes: load what its steps name, run them.

    x = embed(tokens) (* embed_scale)
    for each layer i: the architecture's steps for layer i (llamafile.models.steps), on x and scratch
    logits = Wout · norm(x) (+ bias) (softcapped where the model says)

An architecture is a subclass that sets `arch`, reads its hyper-parameters (`read_config`) and
returns its block's steps for layer i (`block`). Prompts run the steps one by one through the
backend (`_forward_batch`); decoding one token runs the same steps for every block in one jitted
call (llamafile.models.fused), bit for bit the same arithmetic.

Weights stay in the memory-mapped file: each matrix is a `weights.gguf.Tensor` view that the
backend reads block by block; norms and biases (small) are float32 in RAM.
"""
from __future__ import annotations

import mmap
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from weights.gguf import GGUFError, GGUFFile, Tensor
from weights.quants import UnsupportedType, dequantize, format_of

from ..config import ModelConfig
from .steps import Step


@dataclass
class KVCache:
    """Keys and values of every layer for one context, allocated once."""
    k: np.ndarray  # (n_layer, n_ctx, n_head_kv, head_dim) uint16: f16 bits, as llama.cpp's default cache
    v: np.ndarray  # (n_layer, n_ctx, n_head_kv, head_dim) uint16, stored (n_layer, n_head_kv, n_ctx, head_dim):
                   # the values of one KV head in one run, which decoding reads a head at a time
    kt: np.ndarray  # (n_layer, n_ctx / 16, n_head_kv, head_dim, 16) uint16: k transposed in blocks of 16
    n_past: int = 0  # keys, which decoding reads with the keys in the vector lanes (kernels.ops.attention_decode)

    @classmethod
    def allocate(cls, config: ModelConfig, n_ctx: int, dtype=np.uint16) -> "KVCache":
        shape = (config.n_layer, n_ctx, config.n_head_kv, config.head_dim)
        blocks = (config.n_layer, -(-n_ctx // 16), config.n_head_kv, config.head_dim, 16)
        v = untouched_zeros((config.n_layer, config.n_head_kv, n_ctx, config.head_dim), dtype).transpose(0, 2, 1, 3)
        return cls(untouched_zeros(shape, dtype), v, untouched_zeros(blocks, dtype))

    @property
    def n_ctx(self) -> int:
        return self.k.shape[1]

    def restore(self, k: np.ndarray, v: np.ndarray) -> None:
        """Keys and values of the first n positions from elsewhere (a saved slot): (n_layer, n, n_head_kv,
        head_dim) each; the keys' transposed copy is made from them."""
        n = k.shape[1]
        self.k[:, :n], self.v[:, :n] = k, v
        blocks = -(-n // 16)
        padded = np.zeros((k.shape[0], blocks * 16) + k.shape[2:], self.k.dtype)
        padded[:, :n] = k
        self.kt[:, :blocks] = padded.reshape(k.shape[0], blocks, 16, *k.shape[2:]).transpose(0, 1, 3, 4, 2)
        self.n_past = n


def untouched_zeros(shape: tuple, dtype) -> np.ndarray:
    """Zeros that take memory only where they are written, 4 KB at a time: anonymous memory that is not
    backed by huge pages. (numpy asks for 2 MB pages for its large arrays: the first token written in each
    layer of a KV cache would make megabytes of it resident, a context's worth in all before it is used.)"""
    count = int(np.prod(shape))
    size = max(count * np.dtype(dtype).itemsize, 1)
    if hasattr(mmap, "MAP_ANONYMOUS"):
        buf = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        if hasattr(mmap, "MADV_NOHUGEPAGE"):
            buf.madvise(mmap.MADV_NOHUGEPAGE)
    else:  # Windows: committed pages are zero and take memory when first touched
        buf = mmap.mmap(-1, size)
    return np.frombuffer(buf, dtype, count).reshape(shape)


def standard_buffers(c: ModelConfig) -> dict[str, int]:
    """The activation buffers of a llama-like block and their widths."""
    q_dim, kv_dim = c.n_head * c.head_dim, c.n_head_kv * c.head_dim
    return {"x": c.n_embd,       # the residual stream
            "h": c.n_embd,       # normalised x
            "q": q_dim, "k": kv_dim, "v": kv_dim,
            "att": q_dim,        # attention output, heads side by side
            "proj": c.n_embd,    # a block half's output before the residual add
            "gate": c.n_ff, "up": c.n_ff,
            "ffn": c.n_ff}       # act(gate) * up


class RunState:
    """Every activation buffer of a forward pass, allocated once per context (llama2.c's RunState).

    A batch holds at most n_batch tokens; longer prompts are evaluated n_batch at a time.
    buffers: name -> width, as the architecture declares them (standard_buffers by default).
    """

    def __init__(self, c: ModelConfig, n_batch: int, buffers: dict[str, int] | None = None):
        self.n_batch = n_batch
        self.buffers = {name: np.zeros((n_batch, width), np.float32)
                        for name, width in (buffers or standard_buffers(c)).items()}
        for name, array in self.buffers.items():
            setattr(self, name, array)
        self.logits = np.zeros((1, c.n_vocab), np.float32)       # the last token's


@dataclass
class Bound:
    """A step with the tensors it names, read from the file for one layer."""
    step: Step
    weight: Tensor | None = None      # matmul
    bias: np.ndarray | None = None    # matmul, where the file has one
    vector: np.ndarray | None = None  # norm
    experts: list | None = None       # moe: (gate, up, down) per expert, views of the 3-D tensors
    expert_biases: list | None = None # moe with biases: (gate, up, down) bias vectors per expert


class Transformer(ABC):
    arch = ""
    rope_neox = False           # rotate halves of each head (GPT-NeoX) rather than adjacent pairs
    fuse_decode = True          # decode through llamafile.models.fused where possible (~20% faster)
    output_bias = False         # the file may have output.bias
    rope_freqs = False          # the file may have rope_freqs.weight (Llama 3.1+ rope scaling)
    # tensors llama.cpp loads that play no part in next-token logits (e.g. a reranker's head)
    not_for_logits: tuple[str, ...] = ()
    moe = False                 # reads mixture-of-experts blocks
    output_layernorm = False    # the final norm is a LayerNorm with output_norm.bias (else RMSNorm)

    @classmethod
    def read_config(cls, gguf: GGUFFile) -> ModelConfig:
        """The hyper-parameters, from the GGUF keys as llama.cpp reads them for this architecture."""
        return ModelConfig.from_gguf(gguf)

    def buffers(self) -> dict[str, int]:
        return standard_buffers(self.config)

    @abstractmethod
    def block(self, layer: int) -> list[Step]:
        """The steps of block `layer`, in order: what each architecture's file says (models/steps.py)."""

    def __init__(self, gguf: GGUFFile, config: ModelConfig, backend):
        self.config, self.backend = config, backend
        self._gguf = gguf
        c = config
        if int(gguf.get(f"{c.arch}.expert_count", 0) or 0) > 0 and not self.moe:
            raise GGUFError(f"{gguf.path}: mixture-of-experts {c.arch} models are not supported yet")
        self.widths = self.buffers()
        self._ones = np.ones(c.head_dim, np.float32)
        weights = _TensorLoader(gguf)
        self.token_embd = weights.matrix("token_embd.weight", (c.n_vocab, c.n_embd))
        self.layers = [[self._bind(step, i, weights) for step in self.block(i)] for i in range(c.n_layer)]
        self.output_norm = weights.vector("output_norm.weight", c.n_embd)
        self.output_norm_bias = weights.vector("output_norm.bias", c.n_embd) if self.output_layernorm else None
        self.output = (weights.matrix("output.weight", (c.n_vocab, c.n_embd))
                       if "output.weight" in gguf.tensors else self.token_embd)
        self.output_bias_vec = weights.vector("output.bias", c.n_vocab, optional=True) if self.output_bias else None
        # rope frequency factors (Llama 3.1+ rope scaling): angle_i = pos * base^(-2i/d) / factor_i
        self.rope_factors = (weights.vector("rope_freqs.weight", c.rope_dim // 2, optional=True)
                             if self.rope_freqs else None)
        self._load_extra(weights)
        for name in self.not_for_logits:
            if name in gguf.tensors:
                weights.used.add(name)
        weights.check_all_used()

    def _load_extra(self, weights: "_TensorLoader") -> None:
        """Tensors outside the blocks that an architecture reads besides the usual ones."""

    def set_context(self, n_ctx: int) -> None:
        """The context the model runs with (LongRoPE picks its frequency factors by it)."""

    def _bind(self, step: Step, i: int, weights: "_TensorLoader") -> Bound:
        w = self.widths
        if step.op == "matmul":
            name = f"blk.{i}.{step.weight}"
            return Bound(step, weight=weights.matrix(f"{name}.weight", (w[step.dst], w[step.src])),
                         bias=weights.vector(f"{name}.bias", w[step.dst], optional=True) if step.bias else None)
        if step.op == "moe":
            n_in, n_out, ff, n_exp = w[step.src], w[step.dst], step.n_ff, step.experts
            router = weights.matrix(f"blk.{i}.ffn_gate_inp.weight", (n_exp, n_in))
            stacks = [weights.tensor(f"blk.{i}.ffn_{kind}_exps.weight", (n_exp,) + shape)
                      for kind, shape in (("gate", (ff, n_in)), ("up", (ff, n_in)), ("down", (n_out, ff)))]
            bound = Bound(step, weight=router, experts=[tuple(_expert(t, e) for t in stacks) for e in range(n_exp)])
            if step.bias:
                bound.bias = weights.vector(f"blk.{i}.ffn_gate_inp.bias", n_exp)
                biases = [weights.vector(f"blk.{i}.ffn_{kind}_exps.bias", n_exp * size, flat=True).reshape(n_exp, size)
                          for kind, size in (("gate", ff), ("up", ff), ("down", n_out))]
                bound.expert_biases = [tuple(b[e] for b in biases) for e in range(n_exp)]
            return bound
        if step.op == "attention" and step.sinks:
            return Bound(step, vector=weights.vector(f"blk.{i}.attn_sinks.weight", self.config.n_head))
        if step.op == "norm":
            size = self.config.head_dim if step.per_head else w[step.src]
            return Bound(step, vector=weights.vector(f"blk.{i}.{step.weight}.weight", size))
        if step.op == "layernorm":
            name = f"blk.{i}.{step.weight}"
            if step.per_head:  # each head normalised alone, then scaled by its own weights (StableLM's q/k norms)
                return Bound(step, vector=weights.vector(f"{name}.weight", w[step.src], flat=True))
            return Bound(step, vector=weights.vector(f"{name}.weight", w[step.src]),
                         bias=weights.vector(f"{name}.bias", w[step.src], optional=True) if step.bias else None)
        return Bound(step)

    @property
    def matrices(self) -> list[Tensor]:
        """Every block matrix, layer by layer in step order (a mixture's: its router, then every expert's)."""
        return [w for layer in self.layers for b in layer
                for w in ([b.weight] if b.weight is not None else []) + [m for e in b.experts or () for m in e]]

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
        return out if all_logits else logits

    def _decoder(self):
        """The one-call decode step (llamafile.models.fused) where the backend and weights allow."""
        if not hasattr(self, "_fused"):
            self._fused = None
            if getattr(self.backend, "name", "") == "numba":
                from .fused import FusedDecoder
                self._fused = FusedDecoder.build(self, self._gguf)
        return self._fused

    def rope_tables(self, start: int, n: int):
        """(cos, sin) per angle table: 0 at rope.freq_base (with rope_freqs), 1 at the sliding-window base."""
        c, ops = self.config, self.backend
        positions = np.arange(start, start + n) * c.rope_scale if c.rope_scale != 1.0 else np.arange(start, start + n)
        tables = [ops.rope_angles(positions, c.rope_dim, c.rope_base, self.rope_factors, 0)]
        if c.n_swa:
            tables.append(ops.rope_angles(positions, c.rope_dim, c.rope_base_swa, None, 1))
        return tables

    def _embed(self, tokens, x):
        self.backend.embed(self.token_embd, tokens, x)                                   # (n, n_embd)
        if self.config.embed_scale:
            x *= np.float32(self.config.embed_scale)

    def _forward_batch(self, tokens: np.ndarray, cache: KVCache, s: RunState, logits_for: str | None,
                       out: np.ndarray) -> np.ndarray | None:
        n, start = len(tokens), cache.n_past
        if n == 1 and self.fuse_decode and self._decoder() is not None:
            return self._decode_fused(tokens, cache, s, logits_for, out)
        buf = {name: array[:n] for name, array in s.buffers.items()}                     # (n, width) each
        angles = self.rope_tables(start, n)
        self._embed(tokens, buf["x"])
        for layer, steps in enumerate(self.layers):
            self._run_steps(layer, steps, buf, n, start, angles, cache)
        cache.n_past = start + n
        return self._logits(buf["x"], buf["h"], logits_for, out)

    def _run_steps(self, layer: int, steps: list[Bound], buf: dict, n: int, start: int, angles, cache: KVCache):
        """One block, step by step through the backend (llamafile.models.fused runs the same steps in one call)."""
        c, ops, hd = self.config, self.backend, self.config.head_dim
        prepared = {}  # buffer -> its prepared form, shared by the matmuls that read it until it is written
        for b in steps:
            st = b.step
            op = st.op
            if op == "norm":
                src, dst = buf[st.src], buf[st.dst]
                if st.per_head:
                    src, dst = src.reshape(-1, hd), dst.reshape(-1, hd)
                ops.rmsnorm(src, b.vector, c.norm_eps, dst)
            elif op == "layernorm":
                if st.per_head:
                    dst = buf[st.dst]
                    ops.layernorm(buf[st.src].reshape(-1, hd), self._ones[:hd], None, c.layer_norm_eps,
                                  dst.reshape(-1, hd))
                    dst *= b.vector
                else:
                    ops.layernorm(buf[st.src], b.vector, b.bias, c.layer_norm_eps, buf[st.dst])
            elif op == "matmul":
                if st.src not in prepared:
                    prepared[st.src] = ops.prepare(buf[st.src])
                y = ops.matmul(b.weight, prepared[st.src], buf[st.dst])
                if b.bias is not None:
                    y += b.bias
            elif op == "rope":
                ops.rope(buf[st.src].reshape(n, -1, hd), angles[st.table], self.rope_neox)
            elif op == "store_kv":
                ops.store_kv(cache.k[layer, start : start + n], buf[st.src].reshape(n, -1, hd), cache.kt[layer], start)
                ops.store_kv(cache.v[layer, start : start + n], buf[st.other].reshape(n, -1, hd))
            elif op == "attention":
                ops.attention(buf[st.src].reshape(n, -1, hd), cache.k[layer, : start + n], cache.v[layer, : start + n],
                              start, buf[st.dst].reshape(n, -1, hd), st.factor, st.window, st.cap,
                              b.vector if st.sinks else None, cache.kt[layer])
            elif op == "copy":
                dst = buf[st.dst]
                dst[:] = buf[st.src][:, st.offset : st.offset + dst.shape[1]]
            elif op == "gelu":
                ops.gelu(buf[st.src], buf[st.dst])
            elif op == "moe":
                self._moe(b, buf[st.src], buf[st.dst])
                prepared.clear()  # its matmuls used the backend's 8-bit scratch
            elif op == "add":
                buf[st.dst] += buf[st.other]
            elif op == "swiglu":
                ops.swiglu(buf[st.src], buf[st.other], buf[st.dst])
            elif op == "geglu":
                ops.geglu(buf[st.src], buf[st.other], buf[st.dst])
            elif op == "scale":
                buf[st.dst] *= np.float32(st.factor)
            else:
                raise ValueError(f"unknown step {op!r}")
            prepared.pop(st.dst, None)  # written: a prepared form of it is stale

    def _moe(self, b: Bound, x: np.ndarray, out: np.ndarray) -> None:
        """out (n, n_out) = sum over each token's chosen experts of weight * expert(x); only those experts' rows are read."""
        st, ops = b.step, self.backend
        n = len(x)
        logits = ops.matmul(b.weight, x, np.empty((n, st.experts), np.float32))
        if b.bias is not None:
            logits += b.bias
        if st.gating == "softmax":                                                         # ggml_soft_max, then top-k
            probs = _softmax(logits)
            chosen = np.argsort(-probs, axis=1, kind="stable")[:, : st.used]               # (n, used)
            weights = np.take_along_axis(probs, chosen, axis=1)
        else:                                                                              # top-k logits, their softmax
            chosen = np.argsort(-logits, axis=1, kind="stable")[:, : st.used]
            weights = _softmax(np.take_along_axis(logits, chosen, axis=1))
        if st.norm_weights:
            weights = weights / np.maximum(weights.sum(axis=1, keepdims=True), np.float32(6.103515625e-5))
        out[:] = 0.0
        for e, (gate, up, down) in enumerate(b.experts):
            rows, slot = np.nonzero(chosen == e)
            if len(rows) == 0:
                continue
            xe = np.ascontiguousarray(x[rows])
            prepared = ops.prepare(xe)
            g = ops.matmul(gate, prepared, np.empty((len(rows), st.n_ff), np.float32))
            u = ops.matmul(up, prepared, np.empty((len(rows), st.n_ff), np.float32))
            if b.expert_biases is not None:
                g += b.expert_biases[e][0]
                u += b.expert_biases[e][1]
            if st.act == "oai":   # gpt-oss: x = min(gate, 7), y = clamp(up, -7, 7), x * sigmoid(1.702 x) * (y + 1)
                gx = np.minimum(g, np.float32(7.0))
                f = (gx / (np.float32(1.0) + np.exp(np.float32(-1.702) * gx))
                     * (np.clip(u, np.float32(-7.0), np.float32(7.0)) + np.float32(1.0))).astype(np.float32)
            else:
                f = ops.swiglu(g, u, np.empty_like(g))
            d = ops.matmul(down, f, np.empty((len(rows), out.shape[1]), np.float32))
            if b.expert_biases is not None:
                d += b.expert_biases[e][2]
            out[rows] += weights[rows, slot][:, None] * d

    def _logits(self, x, h, logits_for, out):
        if logits_for is None:
            return None
        c, ops = self.config, self.backend
        rows = x if logits_for == "all" else x[-1:]                                      # (n or 1, n_embd)
        if self.output_layernorm:
            normed = ops.layernorm(rows, self.output_norm, self.output_norm_bias, c.layer_norm_eps, h[: len(rows)])
        else:
            normed = ops.rmsnorm(rows, self.output_norm, c.norm_eps, h[: len(rows)])
        y = ops.matmul(self.output, normed, out)
        if self.output_bias_vec is not None:
            y += self.output_bias_vec
        if c.logit_scale:
            y *= np.float32(1.0) / np.float32(c.logit_scale)
        if c.final_softcap:
            cap = np.float32(c.final_softcap)
            np.multiply(np.tanh(y * (np.float32(1.0) / cap)), cap, out=y)
        return y

    def _decode_fused(self, tokens, cache: KVCache, s: RunState, logits_for, out):
        start = cache.n_past
        x = s.buffers["x"][:1]
        self._embed(tokens, x)
        self._fused(cache, start, self.rope_tables(start, 1), s)
        cache.n_past = start + 1
        return self._logits(x, s.buffers["h"][:1], logits_for, out)


def _softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (n, m) float32, in float32."""
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def _expert(t: Tensor, e: int) -> Tensor:
    """Expert e's matrix of a stacked (n_expert, rows, n_per_row) tensor, a view of the mapped file."""
    rows = t.shape[1]
    data = t.data[e * rows : (e + 1) * rows]
    return Tensor(f"{t.name}[{e}]", t.type, t.shape[1:], t.offset + e * data.nbytes, data.nbytes, data)


class _TensorLoader:
    """Looks tensors up by name, checks their shapes and types, and that the model uses every one:
    any tensor left unread fails the load, naming it (a file with a tensor we ignore would give
    plausible garbage)."""

    def __init__(self, gguf: GGUFFile):
        self.gguf, self.used = gguf, set()

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

    def tensor(self, name: str, shape: tuple[int, ...]) -> Tensor:
        t = self._get(name)
        if tuple(t.shape) != shape:
            raise GGUFError(f"{self.gguf.path}: tensor '{name}' has shape {tuple(t.shape)}, expected {shape}")
        return t

    def matrix(self, name: str, shape: tuple[int, int]) -> Tensor:
        t = self._get(name)
        if tuple(t.shape) != shape:
            raise GGUFError(f"{self.gguf.path}: tensor '{name}' has shape {tuple(t.shape)}, expected {shape}")
        return t

    def vector(self, name: str, size: int, optional: bool = False, flat: bool = False) -> np.ndarray | None:
        """A small tensor as float32; optional: None where the file has none (llama.cpp's TENSOR_NOT_REQUIRED);
        flat: any shape of size elements, flattened."""
        if optional and name not in self.gguf.tensors:
            return None
        t = self._get(name)
        if flat and int(np.prod(t.shape)) == size:
            return dequantize(t.data, t.type).astype(np.float32).reshape(-1)
        if tuple(t.shape) != (size,):
            raise GGUFError(f"{self.gguf.path}: tensor '{name}' has shape {tuple(t.shape)}, expected ({size},)")
        return dequantize(t.data, t.type).astype(np.float32)  # small: norms and biases live in RAM as float32
