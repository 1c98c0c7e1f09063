"""OpenAI's Responses API (POST /v1/responses, whole or streamed), on the chat completions' prompts
and jobs: input items become chat messages, function tools become chat tools."""
from __future__ import annotations

import secrets
import time

from .errors import invalid
from .prompts import start_chat
from .runner import collect, error_event, job_events, sse, streaming_response
from .tools import ToolCallStream
from .validate import get_bool, get_string, message_text


def to_chat(body: dict) -> dict:
    inp = body.get("input")
    messages = []
    instructions = get_string(body, "instructions")
    if instructions:
        messages.append({"role": "system", "content": instructions})
    if isinstance(inp, str):
        messages.append({"role": "user", "content": inp})
    elif isinstance(inp, list) and inp:
        for i, item in enumerate(inp):
            where = f"input[{i}]"
            if not isinstance(item, dict):
                raise invalid(f"{where} must be an object", where, "invalid_type")
            kind = item.get("type", "message")
            if kind == "message":
                messages.append({"role": item.get("role"), "content": message_text(item.get("content"), where)})
            elif kind == "function_call":
                messages.append({"role": "assistant", "content": "", "tool_calls": [
                    {"id": item.get("call_id", f"call_{i}"), "type": "function",
                     "function": {"name": item.get("name"), "arguments": item.get("arguments", "{}")}}]})
            elif kind == "function_call_output":
                out = item.get("output", "")
                messages.append({"role": "tool", "tool_call_id": str(item.get("call_id", "")),
                                 "content": out if isinstance(out, str) else message_text(out, where)})
            else:
                raise invalid(f"{where}: item type {str(kind)[:40]!r} is not supported", where, "invalid_type")
    else:
        raise invalid("'input' must be a string or a non-empty list of items", "input",
                      "missing_required_parameter" if inp is None else "invalid_type")
    chat = {k: body[k] for k in ("temperature", "top_p", "stream", "max_output_tokens", "parallel_tool_calls")
            if body.get(k) is not None}
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list) or not all(isinstance(t, dict) and t.get("type") == "function"
                                                  and isinstance(t.get("name"), str) for t in tools):
            raise invalid("'tools' must be function tools: {\"type\": \"function\", \"name\", \"parameters\"}",
                          "tools", "invalid_type")
        chat["tools"] = [{"type": "function", "function": {"name": t["name"], "description": t.get("description", ""),
                                                           "parameters": t.get("parameters", {})}} for t in tools]
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") == "function":
        chat["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
    elif choice is not None:
        chat["tool_choice"] = choice
    text = body.get("text")
    if text is not None:
        fmt = text.get("format") if isinstance(text, dict) else None
        if not isinstance(fmt, dict):
            raise invalid("'text' must be {\"format\": {\"type\": ...}}", "text", "invalid_type")
        if fmt.get("type") == "json_schema":
            chat["response_format"] = {"type": "json_schema", "json_schema": {"schema": fmt.get("schema")}}
        else:
            chat["response_format"] = {"type": fmt.get("type")}
    chat["messages"] = messages
    return chat


def output_items(text: str, calls: list[dict], msg_id: str) -> list[dict]:
    out = []
    if text or not calls:
        out.append({"type": "message", "id": msg_id, "status": "completed", "role": "assistant",
                    "content": [{"type": "output_text", "text": text, "annotations": []}]})
    for c in calls:
        out.append({"type": "function_call", "id": "fc_" + c["id"].removeprefix("call_"), "call_id": c["id"],
                    "name": c["function"]["name"], "arguments": c["function"]["arguments"], "status": "completed"})
    return out


def response_object(meta: dict, status: str, output: list, r=None) -> dict:
    usage = None
    if r is not None:
        usage = {"input_tokens": r.n_prompt, "input_tokens_details": {"cached_tokens": r.n_cached},
                 "output_tokens": r.n_generated, "output_tokens_details": {"reasoning_tokens": 0},
                 "total_tokens": r.n_prompt + r.n_generated}
    incomplete = {"reason": "max_output_tokens"} if r is not None and r.finish_reason == "length" else None
    return {**meta, "status": "incomplete" if incomplete else status, "output": output, "usage": usage,
            "incomplete_details": incomplete, "error": None}


async def responses(state, request, body: dict):
    stream = get_bool(body, "stream", False)
    chat = to_chat(body)
    prompt, jobs, events = await start_chat(state, chat)
    meta = {"id": "resp_" + secrets.token_hex(12), "object": "response", "created_at": int(time.time()),
            "model": state.model_name(body), "parallel_tool_calls": True, "tool_choice": "auto", "tools": [],
            "temperature": chat.get("temperature"), "top_p": chat.get("top_p"),
            "instructions": body.get("instructions"), "metadata": {}, "text": {"format": {"type": "text"}}}
    msg_id = "msg_" + secrets.token_hex(12)
    if stream:
        return streaming_response(state, jobs, response_events(state, events, meta, prompt, msg_id))
    c = (await collect(state, request, jobs, events))[0]
    text, calls = prompt.tool_calls(c.text)
    out = response_object(meta, "completed", output_items(text, calls, msg_id), c.result)
    out["output_text"] = text
    return out


async def response_events(state, events, meta: dict, prompt, msg_id: str):
    seq = 0

    def ev(kind: str, **data) -> str:
        nonlocal seq
        seq += 1
        return sse({"type": kind, "sequence_number": seq - 1, **data}, kind)

    held = ToolCallStream(prompt.tools, prompt.parallel) if prompt.tools else None
    yield ev("response.created", response=response_object(meta, "in_progress", []))
    yield ev("response.in_progress", response=response_object(meta, "in_progress", []))
    item = {"type": "message", "id": msg_id, "status": "in_progress", "role": "assistant", "content": []}
    yield ev("response.output_item.added", output_index=0, item=item)
    part = {"type": "output_text", "text": "", "annotations": []}
    yield ev("response.content_part.added", item_id=msg_id, output_index=0, content_index=0, part=part)
    text_so_far = ""
    async for event in job_events(events, 1):
        if event.kind == "text":
            text = held.add(event.text) if held else event.text
            if text:
                text_so_far += text
                yield ev("response.output_text.delta", item_id=msg_id, output_index=0, content_index=0, delta=text,
                         logprobs=[])
        elif event.kind == "error":
            yield ev("error", message=error_event(event.error)["error"]["message"], code="server_error", param=None)
        else:
            r = event.result
            state.metrics.add(r)
            calls = []
            if held:
                rest, calls = held.finish()
                if rest:
                    text_so_far += rest
                    yield ev("response.output_text.delta", item_id=msg_id, output_index=0, content_index=0,
                             delta=rest, logprobs=[])
            yield ev("response.output_text.done", item_id=msg_id, output_index=0, content_index=0,
                     text=text_so_far, logprobs=[])
            done_part = {**part, "text": text_so_far}
            yield ev("response.content_part.done", item_id=msg_id, output_index=0, content_index=0, part=done_part)
            yield ev("response.output_item.done", output_index=0,
                     item={**item, "status": "completed", "content": [done_part]})
            items = output_items(text_so_far, calls, msg_id)
            if not (text_so_far or not calls):
                items = [output_items(text_so_far, [], msg_id)[0]] + items
            for k, it in enumerate(items[1:], start=1):
                yield ev("response.output_item.added", output_index=k, item={**it, "status": "in_progress"})
                yield ev("response.function_call_arguments.done", item_id=it["id"], output_index=k,
                         arguments=it["arguments"])
                yield ev("response.output_item.done", output_index=k, item=it)
            yield ev("response.completed", response=response_object(meta, "completed", items, r))
