"""Request fields, checked: each getter returns the value or raises a 400 APIError naming the field.

Nothing here knows about HTTP or the model beyond what it is given (n_vocab, a tokenize function)."""
from __future__ import annotations

import json
import math
import re
from typing import Callable

from ..sampling import SamplingParams
from .errors import invalid

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool",
         "function": "tool"}


def is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def is_integer(v) -> bool:
    return (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer())


def _short(v) -> str:
    try:
        return json.dumps(v)[:40]
    except (TypeError, ValueError):
        return repr(v)[:40]


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


LONE_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")  # \ud800..\udfff: half of a UTF-16 pair, maybe alone


def parse_body(raw: bytes, allow_empty: bool = False) -> dict:
    """A request body as a JSON object, or a 400: empty (unless allowed), not UTF-8, not JSON (NaN and
    Infinity included, as JSON itself has them not), numbers of more digits than Python converts,
    strings holding a lone UTF-16 surrogate (no text can encode it), or not an object."""
    if not raw.strip():
        if allow_empty:
            return {}
        raise invalid("the request body is empty: send a JSON object", code="invalid_json")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise invalid(f"the request body is not valid UTF-8 (byte {e.start})", code="invalid_encoding") from None
    try:
        body = json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError, as are too long integers
        reason = "nested too deep" if isinstance(e, RecursionError) else str(e).split("; use")[0][:100]
        raise invalid(f"the request body is not valid JSON: {reason}", code="invalid_json") from None
    if LONE_SURROGATE_ESCAPE.search(text):
        try:
            json.dumps(body, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as e:
            raise invalid(f"the request body holds a lone UTF-16 surrogate ({e.object[e.start]!r}), which is "
                          "not a character", code="invalid_encoding") from None
        except RecursionError:
            raise invalid("the request body is not valid JSON: nested too deep", code="invalid_json") from None
    if not isinstance(body, dict):
        raise invalid("the request body must be a JSON object", code="invalid_json")
    return body


def typed(body: dict, name: str, is_kind, kind: str):
    """body[name], None when absent or null; a 400 when it is not of the kind asked for."""
    v = body.get(name)
    if v is not None and not is_kind(v):
        raise invalid(f"'{name}' must be {kind}, not {_short(v)}", name, "invalid_type")
    return v


def get_number(body: dict, name: str, default, lo: float | None = None, hi: float | None = None):
    """A finite number in [lo, hi] (an integer too large for a float is out of range, not an OverflowError)."""
    v = typed(body, name, is_number, "a number")
    if v is None:
        return default
    try:
        x = float(v)
    except OverflowError:
        x = math.inf if v > 0 else -math.inf
    if not ((lo is None or x >= lo) and (hi is None or x <= hi)) or not math.isfinite(x):
        raise invalid(f"'{name}' must be a finite number between {lo} and {hi}, not {_short(v)}", name)
    return x


def get_integer(body: dict, name: str, default, lo: int | None = None, hi: int | None = None):
    v = typed(body, name, is_integer, "an integer")
    if v is None:
        return default
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        bound = f"at least {lo}" if hi is None else f"between {lo} and {hi}"
        raise invalid(f"'{name}' must be {bound}, not {_short(v)}", name)
    return int(v)


def get_bool(body: dict, name: str, default: bool) -> bool:
    v = typed(body, name, lambda x: isinstance(x, bool), "true or false")
    return default if v is None else v


def get_string(body: dict, name: str, default: str | None = None) -> str | None:
    v = typed(body, name, lambda x: isinstance(x, str), "a string")
    return default if v is None else v


def get_object(body: dict, name: str) -> dict | None:
    return typed(body, name, lambda x: isinstance(x, dict), "an object")


def get_stops(body: dict) -> list[str]:
    """"stop": a string or a list of strings (llama.cpp's native "stop" is a list too)."""
    v = body.get("stop")
    if v is None:
        return []
    if isinstance(v, str):
        return [v] if v else []
    if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
        raise invalid("'stop' must be a string or a list of strings", "stop", "invalid_type")
    if len(v) > 16:
        raise invalid("'stop' holds at most 16 strings", "stop")
    return [s for s in v if s]


def get_max_tokens(body: dict, default: int | None = None) -> int | None:
    """The reply's token limit; None = as many as the context holds; default = the server's -n.

    OpenAI's max_tokens / max_completion_tokens must be >= 1 (Anthropic's max_tokens too);
    llama.cpp's n_predict may be 0, and -1 means no limit."""
    for name in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
        if body.get(name) is not None:
            return get_integer(body, name, None, lo=1)
    if body.get("n_predict") is not None:
        n = get_integer(body, "n_predict", None, lo=-1)
        return None if n < 0 else n
    return default


def get_sampling(body: dict, defaults: SamplingParams, n_ctx: int, n_vocab: int, max_temperature: float,
                 tokenize: Callable[[str], list[int]] | None = None) -> SamplingParams:
    """The request's sampling fields over the server's defaults."""
    d = defaults
    seed = get_integer(body, "seed", d.seed)
    repeat_last_n = get_integer(body, "repeat_last_n", d.repeat_last_n, lo=-1)
    return SamplingParams(
        temperature=get_number(body, "temperature", d.temperature, 0.0, max_temperature),
        top_k=get_integer(body, "top_k", d.top_k, lo=0),
        top_p=get_number(body, "top_p", d.top_p, 0.0, 1.0),
        min_p=get_number(body, "min_p", d.min_p, 0.0, 1.0),
        repeat_penalty=get_number(body, "repeat_penalty", d.repeat_penalty, 0.0, None),
        repeat_last_n=n_ctx if repeat_last_n < 0 else repeat_last_n,
        presence_penalty=get_number(body, "presence_penalty", d.presence_penalty, -2.0, 2.0),
        frequency_penalty=get_number(body, "frequency_penalty", d.frequency_penalty, -2.0, 2.0),
        seed=None if seed is None or seed < 0 else seed,
        logit_bias=get_logit_bias(body, n_vocab, tokenize))


def get_logit_bias(body: dict, n_vocab: int, tokenize: Callable[[str], list[int]] | None = None
                   ) -> dict[int, float]:
    """OpenAI's {"token id": bias}, and llama.cpp's forms: [[id or text, bias or false], ...] and text keys
    (every token of the text gets the bias). A bias of false, or -100 and below, bans the token."""
    v = body.get("logit_bias")
    if v is None:
        return {}
    if isinstance(v, dict):
        pairs = list(v.items())
    elif isinstance(v, list):
        if not all(isinstance(p, list) and len(p) == 2 for p in v):
            raise invalid("'logit_bias' as an array holds [token id or text, bias or false] pairs",
                          "logit_bias", "invalid_type")
        pairs = [tuple(p) for p in v]
    else:
        raise invalid("'logit_bias' must be an object mapping token ids to numbers, or an array of pairs",
                      "logit_bias", "invalid_type")
    out: dict[int, float] = {}
    for key, bias in pairs:
        if bias is False:
            value = -math.inf
        elif is_number(bias) and math.isfinite(bias):
            value = -math.inf if bias <= -100 else float(bias)
        else:
            raise invalid(f"'logit_bias' entry {_short(key)}: the bias must be a number or false, not {_short(bias)}",
                          "logit_bias")
        if is_integer(key) or (isinstance(key, str) and re.fullmatch(r"-?[0-9]+", key.strip())):  # "²" is text
            ids = [int(key)]
        elif isinstance(key, str) and key and tokenize is not None:
            ids = tokenize(key)
        else:
            raise invalid(f"'logit_bias' key {_short(key)} must be a token id or a text", "logit_bias")
        for t in ids:
            if not 0 <= t < n_vocab:
                raise invalid(f"'logit_bias': token id {t} is out of range 0..{n_vocab - 1}", "logit_bias")
            out[t] = value
    return out


def get_n(body: dict, limit: int) -> int:
    n = get_integer(body, "n", 1, lo=1)
    if n > limit:
        raise invalid(f"'n' must be at most {limit} (the server's --parallel slots)", "n", "unsupported_value")
    return n


# --- chat messages ----------------------------------------------------------------------

def get_messages(body: dict, name: str = "messages") -> list[dict]:
    """"messages" checked and reduced to what chat templates read: role, content (a string), and for
    assistant turns tool_calls (arguments parsed to objects), for tool turns tool_call_id and name."""
    v = body.get(name)
    if v is None:
        raise invalid(f"'{name}' is required", name, "missing_required_parameter")
    if not isinstance(v, list):
        raise invalid(f"'{name}' must be an array of messages", name, "invalid_type")
    if not v:
        raise invalid(f"'{name}' must not be empty", name)
    return [get_message(m, f"{name}[{i}]") for i, m in enumerate(v)]


def get_message(m, where: str) -> dict:
    if not isinstance(m, dict):
        raise invalid(f"{where} must be an object with 'role' and 'content'", where, "invalid_type")
    role = m.get("role")
    if not isinstance(role, str):
        raise invalid(f"{where}.role must be a string", f"{where}.role", "invalid_type")
    if role not in ROLES:
        raise invalid(f"{where}.role '{role[:40]}' is not one of {', '.join(ROLES)}", f"{where}.role")
    content = m.get("content")
    tool_calls = m.get("tool_calls")
    if content is None and (role == "assistant" or tool_calls):
        content = ""
    out = {"role": ROLES[role], "content": message_text(content, f"{where}.content")}
    if tool_calls is not None:
        out["tool_calls"] = get_tool_calls(tool_calls, f"{where}.tool_calls")
    for key in ("tool_call_id", "name"):
        if m.get(key) is not None:
            if not isinstance(m[key], str):
                raise invalid(f"{where}.{key} must be a string", f"{where}.{key}", "invalid_type")
            out[key] = m[key]
    return out


def get_tool_calls(v, where: str) -> list[dict]:
    if not isinstance(v, list):
        raise invalid(f"{where} must be an array", where, "invalid_type")
    calls = []
    for i, c in enumerate(v):
        f = c.get("function") if isinstance(c, dict) else None
        if not isinstance(f, dict) or not isinstance(f.get("name"), str):
            raise invalid(f"{where}[{i}] must be {{\"type\": \"function\", \"function\": {{\"name\", \"arguments\"}}}}",
                          f"{where}[{i}]", "invalid_type")
        args = f.get("arguments", {})
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except json.JSONDecodeError:
                pass  # templates get the text as it was
        calls.append({"id": c.get("id") or f"call_{i}", "type": "function",
                      "function": {"name": f["name"], "arguments": args}})
    return calls


def message_text(content, where: str) -> str:
    """A message's content: a string, or a list of text parts ({"type": "text" | "input_text" |
    "output_text", "text": ...})."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if (not isinstance(part, dict) or part.get("type") not in ("text", "input_text", "output_text")
                    or not isinstance(part.get("text"), str)):
                raise invalid(f"{where}: only parts of the form {{\"type\": \"text\", \"text\": \"...\"}} "
                              "are supported", where, "invalid_type")
            texts.append(part["text"])
        return "".join(texts)
    if content is None:
        raise invalid(f"{where} is required", where, "missing_required_parameter")
    raise invalid(f"{where} must be a string or a list of text parts", where, "invalid_type")


def get_tools(body: dict) -> list[dict] | None:
    """OpenAI's tools: [{"type": "function", "function": {"name", "description", "parameters"}}]."""
    v = body.get("tools")
    if v is None:
        return None
    if not isinstance(v, list):
        raise invalid("'tools' must be an array", "tools", "invalid_type")
    for i, t in enumerate(v):
        f = t.get("function") if isinstance(t, dict) else None
        if not isinstance(t, dict) or t.get("type", "function") != "function" or not isinstance(f, dict) \
                or not isinstance(f.get("name"), str) or not f["name"]:
            raise invalid(f"tools[{i}] must be {{\"type\": \"function\", \"function\": {{\"name\": ..., "
                          "\"parameters\": {...}}}}", f"tools[{i}]", "invalid_type")
        if f.get("parameters") is not None and not isinstance(f["parameters"], dict):
            raise invalid(f"tools[{i}].function.parameters must be a JSON schema object",
                          f"tools[{i}].function.parameters", "invalid_type")
    return v or None


def get_tool_choice(body: dict, tools: list[dict] | None) -> str | dict:
    """"auto", "none", "required", or {"type": "function", "function": {"name"}} naming one of the tools."""
    v = body.get("tool_choice")
    if v is None:
        return "auto"
    if isinstance(v, str):
        if v not in ("auto", "none", "required"):
            raise invalid("'tool_choice' must be 'auto', 'none', 'required' or a function", "tool_choice")
        return v
    name = v.get("function", {}).get("name") if isinstance(v, dict) and isinstance(v.get("function"), dict) else None
    if not isinstance(name, str):
        raise invalid("'tool_choice' must be 'auto', 'none', 'required' or {\"type\": \"function\", "
                      "\"function\": {\"name\": ...}}", "tool_choice", "invalid_type")
    if not any(t["function"]["name"] == name for t in tools or []):
        raise invalid(f"'tool_choice' names the function '{name[:40]}', which is not among the tools", "tool_choice")
    return v
