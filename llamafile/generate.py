"""Generation: the one generator of token ids, and the one text loop on top of it (end of
generation, stop strings, the token limit) that the CLI, chat and server all consume."""
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
    (a chat's next turn); the kernels are batch-invariant, so the ids are the same either way.
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


class StopText:
    """The reply's text, held back while its end could be the start of a stop string.

    add(piece) -> (text that is safe to send now, the stop string found or None); the text
    from a stop string on is dropped.
    """

    def __init__(self, stops: Sequence[str] = ()):
        self.stops = [s for s in stops if s]
        self.text, self.sent = "", 0

    def add(self, piece: str) -> tuple[str, str | None]:
        before = len(self.text)
        self.text += piece
        found, at = None, len(self.text)
        for s in self.stops:
            i = self.text.find(s, max(0, before - len(s) + 1))
            if 0 <= i < at:
                found, at = s, i
        if found is not None:
            self.text = self.text[:at]
            return self._send(len(self.text)), found
        return self._send(len(self.text) - self._held()), None

    def flush(self) -> str:
        return self._send(len(self.text))

    def _held(self) -> int:
        """Length of the longest end of the text that begins some stop string."""
        held = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(self.text)), held, -1):
                if self.text.endswith(s[:k]):
                    held = k
                    break
        return held

    def _send(self, upto: int) -> str:
        out = self.text[self.sent:upto]
        self.sent = max(self.sent, upto)
        return out


class TextGeneration:
    """Text pieces of a reply: sampled ids decoded to whole characters, ending at an
    end-of-generation id (unless ignore_eos), a stop string (not returned), max_tokens or a
    full context. step() advances one token; iterating gives every piece.

    After the end: finish_reason ("stop" or "length"), stopping_word, eog, n_generated.
    `last_token` is the id the latest step sampled (None for the final flush).
    """

    def __init__(self, model, prompt_ids: Sequence[int], sampler, max_tokens: int, *,
                 stops: Sequence[str] = (), ignore_eos: bool = False, reuse_prefix: bool = False):
        self.model, self.max_tokens, self.ignore_eos = model, max_tokens, ignore_eos
        self.tokens = generate(model, prompt_ids, sampler, max_tokens, stop_at_eog=not ignore_eos,
                               reuse_prefix=reuse_prefix)
        self.decoder = model.tokenizer.decoder(continuation=True)  # a reply keeps the space its first token starts with
        self.stop_text = StopText(stops)
        self.n_generated = 0
        self.generated: list[int] = []
        self.finish_reason: str | None = None
        self.stopping_word, self.eog = "", False
        self.last_token: int | None = None

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def step(self) -> str:
        """One token: the text it makes safe to send ("" while held back or at the end)."""
        if self.done:
            return ""
        self.last_token = None
        try:
            token = next(self.tokens)
        except StopIteration:  # the context is full (or max_tokens was 0)
            return self._finish("length")
        self.last_token = token
        if self.model.is_eog(token) and not self.ignore_eos:
            self.eog = True
            return self._finish("stop")
        self.n_generated += 1
        self.generated.append(int(token))
        text, stop = self.stop_text.add(self.decoder.feed(token))
        if stop is not None:
            self.stopping_word = stop
            return text + self._finish("stop", flush=False)
        if self.n_generated >= self.max_tokens or self.model.n_past >= self.model.n_ctx:
            return text + self._finish("length")
        return text

    def _finish(self, reason: str, flush: bool = True) -> str:
        text = ""
        if flush:
            text, stop = self.stop_text.add(self.decoder.flush())
            if stop:
                reason, self.stopping_word = "stop", stop
            else:
                text += self.stop_text.flush()
        self.finish_reason = reason
        self.close()
        return text

    def close(self) -> None:
        self.tokens.close()

    def __iter__(self) -> Iterator[str]:
        try:
            while not self.done:
                piece = self.step()
                if piece:
                    yield piece
        finally:
            self.close()

    @property
    def text(self) -> str:
        return self.stop_text.text
