"""Anthropic's Messages API (POST /v1/messages, whole or streamed), on the same prompts and jobs as
the chat completions: its messages, system, tools and tool_choice are turned into OpenAI's."""
from __future__ import annotations

import json
import secrets

from .errors import invalid
from .prompts import start_chat
from .runner import collect, error_event, job_events, sse, streaming_response
from .tools import ToolCallStream
from .validate import get_bool, get_integer

STOP_REASONS = {"length": "max_tokens", "tool_calls": "tool_use"}


def text_of(content, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        out = []
        for b in content:
            if isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str):
                out.append(b["text"])
            elif isinstance(b, str):
                out.append(b)
            else:
                raise invalid(f"{where}: only text blocks are supported here", where, "invalid_type")
        return "".join(out)
    raise invalid(f"{where} must be a string or a list of content blocks", where, "invalid_type")


def to_openai(body: dict) -> dict:
    """The request in OpenAI's chat form (messages with tool calls and tool results, tools, tool_choice)."""
    if body.get("max_tokens") is None:
        raise invalid("'max_tokens' is required", "max_tokens", "missing_required_parameter")
    get_integer(body, "max_tokens", None, lo=1)
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise invalid("'messages' must be a non-empty array", "messages", "invalid_type")
    out = []
    system = body.get("system")
    if system is not None:
        out.append({"role": "system", "content": text_of(system, "system")})
    for i, m in enumerate(msgs):
        where = f"messages[{i}]"
        if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
            raise invalid(f"{where} must have role 'user' or 'assistant'", where, "invalid_type")
        content = m.get("content")
        if isinstance(content, str):
            out.append({"role": m["role"], "content": content})
            continue
        if not isinstance(content, list):
            raise invalid(f"{where}.content must be a string or a list of blocks", f"{where}.content", "invalid_type")
        texts, calls = [], []
        for j, b in enumerate(content):
            kind = b.get("type") if isinstance(b, dict) else None
            if kind == "text" and isinstance(b.get("text"), str):
                texts.append(b["text"])
            elif kind == "tool_use" and isinstance(b.get("name"), str):
                calls.append({"id": b.get("id") or f"toolu_{j}", "type": "function",
                              "function": {"name": b["name"], "arguments": json.dumps(b.get("input", {}))}})
            elif kind == "tool_result":
                result = b.get("content", "")
                out.append({"role": "tool", "tool_call_id": str(b.get("tool_use_id", "")),
                            "content": text_of(result, f"{where}.content[{j}].content")})
            else:
                raise invalid(f"{where}.content[{j}]: block type {str(kind)[:40]!r} is not supported",
                              f"{where}.content[{j}]", "invalid_type")
        if texts or calls or not content:
            msg = {"role": m["role"], "content": "".join(texts)}
            if calls:
                msg["tool_calls"] = calls
            out.append(msg)
    body2 = {k: body[k] for k in ("temperature", "top_p", "top_k", "stream", "max_tokens", "metadata")
             if k in body and k != "metadata"}
    if body.get("stop_sequences") is not None:
        body2["stop"] = body["stop_sequences"]
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list) or not all(isinstance(t, dict) and isinstance(t.get("name"), str) for t in tools):
            raise invalid("'tools' must be a list of {\"name\", \"description\", \"input_schema\"}", "tools",
                          "invalid_type")
        body2["tools"] = [{"type": "function", "function": {"name": t["name"], "description": t.get("description", ""),
                                                            "parameters": t.get("input_schema", {})}} for t in tools]
    choice = body.get("tool_choice")
    if choice is not None:
        kind = choice.get("type") if isinstance(choice, dict) else None
        if kind == "auto":
            body2["tool_choice"] = "auto"
        elif kind == "any":
            body2["tool_choice"] = "required"
        elif kind == "none":
            body2["tool_choice"] = "none"
        elif kind == "tool" and isinstance(choice.get("name"), str):
            body2["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
        else:
            raise invalid("'tool_choice' must be {\"type\": \"auto\" | \"any\" | \"none\" | \"tool\"}", "tool_choice")
    body2["messages"] = out
    return body2


def blocks(text: str, calls: list[dict]) -> list[dict]:
    out = [{"type": "text", "text": text}] if text or not calls else []
    for c in calls:
        out.append({"type": "tool_use", "id": "toolu_" + c["id"].removeprefix("call_"), "name": c["function"]["name"],
                    "input": json.loads(c["function"]["arguments"] or "{}")})
    return out


async def messages(state, request, body: dict):
    stream = get_bool(body, "stream", False)
    prompt, jobs, events = await start_chat(state, to_openai(body))
    meta = {"id": "msg_" + secrets.token_hex(12), "type": "message", "role": "assistant",
            "model": state.model_name(body)}
    if stream:
        return streaming_response(state, jobs, message_events(state, events, meta, prompt))
    c = (await collect(state, request, jobs, events))[0]
    text, calls = prompt.tool_calls(c.text)
    r = c.result
    reason = "tool_calls" if calls else r.finish_reason
    return {**meta, "content": blocks(text, calls),
            "stop_reason": "stop_sequence" if r.stopping_word else STOP_REASONS.get(reason, "end_turn"),
            "stop_sequence": r.stopping_word or None,
            "usage": {"input_tokens": r.n_prompt, "output_tokens": r.n_generated,
                      "cache_read_input_tokens": r.n_cached, "cache_creation_input_tokens": 0}}


async def message_events(state, events, meta: dict, prompt):
    """message_start, a text block's start / deltas / stop, tool_use blocks, message_delta, message_stop."""
    held = ToolCallStream(prompt.tools, prompt.parallel) if prompt.tools else None
    yield sse({"type": "message_start", "message": {**meta, "content": [], "stop_reason": None,
                                                    "stop_sequence": None,
                                                    "usage": {"input_tokens": len(prompt.ids), "output_tokens": 0}}},
              "message_start")
    yield sse({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
              "content_block_start")
    yield sse({"type": "ping"}, "ping")
    async for event in job_events(events, 1):
        if event.kind == "text":
            text = held.add(event.text) if held else event.text
            if text:
                yield sse({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}},
                          "content_block_delta")
        elif event.kind == "error":
            yield sse({"type": "error", "error": {"type": "api_error", "message": error_event(event.error)["error"]
                                                  ["message"]}}, "error")
        else:
            r = event.result
            state.metrics.add(r)
            calls = []
            if held:
                rest, calls = held.finish()
                if rest:
                    yield sse({"type": "content_block_delta", "index": 0,
                               "delta": {"type": "text_delta", "text": rest}}, "content_block_delta")
            yield sse({"type": "content_block_stop", "index": 0}, "content_block_stop")
            for k, block in enumerate((b for b in blocks("", calls) if b["type"] == "tool_use"), start=1):
                yield sse({"type": "content_block_start", "index": k,
                           "content_block": {**block, "input": {}}}, "content_block_start")
                yield sse({"type": "content_block_delta", "index": k,
                           "delta": {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}},
                          "content_block_delta")
                yield sse({"type": "content_block_stop", "index": k}, "content_block_stop")
            reason = "tool_use" if calls else "stop_sequence" if r.stopping_word else \
                STOP_REASONS.get(r.finish_reason, "end_turn")
            yield sse({"type": "message_delta", "delta": {"stop_reason": reason,
                                                          "stop_sequence": r.stopping_word or None},
                       "usage": {"output_tokens": r.n_generated}}, "message_delta")
            yield sse({"type": "message_stop"}, "message_stop")
