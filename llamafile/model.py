"""Model: a loaded GGUF with its tokenizer, architecture and one context (KV cache)."""
from __future__ import annotations

import os
from typing import Iterator, Sequence

import numpy as np

from weights.gguf import GGUFError, GGUFFile

from .backend import BACKENDS
from .config import ModelConfig
from .errors import ContextOverflowError
from .generate import generate
from .models import ARCHITECTURES
from .models.transformer import KVCache, RunState
from .sampling import Sampler
from .tokenizers import for_model as tokenizer_for

DEFAULT_N_CTX = 4096
N_BATCH = 256  # tokens evaluated together; longer prompts go in batches of this size. 256, not 512: the
               # batch's activations are half the memory (Llama-1B: 47 MB less at peak), and a prompt is as
               # fast or faster (a 512-token prompt, 2 threads, Zen 4, fresh processes alternating: Llama-1B
               # Q4_K_M 156-165 tok/s either way, F16 83-89 -> 94-99, Gemma-1B Q4_K_M 184-205 -> 210-216)
WARMUP_TOKENS = 17  # Model.warmup's prompt: a batch of 16, the size from which every batch kernel is taken


class Model:
    def __init__(self, gguf: GGUFFile, n_ctx: int | None = None, backend="numba"):
        self.gguf = gguf
        arch_name = gguf.require("general.architecture")
        arch = ARCHITECTURES.get(arch_name)
        if arch is None:
            raise GGUFError(f"{gguf.path}: unknown architecture '{arch_name}' "
                            f"(supported: {', '.join(sorted(ARCHITECTURES))})")
        self.config = arch.read_config(gguf)
        self.tokenizer = tokenizer_for(gguf)
        self.backend = BACKENDS[backend]() if isinstance(backend, str) else backend
        self.net = arch(gguf, self.config, self.backend)
        self.n_ctx = min(n_ctx or DEFAULT_N_CTX, self.config.n_ctx_train)
        self.net.set_context(self.n_ctx)
        self.cache = KVCache.allocate(self.config, self.n_ctx)
        self.tokens: list[int] = []  # the ids whose keys and values the cache holds
        self.state = RunState(self.config, n_batch=min(N_BATCH, self.n_ctx), buffers=self.net.widths)
        self.backend.allocate(self.state.n_batch, self.config.n_head, self.n_ctx, self.config.rope_dim)

    @property
    def n_params(self) -> int:
        return sum(int(np.prod(t.shape)) for t in self.gguf.tensors.values())

    @property
    def weight_format(self) -> str:
        """The file's type as llama.cpp names it (general.file_type), e.g. 'Q4_1'."""
        from gguf import LlamaFileType
        try:
            return LlamaFileType(int(self.gguf.get("general.file_type"))).name.removeprefix("MOSTLY_").replace("ALL_", "")
        except (TypeError, ValueError):
            return "unknown"

    # --- text <-> ids -------------------------------------------------------------
    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = False) -> list[int]:
        return self.tokenizer.tokenize(text, add_special=add_special, parse_special=parse_special)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.tokenizer.detokenize(ids)

    def is_eog(self, token: int) -> bool:
        return token in self.tokenizer.eog_ids

    # --- evaluation ---------------------------------------------------------------
    @property
    def n_past(self) -> int:
        return self.cache.n_past

    def reset(self) -> None:
        self.truncate(0)

    def truncate(self, n: int) -> None:
        """Keep the first n tokens of the context (their keys and values stay valid)."""
        self.cache.n_past = n
        del self.tokens[n:]

    def eval(self, ids: Sequence[int], all_logits: bool = False) -> np.ndarray:
        """Append ids to the context; logits of all of them (n, n_vocab), or of the last one
        (n_vocab,): a view into the run state that the next eval overwrites."""
        tokens = self._check_ids(ids)
        n_before = self.n_past
        try:
            logits = self.net.forward(tokens, self.cache, self.state, all_logits=all_logits)
        except BaseException:  # e.g. Ctrl-C mid-batch: the context stays as it was
            self.truncate(n_before)
            raise
        self.tokens.extend(int(t) for t in tokens)
        return logits if all_logits else logits[-1]

    def eval_prompt(self, ids: Sequence[int]) -> np.ndarray:
        """Logits after ids (n_vocab,), reusing the longest prefix of ids the context already holds.

        A chat's next turn, or a server request sharing a system prompt, evaluates only what is new.
        The last token goes through the one-token path, alone (the kernels give it the same bits in a
        batch: this only keeps the prompt's last logits in the same buffer as a decoded token's).
        """
        ids = [int(t) for t in ids]
        common = 0
        for a, b in zip(self.tokens, ids[:-1]):  # keep at least one token to evaluate
            if a != b:
                break
            common += 1
        self.truncate(common)
        if len(ids) - common > 1:
            self.eval(ids[common:-1])
        return self.eval(ids[-1:])

    def warmup(self, n_tokens: int = WARMUP_TOKENS, sampling=None) -> None:
        """Evaluate n_tokens tokens the way a prompt of that length is evaluated (all but the last in
        one batch, then the last alone) and forget them, so the kernels that path takes are compiled,
        or loaded from Numba's cache, before anyone waits on them (llama.cpp warms up at load too).
        WARMUP_TOKENS takes every path a prompt can (panels and blocked attention start at 16 tokens),
        so a longer prompt warms up as that many; the CLI passes its prompt's length, so a one-token
        prompt compiles only the one-token path. sampling: SamplingParams whose candidate selection
        (top-k) is warmed up too."""
        token = self.tokenizer.bos_id or 0
        n = max(1, min(n_tokens, WARMUP_TOKENS, self.n_ctx))
        self.reset()
        try:
            if n > 1:
                self.eval([token] * (n - 1))
            logits = self.eval([token])
            if sampling is not None and sampling.temperature > 0:
                from .sampling import truncate
                truncate(logits, sampling)
        finally:
            self.reset()

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """float32 (len(ids), n_vocab): one evaluation from an empty cache."""
        self.reset()
        return self.eval(ids, all_logits=True)

    def generate(self, ids: Sequence[int], max_tokens: int = 128, temperature: float = 0.0,
                 seed: int | None = None) -> Iterator[int]:
        """Token ids continuing ids; temperature 0 is greedy."""
        return generate(self, ids, Sampler(temperature, seed), max_tokens)

    def _check_ids(self, ids: Sequence[int]) -> np.ndarray:
        tokens = np.asarray(ids, dtype=np.int64).reshape(-1)
        if len(tokens) == 0:
            raise ValueError("nothing to evaluate: no tokens")
        if tokens.min() < 0 or tokens.max() >= self.config.n_vocab:
            raise ValueError(f"token id out of range 0..{self.config.n_vocab - 1}")
        if self.cache.n_past + len(tokens) > self.n_ctx:
            raise ContextOverflowError(
                f"{self.cache.n_past + len(tokens)} tokens do not fit the context of {self.n_ctx} (use a larger -c)")
        return tokens


def load(path: str | os.PathLike, *, n_ctx: int | None = None, offset: int = 0, size: int | None = None,
         backend="numba") -> Model:
    """Map a GGUF file (or one embedded at offset in a larger file) and get it ready to run.

    backend: "numba" (the kernels) or "numpy" (the slow reference), or a backend object.
    """
    return Model(GGUFFile(path, offset=offset, size=size), n_ctx=n_ctx, backend=backend)
