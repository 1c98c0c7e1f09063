"""Requests to prompt ids: chat messages through the model's template (tools, prefill,
continue_final_message), completion prompts (text, token ids, mixed, several), fill-in-the-middle."""
from __future__ import annotations

import asyncio

from ..chat import ChatTemplateError, render_chat
from . import tools as tool_calls
from .errors import invalid
from .runner import prepare_jobs, submit
from .validate import get_bool, get_messages, get_tool_choice, get_tools, is_integer


class ChatPrompt:
    """A chat request rendered: the prompt ids, the tools it offers, and the assistant text it continues."""

    def __init__(self, ids: list[int], text: str, tools, tool_choice, prefill: str = "", parallel: bool = True):
        self.ids, self.text, self.tools, self.tool_choice, self.prefill = ids, text, tools, tool_choice, prefill
        self.parallel = parallel  # parallel_tool_calls: false keeps only the first call

    def grammar(self, body: dict) -> str | None:
        """The constraint of a reply: the request's own, else a forced tool call's (tool_choice)."""
        from .grammar import request_grammar
        own = request_grammar(body)
        if own is not None or not self.tools:
            return own
        schema = tool_calls.forced_schema(self.tools, self.tool_choice)
        return request_grammar({"json_schema": schema}) if schema is not None else None

    def tool_calls(self, text: str) -> tuple[str, list[dict]]:
        """(content, calls) of a reply to this prompt."""
        if not self.tools:
            return text, []
        content, calls = tool_calls.parse_tool_calls(text, self.tools)
        return content, calls if self.parallel else calls[:1]


def render_messages(state, body: dict, messages: list[dict]) -> tuple[str, list, object, str]:
    """(prompt text, tools, tool_choice, prefill) for these messages.

    A last assistant message is continued (assistant prefill, llama-server's continue_final_message):
    the template renders the conversation up to it with the generation prompt, the prefill follows.
    Two assistant messages at the end are a 400."""
    tools = get_tools(body)
    tool_choice = get_tool_choice(body, tools)
    add_generation_prompt = get_bool(body, "add_generation_prompt", True)
    continue_final = get_bool(body, "continue_final_message", messages[-1]["role"] == "assistant")
    prefill = ""
    if len(messages) >= 2 and messages[-1]["role"] == "assistant" and messages[-2]["role"] == "assistant":
        raise invalid("the last two messages are both from the assistant: at most one trailing assistant "
                      "message can be continued", "messages")
    if continue_final:
        if messages[-1]["role"] != "assistant":
            raise invalid("'continue_final_message' needs a last message from the assistant", "continue_final_message")
        prefill = messages[-1]["content"]
        messages = messages[:-1]
        add_generation_prompt = True
    messages, extra = tool_calls.prepare_messages(messages, tools, tool_choice, state.template)
    kwargs = body.get("chat_template_kwargs")
    if kwargs is not None:
        if not isinstance(kwargs, dict):
            raise invalid("'chat_template_kwargs' must be an object", "chat_template_kwargs", "invalid_type")
        extra = {**{k: v for k, v in kwargs.items() if k not in ("messages", "add_generation_prompt")}, **extra}
    try:
        text = render_chat(state.template, messages, bos_token=state.bos, eos_token=state.eos,
                           add_generation_prompt=add_generation_prompt, **extra) if messages else ""
    except ChatTemplateError as e:
        raise invalid(f"the chat template cannot render these messages: {e}", "messages", "invalid_chat") from None
    except Exception as e:  # a template tripping over odd values (chat_template_kwargs, tool schemas)
        raise invalid(f"the chat template cannot render these messages: {type(e).__name__}: {e}", "messages",
                      "invalid_chat") from None
    return text + prefill, (tools if tool_choice != "none" else None), tool_choice, prefill


def chat_prompt(state, body: dict, messages: list[dict]) -> ChatPrompt:
    text, tools, tool_choice, prefill = render_messages(state, body, messages)
    ids = state.model.tokenize(text, add_special=True, parse_special=True)
    if not ids:
        raise invalid("the messages render to an empty prompt", "messages")
    return ChatPrompt(ids, text, tools, tool_choice, prefill, get_bool(body, "parallel_tool_calls", True))


def completion_prompts(state, body: dict, name: str = "prompt", many: bool = True) -> list[list[int]]:
    """"prompt": a string, a list of token ids, a list mixing ids and strings (llama.cpp), or a list of
    such prompts (several completions)."""
    v = body.get(name)
    if v is None:
        raise invalid(f"'{name}' is required", name, "missing_required_parameter")
    if isinstance(v, list) and v and any(is_integer(t) for t in v):
        prompts = [v]                        # token ids, maybe mixed with text: one prompt
    elif isinstance(v, list) and v:
        prompts = v                          # strings or lists of ids: one completion each
    else:
        prompts = [v]
    if not many and len(prompts) != 1:
        raise invalid(f"'{name}' must be one prompt here", name, "invalid_type")
    if len(prompts) > 16:
        raise invalid(f"'{name}' holds at most 16 prompts", name)
    return [one_prompt(state, p, name) for p in prompts]


