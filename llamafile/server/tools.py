"""Tool calling: tools rendered through the model's chat template, tool calls parsed out of the reply.

Formats understood, in this order:
  Hermes / Qwen2.5     <tool_call>{"name": ..., "arguments": {...}}</tool_call> (one or more)
  Llama 3.x            {"name": ..., "parameters": {...}} (optionally after <|python_tag|>, several joined by ;)
  generic              {"tool_call": {"name", "arguments"}}, {"tool_calls": [...]}, or a bare
                       {"name", "arguments"} object, also inside a ```json fence
A template that knows no tools gets them described in a system message asking for the generic form.
"""
from __future__ import annotations

import json
import re
import secrets

HERMES = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.S)
ANYWHERE_OPENERS = ("<tool_call>", "<|python_tag|>")
START_OPENERS = ("{", "[", "```")


def template_knows_tools(template: str | None) -> bool:
    return bool(template) and "tools" in template


def generic_tools_prompt(tools: list[dict], tool_choice) -> str:
    names = [t["function"]["name"] for t in tools]
    lines = ["You can call these tools (JSON schemas of their arguments):"]
    for t in tools:
        f = t["function"]
        lines.append(json.dumps({"name": f["name"], "description": f.get("description", ""),
                                 "parameters": f.get("parameters", {})}, ensure_ascii=False))
    lines.append('To call a tool, answer with only this JSON: {"tool_call": {"name": "<tool name>", '
                 '"arguments": {<arguments>}}}')
    if tool_choice == "required":
        lines.append("You must call one of the tools.")
    elif isinstance(tool_choice, dict):
        lines.append(f"You must call the tool {tool_choice['function']['name']}.")
    else:
        lines.append(f"Answer normally when no tool ({', '.join(names)}) is needed.")
    return "\n".join(lines)


def prepare_messages(messages: list[dict], tools: list[dict] | None, tool_choice, template: str | None
                     ) -> tuple[list[dict], dict]:
    """(messages, extra template variables) for a chat with these tools."""
    if not tools or tool_choice == "none":
        return [_flatten(m) for m in messages] if not template_knows_tools(template) else messages, {}
    if template_knows_tools(template):
        extra = {"tools": tools}
        if tool_choice == "required" or isinstance(tool_choice, dict):
            prompt = generic_tools_prompt(tools, tool_choice).splitlines()[-1]
            messages = _with_system(messages, prompt)
        return messages, extra
    return _with_system([_flatten(m) for m in messages], generic_tools_prompt(tools, tool_choice)), {}


def _with_system(messages: list[dict], text: str) -> list[dict]:
    if messages and messages[0]["role"] == "system":
        return [{**messages[0], "content": messages[0]["content"] + "\n\n" + text}] + messages[1:]
    return [{"role": "system", "content": text}] + messages


def _flatten(m: dict) -> dict:
    """For a template without tools: an assistant's calls as the generic JSON, a tool result as text."""
    if m.get("tool_calls"):
        calls = [{"tool_call": {"name": c["function"]["name"], "arguments": c["function"]["arguments"]}}
                 for c in m["tool_calls"]]
        text = "\n".join(json.dumps(c, ensure_ascii=False) for c in calls)
        return {"role": m["role"], "content": (m["content"] + "\n" + text).strip()}
    return m


def forced_schema(tools: list[dict], tool_choice) -> dict | None:
    """With tool_choice "required" or a named function: a JSON schema the reply must follow, one call
    {"name": ..., "arguments": {...}} (constrained decoding makes the model call)."""
    if tool_choice != "required" and not isinstance(tool_choice, dict):
        return None
    wanted = tool_choice["function"]["name"] if isinstance(tool_choice, dict) else None
    options = []
    for t in tools:
        f = t["function"]
        if wanted is None or f["name"] == wanted:
            options.append({"type": "object", "properties": {
                "name": {"const": f["name"]}, "arguments": f.get("parameters") or {"type": "object"}},
                "required": ["name", "arguments"], "additionalProperties": False})
    return options[0] if len(options) == 1 else {"anyOf": options}


