"""Tool calls and fill-in-the-middle on Qwen2.5-Coder-0.5B (Q4_K_M), whose template knows tools and whose
vocabulary has FIM tokens: one server, three short requests (marked `qwen`; -m "not qwen" skips them)."""
from __future__ import annotations

import json

import httpx
import openai
import pytest

from serve_for_tests import running_server

pytestmark = pytest.mark.qwen

WEATHER = [{"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
ASK = [{"role": "user", "content": "What is the weather like in Paris today?"}]


@pytest.fixture(scope="module")
def server():
    with running_server(model="qwen2.5-coder-0.5b-instruct", ctx_size=1024) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=300)


def test_tool_call_comes_back_as_tool_calls(client):
    r = client.chat.completions.create(model="qwen", messages=ASK, tools=WEATHER, max_tokens=40, temperature=0)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and not choice.message.content
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather" and call.id.startswith("call_")
    assert json.loads(call.function.arguments) == {"city": "Paris"}


def test_tool_call_streams_as_delta_tool_calls(client):
    chunks = list(client.chat.completions.create(model="qwen", messages=ASK, tools=WEATHER, max_tokens=40,
                                                 temperature=0, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert [tc.function.name for tc in calls] == ["get_weather"]
    assert json.loads(calls[0].function.arguments)["city"] == "Paris"
    assert "<tool_call>" not in "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_infill_fills_the_middle(server):
    r = httpx.post(server.url + "/infill", timeout=300, json={
        "input_prefix": "def add(a, b):\n    ", "input_suffix": "\n\nprint(add(1, 2))\n",
        "n_predict": 8, "temperature": 0}).json()
    assert r["content"].startswith("return a + b"), r["content"]