def one_prompt(state, v, name: str) -> list[int]:
    if isinstance(v, str):
        ids = state.model.tokenize(v, add_special=True, parse_special=True)
    elif isinstance(v, list) and all(is_integer(t) or isinstance(t, str) for t in v):
        ids = []
        for i, part in enumerate(v):
            if isinstance(part, str):
                ids += state.model.tokenize(part, add_special=i == 0, parse_special=True)
            else:
                ids.append(int(part))
        check_token_ids(state, ids, name)
    else:
        raise invalid(f"'{name}' must be a string, a list of token ids (and strings), or a list of prompts",
                      name, "invalid_type")
    if not ids:
        raise invalid(f"'{name}' is empty", name)
    return ids


def check_token_ids(state, ids: list[int], name: str) -> None:
    n_vocab = state.model.config.n_vocab
    bad = next((t for t in ids if not 0 <= t < n_vocab), None)
    if bad is not None:
        raise invalid(f"'{name}': token id {bad} is out of range 0..{n_vocab - 1}", name)


# --- fill in the middle ------------------------------------------------------------------

FIM_NAMES = {"pre": ("<|fim_prefix|>", "<fim_prefix>", "<fim-prefix>", "<PRE>"),
             "suf": ("<|fim_suffix|>", "<fim_suffix>", "<fim-suffix>", "<SUF>"),
             "mid": ("<|fim_middle|>", "<fim_middle>", "<fim-middle>", "<MID>"),
             "rep": ("<|repo_name|>", "<reponame>"), "sep": ("<|file_sep|>", "<file_sep>")}


def fim_tokens(state) -> dict[str, int]:
    """The model's FIM token ids: from the GGUF's tokenizer.ggml.fim_*_token_id, else by their text."""
    tok, found = state.model.tokenizer, {}
    for key, names in FIM_NAMES.items():
        v = state.model.gguf.get(f"tokenizer.ggml.fim_{key}_token_id")
        if v is None:
            for n in names:
                try:
                    v = tok.token_to_id.get(n) if isinstance(tok.token_to_id, dict) else tok.token_to_id(n)
                except (KeyError, TypeError, ValueError):
                    v = None
                if v is not None:
                    break
        if v is not None:
            found[key] = int(v)
    return found


def infill_prompt(state, body: dict) -> list[int]:
    """llama-server's /infill: [extra context files] <PRE> prefix <SUF> suffix <MID> prompt."""
    fim = fim_tokens(state)
    if not all(k in fim for k in ("pre", "suf", "mid")):
        raise invalid("this model has no fill-in-the-middle tokens (FIM prefix, suffix, middle)", "input_prefix",
                      "not_supported")
    parts = {}
    for key in ("input_prefix", "input_suffix", "prompt"):
        v = body.get(key, "")
        if v is None:
            v = ""
        if not isinstance(v, str):
            raise invalid(f"'{key}' must be a string", key, "invalid_type")
        parts[key] = v
    extra = body.get("input_extra", [])
    if not isinstance(extra, list) or not all(isinstance(e, dict) and isinstance(e.get("text", ""), str)
                                              and isinstance(e.get("filename", ""), str) for e in extra):
        raise invalid("'input_extra' must be a list of {\"filename\", \"text\"}", "input_extra", "invalid_type")
    tokenize = lambda s: state.model.tokenize(s, add_special=False, parse_special=False)  # noqa: E731
    ids: list[int] = []
    if extra:
        if "rep" in fim:
            ids += [fim["rep"]] + tokenize("myproject\n")
        for e in extra:
            if "sep" in fim:
                ids += [fim["sep"]] + tokenize(e.get("filename", "") + "\n")
            ids += tokenize(e.get("text", ""))
        if "sep" in fim:
            ids += [fim["sep"]] + tokenize("filename\n")
    ids += [fim["pre"]] + tokenize(parts["input_prefix"])
    ids += [fim["suf"]] + tokenize(parts["input_suffix"])
    ids += [fim["mid"]] + tokenize(parts["prompt"])
    return ids


async def start_chat(state, chat: dict, **options):
    """A chat request (OpenAI's form) -> (its prompt, rendered off the event loop; its jobs; their events,
    submitted). options go to prepare_jobs (n, logprobs)."""
    prompt = await asyncio.to_thread(chat_prompt, state, chat, get_messages(chat))
    jobs = await prepare_jobs(state, chat, [prompt.ids], native=False, grammar=prompt.grammar(chat), **options)
    return prompt, jobs, submit(state, jobs)