# --- parsing -------------------------------------------------------------------------------

def new_call(name: str, arguments) -> dict:
    args = arguments if isinstance(arguments, str) else json.dumps(arguments if arguments is not None else {},
                                                                   ensure_ascii=False)
    return {"id": "call_" + secrets.token_hex(12), "type": "function", "function": {"name": name, "arguments": args}}


def _as_call(obj, names: set[str]) -> dict | None:
    if not isinstance(obj, dict):
        return None
    if isinstance(obj.get("tool_call"), dict):
        obj = obj["tool_call"]
    if isinstance(obj.get("function"), dict) and "name" in obj["function"]:
        obj = obj["function"]
    name = obj.get("name")
    if not isinstance(name, str) or (names and name not in names):
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            return None
    return new_call(name, args)


def _json_values(text: str) -> list | None:
    """Every JSON value in text, separated by whitespace, ';' or ',' (None if anything else is there)."""
    decoder, values, i = json.JSONDecoder(), [], 0
    while True:
        while i < len(text) and text[i] in " \t\r\n;,":
            i += 1
        if i >= len(text):
            return values
        try:
            value, i = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            return None
        values.append(value)


def parse_tool_calls(text: str, tools: list[dict] | None) -> tuple[str, list[dict]]:
    """(the reply's content without the calls, the calls in OpenAI's form)."""
    names = {t["function"]["name"] for t in tools or []}
    if "<tool_call>" in text:
        calls = []
        for m in HERMES.finditer(text):
            values = _json_values(m.group(1)) or []
            calls += [c for c in (_as_call(v, names) for v in values) if c]
        if calls:
            return HERMES.sub("", text).strip(), calls
    body = text.strip()
    if body.startswith("<|python_tag|>"):
        body = body[len("<|python_tag|>"):]
    fence = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", body, re.S)
    if fence:
        body = fence.group(1)
    values = _json_values(body)
    if values:
        flat = []
        for v in values:
            if isinstance(v, dict) and isinstance(v.get("tool_calls"), list):
                flat += v["tool_calls"]
            elif isinstance(v, list):
                flat += v
            else:
                flat.append(v)
        calls = [_as_call(v, names) for v in flat]
        if calls and all(calls):
            return "", calls
    return text, []


class ToolCallStream:
    """Streamed content while tools are on: text that may begin a tool call is held back until the
    end, where the calls are parsed out of the whole reply."""

    def __init__(self, tools: list[dict], parallel: bool = True):
        self.tools, self.parallel, self.text, self.sent, self.holding = tools, parallel, "", 0, False

    def add(self, piece: str) -> str:
        self.text += piece
        if self.holding:
            return ""
        hold = len(self.text)
        for opener in ANYWHERE_OPENERS:
            i = self.text.find(opener, self.sent)
            if i >= 0:
                self.holding = True
                hold = min(hold, i)
            else:  # a possible start of the opener at the end
                for k in range(min(len(opener) - 1, len(self.text)), 0, -1):
                    if self.text.endswith(opener[:k]):
                        hold = min(hold, len(self.text) - k)
                        break
        lead = len(self.text) - len(self.text.lstrip())
        rest = self.text[lead:]
        if self.sent <= lead:
            if any(rest.startswith(o) for o in START_OPENERS):
                self.holding, hold = True, min(hold, lead)
            elif not rest or any(o.startswith(rest) for o in START_OPENERS):
                hold = min(hold, lead)
        hold = max(hold, self.sent)
        out, self.sent = self.text[self.sent:hold], hold
        return out

    def finish(self) -> tuple[str, list[dict]]:
        """(content still to send, the tool calls)."""
        content, calls = parse_tool_calls(self.text, self.tools)
        if not calls:
            return self.text[self.sent:], []
        calls = calls if self.parallel else calls[:1]
        return content[self.sent:] if content.startswith(self.text[:self.sent]) else "", calls
