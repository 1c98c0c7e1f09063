"""Generation: the one generator of token ids that the CLI, chat and server all consume."""
from __future__ import annotations

from typing import Callable, Iterator, Sequence

import numpy as np


def generate(model, prompt_ids: Sequence[int], sampler: Callable[[np.ndarray], int],
             max_tokens: int, stop_at_eog: bool = True, reuse_prefix: bool = False) -> Iterator[int]:
    """Evaluate the prompt, then yield sampled ids.

    Stops after max_tokens, after an end-of-generation id (which is yielded), or when the
    context is full. With stop_at_eog=False, end-of-generation ids are never sampled
    (llama.cpp's --ignore-eos). A sampler with accept() sees the prompt and every id drawn.

    With reuse_prefix, the part of the prompt the context already holds is not evaluated again
    (a chat's next turn). Results can then differ in the last bits from a fresh evaluation,
    so by default the context starts empty and the same call gives the same ids.
    """
    accept = getattr(sampler, "accept", None)
    if accept is not None:
        sampler.reset()
        for token in prompt_ids:
            accept(token)
    banned = np.fromiter(model.tokenizer.eog_ids, dtype=np.int64) if not stop_at_eog else None
    if not reuse_prefix:
        model.reset()
    logits = model.eval_prompt(prompt_ids)
    for _ in range(max_tokens):
        if banned is not None and len(banned):
            logits[banned] = -np.inf  # a view the next eval overwrites
        token = sampler(logits)
        if accept is not None:
            accept(token)
        yield token
        if (stop_at_eog and model.is_eog(token)) or model.n_past >= model.n_ctx:
            return
        logits = model.eval([token])
