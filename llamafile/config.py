"""ModelConfig: the hyper-parameters of a model, read from its GGUF keys."""
from __future__ import annotations

from dataclasses import dataclass

from weights.gguf import GGUFError, GGUFFile


@dataclass(frozen=True)
class ModelConfig:
    arch: str            # general.architecture, e.g. "llama"
    name: str            # general.name
    n_layer: int         # {arch}.block_count
    n_embd: int          # {arch}.embedding_length
    n_ff: int            # {arch}.feed_forward_length
    n_head: int          # {arch}.attention.head_count
    n_head_kv: int       # {arch}.attention.head_count_kv
    head_dim: int        # {arch}.attention.key_length, else n_embd / n_head
    rope_dim: int        # {arch}.rope.dimension_count, else head_dim
    rope_base: float     # {arch}.rope.freq_base
    norm_eps: float      # {arch}.attention.layer_norm_rms_epsilon (layer_norm_epsilon where a model has only that)
    n_ctx_train: int     # {arch}.context_length
    n_vocab: int         # length of tokenizer.ggml.tokens
    layer_norm_eps: float = 0.0  # {arch}.attention.layer_norm_epsilon (LayerNorm models)
    rope_scale: float = 1.0      # 1 / {arch}.rope.scaling.factor (linear scaling; 1 without)
    # read by the architectures that use them (their read_config), as llama.cpp does:
    n_swa: int = 0               # {arch}.attention.sliding_window: keys a sliding-window layer sees (0: none)
    swa_layers: tuple = ()       # per layer: True where the layer attends through the sliding window
    rope_base_swa: float = 10000.0   # {arch}.rope.freq_base_swa: the sliding-window layers' rope base
    attn_scale: float = 0.0      # the attention scores' scale (0: 1/sqrt(head_dim))
    attn_softcap: float = 0.0    # {arch}.attn_logit_softcapping where the architecture uses it (gemma2; 0: none)
    embed_scale: float = 0.0     # the embeddings' scale (0: none; gemma: sqrt(n_embd))
    final_softcap: float = 0.0   # {arch}.final_logit_softcapping: logits = cap * tanh(logits / cap) (0: none)
    logit_scale: float = 0.0     # {arch}.logit_scale: logits /= logit_scale (granite; 0: none)
    residual_scale: float = 0.0  # {arch}.residual_scale: a block half's output *= it before the add (granite)
    n_expert: int = 0            # {arch}.expert_count: experts per mixture-of-experts FFN (0: dense)
    n_expert_used: int = 0       # {arch}.expert_used_count: experts each token runs through
    n_ff_exp: int = 0            # an expert's FFN width (qwen3moe: expert_feed_forward_length; else n_ff)
    use_rope: bool = True        # False: no layer rotates (granite without rope.scaling.finetuned)

    @classmethod
    def from_gguf(cls, gguf: GGUFFile) -> "ModelConfig":
        arch = str(gguf.require("general.architecture"))

        def key(name: str, default=None):
            value = gguf.get(f"{arch}.{name}", default)
            if value is None:
                raise GGUFError(f"{gguf.path}: missing key '{arch}.{name}'")
            return value

        n_embd, n_head = int(key("embedding_length")), int(key("attention.head_count"))
        if n_head <= 0 or n_embd % n_head:
            raise GGUFError(f"{gguf.path}: embedding_length {n_embd} is not a multiple of head_count {n_head}")
        head_dim = int(key("attention.key_length", n_embd // n_head))
        config = cls(
            arch=arch,
            name=str(gguf.get("general.name", arch)),
            n_layer=int(key("block_count")),
            n_embd=n_embd,
            n_ff=int(key("feed_forward_length")),
            n_head=n_head,
            n_head_kv=int(key("attention.head_count_kv", n_head)),
            head_dim=head_dim,
            rope_dim=int(key("rope.dimension_count", head_dim)),
            rope_base=float(key("rope.freq_base", 10000.0)),
            norm_eps=float(key("attention.layer_norm_rms_epsilon")
                           if gguf.get(f"{arch}.attention.layer_norm_rms_epsilon") is not None
                           else key("attention.layer_norm_epsilon")),
            layer_norm_eps=float(gguf.get(f"{arch}.attention.layer_norm_epsilon", 0.0) or 0.0),
            n_ctx_train=int(key("context_length")),
            n_vocab=len(gguf.require("tokenizer.ggml.tokens")),
            rope_scale=_rope_scale(gguf, arch),
            n_expert=int(gguf.get(f"{arch}.expert_count", 0) or 0),
            n_expert_used=int(gguf.get(f"{arch}.expert_used_count", 0) or 0),
        )
        config.check(gguf.path)
        return config

    def check(self, path) -> None:
        """Reject numbers no model has, before any array is sized from them."""
        positive = ("n_layer", "n_embd", "n_ff", "n_head", "n_head_kv", "head_dim", "rope_dim", "n_ctx_train", "n_vocab")
        for field in positive:
            if getattr(self, field) <= 0:
                raise GGUFError(f"{path}: {field} = {getattr(self, field)} must be positive")
        if self.n_head % self.n_head_kv:
            raise GGUFError(f"{path}: head_count {self.n_head} is not a multiple of head_count_kv {self.n_head_kv}")
        if self.rope_dim > self.head_dim or self.rope_dim % 2:
            raise GGUFError(f"{path}: rope dimension {self.rope_dim} does not fit head size {self.head_dim}")


def _rope_scale(gguf: GGUFFile, arch: str) -> float:
    """llama.cpp's rope_freq_scale_train: 1 / rope.scaling.factor (0 or absent: 1). Only linear scaling here."""
    factor = float(gguf.get(f"{arch}.rope.scaling.factor", 0.0) or 0.0)
    kind = str(gguf.get(f"{arch}.rope.scaling.type", "linear"))
    if factor in (0.0, 1.0):
        return 1.0
    if kind != "linear":
        raise GGUFError(f"{gguf.path}: rope scaling '{kind}' is not supported yet")
    return 1.0 / factor
