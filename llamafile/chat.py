"""Chat prompts: the GGUF's tokenizer.chat_template rendered the way Hugging Face's
`apply_chat_template` renders it (sandboxed jinja2, trim_blocks, lstrip_blocks)."""
from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

# For models whose file carries no template.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class ChatTemplateError(ValueError):
    """The template could not be rendered for these messages."""


def _raise_exception(message: str):
    raise ChatTemplateError(message)


def _tojson(value, indent=None, ensure_ascii=False, sort_keys=False):
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii, sort_keys=sort_keys)


@lru_cache(maxsize=8)
def _compile(source: str):
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(source)


def render_chat(template: str | None, messages: list[dict], *, bos_token: str = "", eos_token: str = "",
                add_generation_prompt: bool = True, **extra) -> str:
    """messages: [{"role": ..., "content": ...}] -> the prompt text the model was trained on."""
    try:
        return _compile(template or CHATML_TEMPLATE).render(
            messages=messages, add_generation_prompt=add_generation_prompt,
            bos_token=bos_token, eos_token=eos_token, **extra)
    except ChatTemplateError:
        raise
    except TemplateError as e:
        raise ChatTemplateError(f"chat template: {e}") from None


class ChatSession:
    """A conversation with one model: renders the template, keeps the KV cache across turns.

    Each turn renders the whole conversation; the model re-uses the prefix its cache already
    holds, so only the new turn is evaluated. When the conversation no longer fits the
    context, the oldest turns are dropped (the system message stays) and `notice` says so.
    """

    def __init__(self, model, sampler, *, system: str | None = None, max_reply: int = -1,
                 notice=lambda message: None):
        self.model, self.sampler, self.system = model, sampler, system
        self.max_reply, self.notice = max_reply, notice
        self.template = model.gguf.get("tokenizer.chat_template")
        tok = model.tokenizer
        self.bos = tok.token_text(tok.bos_id) if tok.bos_id is not None else ""
        self.eos = tok.token_text(tok.eos_id) if tok.eos_id is not None else ""
        self.messages: list[dict] = []
        self.reset()

    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.system}] if self.system else []
        if hasattr(self.sampler, "reset"):
            self.sampler.reset()

    def prompt_ids(self) -> list[int]:
        prompt = render_chat(self.template, self.messages, bos_token=self.bos, eos_token=self.eos)
        return self.model.tokenize(prompt, add_special=True, parse_special=True)

    def reply(self, text: str):
        """Add the user's message and stream the reply as text pieces (whole characters).

        The reply so far joins the conversation even when the caller stops early (close()).
        """
        from .generate import TextGeneration

        self.messages.append({"role": "user", "content": text})
        ids = self._fit_context()
        room = self.model.n_ctx - len(ids)
        max_tokens = room if self.max_reply < 0 else min(self.max_reply, room)
        reply = TextGeneration(self.model, ids, self.sampler, max_tokens, reuse_prefix=True)
        try:
            yield from reply
        finally:
            self.messages.append({"role": "assistant", "content": reply.text})

    def _fit_context(self) -> list[int]:
        """The prompt ids, after dropping the oldest turns until a reply has room."""
        from .errors import ContextOverflowError

        reserve = min(256, self.model.n_ctx // 4) if self.max_reply < 0 else min(self.max_reply, self.model.n_ctx // 2)
        dropped = 0
        while True:
            ids = self.prompt_ids()
            if len(ids) + reserve <= self.model.n_ctx:
                break
            first = 1 if self.messages and self.messages[0]["role"] == "system" else 0
            if len(self.messages) - first <= 1:
                self.messages.pop()
                raise ContextOverflowError(f"the message is {len(ids)} tokens, too long for the context of "
                                           f"{self.model.n_ctx} (use a larger -c)")
            del self.messages[first]
            dropped += 1
            while len(self.messages) - first > 1 and self.messages[first]["role"] != "user":
                del self.messages[first]  # a conversation resumes with a user turn
                dropped += 1
        if dropped:
            self.notice(f"context full: dropped the {dropped} oldest message{'s' if dropped > 1 else ''}")
        return ids
