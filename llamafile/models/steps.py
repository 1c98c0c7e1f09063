"""The vocabulary an architecture writes its block in: a short list of steps with operands.

An architecture file says, per layer, which steps its block takes, on named activation buffers
("x" the residual stream, "h", "q", "k", "v", "att", "proj", "gate", "up", "ffn", ...) and named
tensors of the file ("attn_q" is blk.N.attn_q.weight). That one list is all there is of the
forward pass: llamafile.models.transformer loads the tensors it names and runs it step by step
through the backend (prompts, and the numpy reference), and llamafile.models.fused turns the same
list into integer tables that one jitted call interprets for every block of a decode step.

    norm(src, weight, dst)            dst = rmsnorm(src) * blk.N.<weight>.weight   (per_head: each head alone)
    layernorm(src, weight, dst, bias) dst = layernorm(src) * weight (+ blk.N.<weight>.bias where present, if bias)
    matmul(weight, src, dst, bias)    dst = W src (+ blk.N.<weight>.bias where the file has one, if bias)
    rope(buf, table)                  rotate buf's heads by angle table 0 (rope.freq_base) or 1 (the
                                      sliding-window layers' base)
    store_kv(k, v)                    append k, v to this layer's cache (as halves, as llama.cpp's)
    attention(q, dst, window, scale, softcap)  causal attention of q over the cache (window > 0: sliding;
                                      softcap > 0: scores softcapped)
    copy(src, dst, offset)            dst = src[:, offset : offset + width(dst)]  (splitting fused projections)
    gelu(src, dst)                    dst = gelu(src)
    moe(src, dst, experts, used, n_ff, norm_weights)
                                      mixture of experts: softmax router (ffn_gate_inp), the top `used`
                                      experts' SwiGLU FFNs (ffn_{gate,up,down}_exps), weighted sum
                                      (weights renormalised over the chosen ones with norm_weights)
    add(dst, src)                     dst += src
    swiglu(gate, up, dst)             dst = silu(gate) * up
    geglu(gate, up, dst)              dst = gelu(gate) * up (tanh approximation)
    scale(buf, factor)                buf *= factor
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Step:
    op: str
    src: str = ""          # the buffer read (norm, matmul, rope, attention, add, swiglu/geglu's gate, store_kv's k)
    dst: str = ""          # the buffer written (norm, matmul, attention, add, swiglu/geglu)
    other: str = ""        # a second input: add's addend, swiglu/geglu's up, store_kv's v
    weight: str = ""       # norm, matmul: the tensor's kind, e.g. "attn_q" for blk.N.attn_q.weight
    bias: bool = False     # matmul: the file may have blk.N.<weight>.bias (read where present)
    per_head: bool = False # norm: normalise each head (head_dim values) on its own (q/k norms)
    table: int = 0         # rope: angle table 0 (global) or 1 (sliding-window layers)
    window: int = 0        # attention: keys a query sees (0: all before it)
    factor: float = 0.0    # attention: score scale (0: 1/sqrt(head_dim)); scale: the factor
    cap: float = 0.0       # attention: softcap of the scores (0: none)
    offset: int = 0        # copy: the first column of src copied
    experts: int = 0       # moe: experts in the file, used per token, their FFN width, renormalise the weights
    used: int = 0
    n_ff: int = 0
    norm_weights: bool = False
    sinks: bool = False    # attention: blk.N.attn_sinks.weight, a logit per head in the softmax's denominator
    gating: str = "softmax"  # moe: "softmax" (of all router logits) or "softmax_weight" (of the chosen ones)
    act: str = "silu"        # moe: "silu" (SwiGLU) or "oai" (gpt-oss's clamped SwiGLU, alpha 1.702, limit 7)


def norm(src: str, weight: str, dst: str, per_head: bool = False) -> Step:
    return Step("norm", src=src, dst=dst, weight=weight, per_head=per_head)


def layernorm(src: str, weight: str, dst: str, bias: bool = True, per_head: bool = False) -> Step:
    """per_head: each head normalised on its own, then scaled by the weight over all heads (no bias)."""
    return Step("layernorm", src=src, dst=dst, weight=weight, bias=bias and not per_head, per_head=per_head)


def matmul(weight: str, src: str, dst: str, bias: bool = False) -> Step:
    return Step("matmul", src=src, dst=dst, weight=weight, bias=bias)


def rope(buf: str, table: int = 0) -> Step:
    return Step("rope", src=buf, dst=buf, table=table)


def store_kv(k: str, v: str) -> Step:
    return Step("store_kv", src=k, other=v)


def attention(q: str, dst: str, window: int = 0, scale: float = 0.0, softcap: float = 0.0,
              sinks: bool = False) -> Step:
    return Step("attention", src=q, dst=dst, window=window, factor=scale, cap=softcap, sinks=sinks)


def copy(src: str, dst: str, offset: int) -> Step:
    return Step("copy", src=src, dst=dst, offset=offset)


def moe(src: str, dst: str, experts: int, used: int, n_ff: int, norm_weights: bool, gating: str = "softmax",
        act: str = "silu", bias: bool = False) -> Step:
    """bias: the router and every expert matrix have biases (gpt-oss)."""
    return Step("moe", src=src, dst=dst, experts=experts, used=used, n_ff=n_ff, norm_weights=norm_weights,
                gating=gating, act=act, bias=bias)


def gelu(src: str, dst: str) -> Step:
    return Step("gelu", src=src, dst=dst)


def add(dst: str, src: str) -> Step:
    return Step("add", src=dst, dst=dst, other=src)


def swiglu(gate: str, up: str, dst: str) -> Step:
    return Step("swiglu", src=gate, other=up, dst=dst)


def geglu(gate: str, up: str, dst: str) -> Step:
    return Step("geglu", src=gate, other=up, dst=dst)


def scale(buf: str, factor: float) -> Step:
    return Step("scale", src=buf, dst=buf, factor=factor)


def attention_block(bias_qkv: bool = False, bias_out: bool = False, qk_norm: bool | str = False, table: int = 0,
                    window: int = 0, scale: float = 0.0, rope_q_k: bool = True, softcap: float = 0.0,
                    src: str = "h", sinks: bool = False) -> list[Step]:
    """The attention half most architectures share, from src (normalised x) to proj.
    qk_norm: True (RMSNorm per head), "whole" (over all of q and k, OLMo 2)."""
    steps = [matmul("attn_q", src, "q", bias_qkv), matmul("attn_k", src, "k", bias_qkv),
             matmul("attn_v", src, "v", bias_qkv)]
    if qk_norm:
        per_head = qk_norm != "whole"
        steps += [norm("q", "attn_q_norm", "q", per_head=per_head), norm("k", "attn_k_norm", "k", per_head=per_head)]
    if rope_q_k:
        steps += [rope("q", table), rope("k", table)]
    return steps + [store_kv("k", "v"), attention("q", "att", window, scale, softcap, sinks),
                    matmul("attn_output", "att", "proj", bias_out)]


def gated_ffn(act=swiglu, bias: bool = False, src: str = "h", dst: str = "proj") -> list[Step]:
    """gate/up/down from src to dst: act(W_gate src) * W_up src, then W_down."""
    return [matmul("ffn_gate", src, "gate", bias), matmul("ffn_up", src, "up", bias), act("gate", "up", "ffn"),
            matmul("ffn_down", "ffn", dst, bias)]


def fused_gated_ffn(n_ff: int, act=swiglu, src: str = "h", dst: str = "proj") -> list[Step]:
    """Phi-3 / GLM-4: one ffn_up matrix of 2 n_ff rows, gate first then up (ggml_swiglu's split)."""
    return [matmul("ffn_up", src, "gateup"), copy("gateup", "gate", 0), copy("gateup", "up", n_ff),
            act("gate", "up", "ffn"), matmul("ffn_down", "ffn", dst)]


def plain_ffn(bias: bool = True, src: str = "h", dst: str = "proj") -> list[Step]:
    """up, gelu, down (StarCoder 2, Phi-2)."""
    return [matmul("ffn_up", src, "up", bias), gelu("up", "ffn"), matmul("ffn_down", "ffn", dst, bias)]
