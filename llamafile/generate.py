"""Generation: the one generator of token ids that the CLI, chat and server all consume."""
from __future__ import annotations

from typing import Callable, Iterator, Sequence

import numpy as np


def generate(model, prompt_ids: Sequence[int], sampler: Callable[[np.ndarray], int],
             max_tokens: int, keep_cache: bool = False) -> Iterator[int]:
    """Evaluate the prompt, then yield sampled ids one at a time.

    Stops after max_tokens, after an end-of-generation id (which is yielded), or when the
    context is full. With keep_cache, the prompt continues what the cache already holds.
    """
    if not keep_cache:
        model.reset()
    logits = model.eval(prompt_ids)
    for _ in range(max_tokens):
        token = sampler(logits)
        yield token
        if model.is_eog(token) or model.n_past >= model.n_ctx:
            return
        logits = model.eval([token])
