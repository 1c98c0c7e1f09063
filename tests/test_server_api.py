"""llama-server's API as clients use it (issue 13): the official openai and anthropic clients and plain
HTTP against the real server on SmolLM2 (two slots of 512 tokens, an API key, -n 24, metrics,
embeddings, slot files), and a second server for the switches (--no-slots, a --host list, CORS)."""
from __future__ import annotations

import json
import math

import anthropic
import httpx
import openai
import pytest

from serve_for_tests import free_port, running_server

KEY = "api-key-13"
ALIAS = "my-local-model"
N_CTX = 512       # per slot
N_PREDICT = 24    # the server's -n
N_EMBD = 576      # SmolLM2-135M's width
HELLO = [{"role": "user", "content": "Hi"}]
PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def slot_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("slots")


@pytest.fixture(scope="module")
def server(slot_dir):
    with running_server("--parallel", "2", "--alias", ALIAS, "-n", str(N_PREDICT), "--metrics", "--embedding",
                        "--slot-save-path", str(slot_dir), api_key=KEY, ctx_size=2 * N_CTX) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, headers=server.headers, timeout=120) as c:
        yield c


def events(response) -> list:
    return [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ") and line[6:] != "[DONE]"]


# --- names, stream shape, errors ---------------------------------------------------------------

def test_any_model_name_is_served_and_the_alias_listed(client):
    r = client.chat.completions.create(model="gpt-3.5-turbo", messages=HELLO, max_tokens=4, temperature=0)
    assert r.choices[0].message.content and r.model == "gpt-3.5-turbo"
    models = client.models.list()
    assert [m.id for m in models.data] == [ALIAS]
    assert models.data[0].model_extra["aliases"] == [ALIAS]


def test_first_stream_chunk_is_role_with_null_content_then_usage(http):
    with http.stream("POST", "/v1/chat/completions", json={
            "messages": HELLO, "max_tokens": 5, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}) as r:
        chunks = events(r)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": None}
    assert all("role" not in c["choices"][0]["delta"] for c in chunks[1:] if c["choices"])
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 5
    assert "cached_tokens" in chunks[-1]["usage"]["prompt_tokens_details"]


def test_auth_errors_x_api_key_and_public_paths(server):
    r = httpx.post(server.url + "/v1/chat/completions", json={"messages": HELLO})
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    r = httpx.post(server.url + "/v1/chat/completions", json={"messages": HELLO, "max_tokens": 1},
                   headers={"X-Api-Key": KEY})
    assert r.status_code == 200
    for path in ("/health", "/v1/models"):
        assert httpx.get(server.url + path).status_code == 200


def test_prompt_over_the_context_is_exceed_context_size_error(http):
    r = http.post("/completion", json={"prompt": "word " * 600})
    e = r.json()["error"]
    assert r.status_code == 400 and e["type"] == "exceed_context_size_error"
    assert e["n_ctx"] == N_CTX and e["n_prompt_tokens"] > N_CTX


def test_props(http):
    p = http.get("/props").json()
    assert p["total_slots"] == 2 and p["default_generation_settings"]["n_ctx"] == N_CTX
    assert "<|im_start|>" in p["chat_template"] and p["build_info"] and p["model_path"].endswith(".gguf")
    assert p["model_alias"] == ALIAS


def test_cors_preflight_for_localhost_only(server):
    ask = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,content-type"}
    r = httpx.options(server.url + "/v1/chat/completions", headers={"Origin": "http://localhost:5173", **ask})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://localhost:5173"
    r = httpx.options(server.url + "/v1/chat/completions", headers={"Origin": "https://evil.example", **ask})
    assert "access-control-allow-origin" not in r.headers
    r = httpx.get(server.url + "/health", headers={"Origin": "http://127.0.0.1:3000"})
    assert r.headers["access-control-allow-origin"] == "http://127.0.0.1:3000"


# --- generation fields ----------------------------------------------------------------------------

def test_n_predict_flag_is_the_default_limit(http):
    r = http.post("/completion", json={"prompt": PROMPT, "ignore_eos": True}).json()
    assert r["tokens_predicted"] == N_PREDICT and r["stop_type"] == "limit"
    assert r["generation_settings"]["n_predict"] == N_PREDICT and r["generation_settings"]["ignore_eos"] is True


def test_json_schema_output_parses_and_validates(client):
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20},
                                               "age": {"type": "integer"}},
              "required": ["name", "age"], "additionalProperties": False}
    r = client.chat.completions.create(
        model="x", max_tokens=60, temperature=0,
        messages=[{"role": "user", "content": "Invent a person. Answer in JSON with name and age."}],
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema}})
    person = json.loads(r.choices[0].message.content)
    assert set(person) == {"name", "age"} and isinstance(person["name"], str) and isinstance(person["age"], int)
    r = client.chat.completions.create(model="x", max_tokens=60, temperature=0, messages=[
        {"role": "user", "content": "Reply with a JSON object."}], response_format={"type": "json_object"},
        extra_body={"json_schema": {"type": "object", "properties": {"ok": {"type": "boolean"}},
                                    "required": ["ok"], "additionalProperties": False}})
    assert isinstance(json.loads(r.choices[0].message.content)["ok"], bool)


def test_gbnf_grammar_yields_only_what_it_allows(http):
    r = http.post("/completion", json={"prompt": "Say something:", "n_predict": 12, "grammar": 'root ::= "a"+'}).json()
    assert r["content"] and set(r["content"]) == {"a"}
    r = http.post("/v1/chat/completions", json={"messages": HELLO, "max_tokens": 8,
                                                "grammar": 'root ::= ("yes" | "no")'}).json()
    assert r["choices"][0]["message"]["content"] in ("yes", "no")


def test_chat_logprobs(client):
    r = client.chat.completions.create(model="x", messages=HELLO, max_tokens=5, temperature=0, logprobs=True,
                                       top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert "".join(t.token for t in content) == r.choices[0].message.content
    for t in content:
        assert t.logprob <= 0 and len(t.top_logprobs) == 3
        assert t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob >= t.top_logprobs[2].logprob
        assert t.token == t.top_logprobs[0].token  # greedy picks the most likely
    whole = client.chat.completions.create(model="x", messages=HELLO, max_tokens=5, temperature=0)
    assert whole.choices[0].logprobs is None


def test_completion_logprobs_and_n_probs(client, http):
    r = client.completions.create(model="x", prompt=PROMPT, max_tokens=4, temperature=0, logprobs=2)
    lp = r.choices[0].logprobs
    assert "".join(lp.tokens) == r.choices[0].text and len(lp.top_logprobs[0]) == 2
    native = http.post("/completion", json={"prompt": PROMPT, "n_predict": 3, "temperature": 0, "n_probs": 4}).json()
    probs = native["completion_probabilities"]
    assert len(probs) == 3 and all(len(p["top_logprobs"]) == 4 and p["logprob"] <= 0 for p in probs)
    assert "".join(p["token"] for p in probs) == native["content"]
    post = http.post("/completion", json={"prompt": PROMPT, "n_predict": 3, "temperature": 1, "top_k": 5,
                                          "n_probs": 4, "post_sampling_probs": True, "seed": 1}).json()
    for p in post["completion_probabilities"]:
        assert 0 < p["prob"] <= 1 and len(p["top_probs"]) <= 4
        assert sum(q["prob"] for q in p["top_probs"]) <= 1 + 1e-6


def test_logit_bias_forms(http):
    def first(body) -> str:
        return http.post("/completion", json={"prompt": PROMPT, "n_predict": 2, "temperature": 0, **body}).json()["content"]

    plain = first({})
    assert plain.startswith(" Paris")
    paris = http.post("/tokenize", json={"content": " Paris"}).json()["tokens"]
    assert not first({"logit_bias": [[" Paris", False]]}).startswith(" Paris")
    assert not first({"logit_bias": [[paris[0], -100]]}).startswith(" Paris")
    assert not first({"logit_bias": {str(paris[0]): -100}}).startswith(" Paris")
    assert not first({"logit_bias": {" Paris": False}}).startswith(" Paris")


def test_n_choices_and_seeds(client):
    r = client.chat.completions.create(model="x", messages=[{"role": "user", "content": "Name a colour."}],
                                       max_tokens=6, n=2, temperature=1.0, seed=3)
    assert [c.index for c in r.choices] == [0, 1] and all(c.message.content for c in r.choices)
    assert 0 < r.usage.completion_tokens <= 12


def test_cache_prompt_and_id_slot(http):
    body = {"prompt": "Once upon a time, in a land far away,", "n_predict": 2, "temperature": 0, "id_slot": 1}
    http.post("/completion", json=body)
    again = http.post("/completion", json=body).json()
    assert again["id_slot"] == 1 and again["timings"]["cache_n"] > 0 and again["tokens_cached"] > 0
    fresh = http.post("/completion", json={**body, "cache_prompt": False}).json()
    assert fresh["timings"]["cache_n"] == 0
    chat = http.post("/v1/chat/completions", json={"messages": HELLO, "max_tokens": 2, "id_slot": 0}).json()
    chat = http.post("/v1/chat/completions", json={"messages": HELLO, "max_tokens": 2, "id_slot": 0}).json()
    assert chat["usage"]["prompt_tokens_details"]["cached_tokens"] > 0


def test_completion_prompt_forms_and_response_fields(client, http):
    ids = http.post("/tokenize", json={"content": PROMPT}).json()["tokens"]
    by_ids = http.post("/completion", json={"prompt": ids, "n_predict": 3, "temperature": 0,
                                            "return_tokens": True}).json()
    by_text = http.post("/completion", json={"prompt": PROMPT, "n_predict": 3, "temperature": 0}).json()
    assert by_ids["content"] == by_text["content"] and len(by_ids["tokens"]) == 3
    mixed = http.post("/completion", json={"prompt": [ids[0], PROMPT.split(" ", 1)[1]], "n_predict": 1}).json()
    assert mixed["tokens_evaluated"] >= 2
    several = http.post("/completion", json={"prompt": [PROMPT, "1, 2, 3,"], "n_predict": 2, "temperature": 0}).json()
    assert isinstance(several, list) and [r["index"] for r in several] == [0, 1]
    for key in ("tokens", "stop_type", "truncated", "timings", "generation_settings"):
        assert key in by_text
    assert "cache_n" in by_text["timings"] and by_text["truncated"] is False
    multi = client.completions.create(model="x", prompt=[PROMPT, "1, 2, 3,"], max_tokens=2, temperature=0)
    assert [c.index for c in multi.choices] == [0, 1]


def test_timings_per_token(http):
    with http.stream("POST", "/completion", json={"prompt": PROMPT, "n_predict": 4, "stream": True,
                                                  "timings_per_token": True}) as r:
        chunks = events(r)
    assert all("timings" in c for c in chunks) and chunks[-1]["stop"] is True
    with http.stream("POST", "/v1/chat/completions", json={"messages": HELLO, "max_tokens": 3, "stream": True,
                                                           "timings_per_token": True}) as r:
        chunks = events(r)
    assert any("timings" in c for c in chunks[1:])


# --- chat details ------------------------------------------------------------------------------------

def test_assistant_prefill_is_continued(http):
    prefill = "The three primary colours are red,"
    r = http.post("/v1/chat/completions", json={"max_tokens": 6, "temperature": 0, "messages": [
        {"role": "user", "content": "What are the primary colours?"}, {"role": "assistant", "content": prefill}]}).json()
    assert r["choices"][0]["message"]["content"] and not r["choices"][0]["message"]["content"].startswith(prefill)
    t = http.post("/apply-template", json={"messages": [
        {"role": "user", "content": "Q"}, {"role": "assistant", "content": prefill}]}).json()["prompt"]
    assert t.endswith(prefill)
    r = http.post("/v1/chat/completions", json={"messages": [
        {"role": "user", "content": "Q"}, {"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}]})
    assert r.status_code == 400


def test_apply_template_and_add_generation_prompt(http):
    with_prompt = http.post("/apply-template", json={"messages": HELLO}).json()["prompt"]
    without = http.post("/apply-template", json={"messages": HELLO, "add_generation_prompt": False}).json()["prompt"]
    assert with_prompt.endswith("<|im_start|>assistant\n") and not without.endswith("assistant\n")


def test_tool_messages_in_the_history(client):
    r = client.chat.completions.create(model="x", max_tokens=8, temperature=0, messages=[
        {"role": "user", "content": "What's the weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
            "name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 C and sunny"}],
        tools=[{"type": "function", "function": {"name": "get_weather", "parameters": {
            "type": "object", "properties": {"city": {"type": "string"}}}}}])
    assert r.choices[0].finish_reason in ("stop", "length", "tool_calls")


WEATHER = [{"type": "function", "function": {"name": "get_weather", "description": "The weather in a city", "parameters": {
    "type": "object", "properties": {"city": {"type": "string", "maxLength": 20}}, "required": ["city"],
    "additionalProperties": False}}}]


def test_tool_choice_required_forces_a_call(client):
    ask = [{"role": "user", "content": "What's the weather in Paris?"}]
    r = client.chat.completions.create(model="x", messages=ask, tools=WEATHER, tool_choice="required",
                                       max_tokens=40, temperature=0)
    assert r.choices[0].finish_reason == "tool_calls"
    call = r.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather" and isinstance(json.loads(call.function.arguments)["city"], str)
    chunks = list(client.chat.completions.create(
        model="x", messages=ask, tools=WEATHER, max_tokens=40, temperature=0, stream=True,
        tool_choice={"type": "function", "function": {"name": "get_weather"}}))
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert [tc.function.name for tc in calls] == ["get_weather"] and chunks[-1].choices[0].finish_reason == "tool_calls"


def test_anthropic_tool_use(server):
    c = anthropic.Anthropic(base_url=server.url, api_key=KEY, max_retries=0)
    m = c.messages.create(model="x", max_tokens=40, messages=[{"role": "user", "content": "Weather in Oslo?"}],
                          tools=[{"name": "get_weather", "description": "The weather in a city",
                                  "input_schema": WEATHER[0]["function"]["parameters"]}],
                          tool_choice={"type": "any"}, extra_body={"temperature": 0})
    assert m.stop_reason == "tool_use"
    use = [b for b in m.content if b.type == "tool_use"][0]
    assert use.name == "get_weather" and isinstance(use.input["city"], str)


# --- endpoints ------------------------------------------------------------------------------------------

def test_slots_metrics(http):
    slots = http.get("/slots").json()
    assert [s["id"] for s in slots] == [0, 1] and all(s["n_ctx"] == N_CTX for s in slots)
    text = http.get("/metrics").text
    assert "llamacpp:prompt_tokens_total" in text and "llamacpp:tokens_predicted_total" in text


def test_slot_save_restore_erase(http, slot_dir):
    body = {"prompt": "A slot to keep: one two three", "n_predict": 8, "temperature": 0, "id_slot": 0}
    first = http.post("/completion", json=body).json()
    saved = http.post("/slots/0?action=save", json={"filename": "keep.bin"}).json()
    assert saved["n_saved"] > 0 and (slot_dir / "keep.bin").exists()
    assert http.post("/slots/0?action=erase").json()["n_erased"] == saved["n_saved"]
    http.post("/completion", json={**body, "prompt": "Something else entirely, to overwrite the slot's cache"})
    http.post("/slots/0?action=erase")
    restored = http.post("/slots/0?action=restore", json={"filename": "keep.bin"}).json()
    assert restored["n_restored"] == saved["n_saved"]
    again = http.post("/completion", json=body).json()
    assert again["tokens_cached"] == first["tokens_evaluated"] - 1  # all but the last prompt token, from the file
    assert again["content"] == first["content"]                      # the restored keys read as they were saved
    assert http.post("/slots/0?action=save", json={"filename": "../escape"}).status_code == 400
    assert http.post("/slots/0?action=restore", json={"filename": "missing.bin"}).status_code == 404
    assert http.post("/slots/9?action=erase").status_code == 400
    assert http.post("/slots/0?action=fly").status_code == 400


def test_embeddings(client, http):
    r = client.embeddings.create(model="x", input=["The cat sat.", "A dog ran."])
    assert len(r.data) == 2
    for d in r.data:
        assert len(d.embedding) == N_EMBD and abs(math.sqrt(sum(x * x for x in d.embedding)) - 1) < 1e-4
    assert r.data[0].embedding != r.data[1].embedding
    native = http.post("/embedding", json={"content": "The cat sat.", "embd_normalize": -1}).json()
    vec = native[0]["embedding"][0]
    assert len(vec) == N_EMBD and abs(math.sqrt(sum(x * x for x in vec)) - 1) > 1e-3  # not normalised


def test_infill_needs_fim_tokens(http):
    r = http.post("/infill", json={"input_prefix": "def f():", "input_suffix": "\n"})
    assert r.status_code == 400 and "fill-in-the-middle" in r.json()["error"]["message"]


def test_responses_api(client):
    greedy = {"temperature": 0, "extra_body": {"cache_prompt": False}}
    r = client.responses.create(model="x", input="Say hello.", max_output_tokens=8, **greedy)
    assert r.output_text and r.usage.output_tokens <= 8 and r.output[0].type == "message"
    stream = list(client.responses.create(model="x", input="Say hello.", max_output_tokens=8, stream=True, **greedy))
    kinds = [e.type for e in stream]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
    assert text == r.output_text


def test_anthropic_messages(server):
    c = anthropic.Anthropic(base_url=server.url, api_key=KEY, max_retries=0)
    # (this client version no longer takes temperature itself; no prefix reuse, as in test_server.py's
    # stream-vs-whole comparison, until evaluation is batch-invariant)
    greedy = {"extra_body": {"temperature": 0, "cache_prompt": False}}
    m = c.messages.create(model="claude-sonnet-4", max_tokens=8, system="Answer briefly.",
                          messages=[{"role": "user", "content": "Hi"}], **greedy)
    assert m.role == "assistant" and m.content[0].type == "text" and m.content[0].text
    assert m.stop_reason in ("end_turn", "max_tokens") and m.usage.output_tokens <= 8
    with c.messages.stream(model="x", max_tokens=8, system="Answer briefly.",
                           messages=[{"role": "user", "content": "Hi"}], **greedy) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == m.content[0].text and final.stop_reason == m.stop_reason
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(base_url=server.url, api_key="wrong", max_retries=0).messages.create(
            model="x", max_tokens=4, messages=[{"role": "user", "content": "Hi"}])


# --- bad values of the new fields ---------------------------------------------------------------------

CHAT, NATIVE = "/v1/chat/completions", "/completion"
BAD = [
    (CHAT, {"messages": HELLO, "response_format": {"type": "xml"}}),
    (CHAT, {"messages": HELLO, "response_format": "json"}),
    (CHAT, {"messages": HELLO, "response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "bogus"}}}}),
    (CHAT, {"messages": HELLO, "response_format": {"type": "json_schema", "json_schema": {"schema": 5}}}),
    (NATIVE, {"prompt": "x", "json_schema": "object"}),
    (NATIVE, {"prompt": "x", "grammar": "root ::= ("}),
    (NATIVE, {"prompt": "x", "grammar": 12}),
    (NATIVE, {"prompt": "x", "grammar": "root ::= other"}),
    (CHAT, {"messages": HELLO, "tools": "all"}),
    (CHAT, {"messages": HELLO, "tools": [{"type": "function"}]}),
    (CHAT, {"messages": HELLO, "tools": [{"type": "function", "function": {"name": "f", "parameters": 3}}]}),
    (CHAT, {"messages": HELLO, "tool_choice": "always"}),
    (CHAT, {"messages": HELLO, "tool_choice": {"type": "function", "function": {"name": "nope"}}}),
    (CHAT, {"messages": HELLO, "parallel_tool_calls": "yes"}),
    (CHAT, {"messages": [{"role": "assistant", "tool_calls": "x"}]}),
    (CHAT, {"messages": HELLO, "logprobs": "yes"}),
    (CHAT, {"messages": HELLO, "logprobs": True, "top_logprobs": 50}),
    (NATIVE, {"prompt": "x", "n_probs": -1}),
    (NATIVE, {"prompt": "x", "post_sampling_probs": 1}),
    (NATIVE, {"prompt": "x", "logit_bias": [[1]]}),
    (NATIVE, {"prompt": "x", "logit_bias": [[10**9, 1]]}),
    (NATIVE, {"prompt": "x", "logit_bias": {"1": "high"}}),
    (NATIVE, {"prompt": "x", "logit_bias": 5}),
    (CHAT, {"messages": HELLO, "n": 0}),
    (CHAT, {"messages": HELLO, "n": 5}),
    (NATIVE, {"prompt": "x", "ignore_eos": "yes"}),
    (NATIVE, {"prompt": "x", "cache_prompt": 1}),
    (NATIVE, {"prompt": "x", "id_slot": 7}),
    (NATIVE, {"prompt": "x", "id_slot": "a"}),
    (NATIVE, {"prompt": "x", "timings_per_token": "no"}),
    (NATIVE, {"prompt": [[[1]]]}),
    (NATIVE, {"prompt": []}),
    (CHAT, {"messages": HELLO, "add_generation_prompt": "no"}),
    (CHAT, {"messages": HELLO, "continue_final_message": True}),
    (CHAT, {"messages": HELLO, "chat_template_kwargs": [1]}),
    ("/apply-template", {"messages": "hi"}),
    ("/infill", {"input_prefix": 3}),
    ("/v1/embeddings", {"input": 5}),
    ("/v1/embeddings", {"input": "x", "encoding_format": "hex"}),
    ("/embedding", {"content": None}),
    ("/v1/responses", {"input": 3}),
    ("/v1/responses", {"input": [{"type": "image"}]}),
    ("/v1/responses", {"input": "x", "tools": [{"type": "web_search"}]}),
    ("/v1/messages", {"messages": HELLO}),
    ("/v1/messages", {"max_tokens": 4, "messages": [{"role": "system", "content": "x"}]}),
    ("/v1/messages", {"max_tokens": 4, "messages": HELLO, "tool_choice": {"type": "maybe"}}),
    ("/v1/messages", {"max_tokens": 0, "messages": HELLO}),
    ("/slots/0?action=save", {"filename": 5}),
]


def test_bad_values_of_new_fields_are_4xx_json(server, http):
    failures = []
    for path, body in BAD:
        r = http.post(path, json=body)
        try:
            e = r.json()["error"]
            ok = 400 <= r.status_code < 500 and (e.get("message") or e.get("type"))
        except (ValueError, KeyError, TypeError):
            ok = False
        if not ok:
            failures.append(f"{path} {json.dumps(body)[:100]}: {r.status_code} {r.text[:200]}")
    assert not failures, "\n".join(failures)
    assert httpx.get(server.url + "/health").status_code == 200


# --- the switches: --no-slots, no --metrics / --embedding, a --host list, --cors-origins ------------------

def test_switches_on_a_second_server():
    with running_server("--no-slots", "--host", "127.0.0.1,::1", "--cors-origins", "https://app.example",
                        ctx_size=256) as s:
        port = s.url.rsplit(":", 1)[1]
        assert httpx.get(s.url + "/slots").status_code == 501
        assert httpx.get(s.url + "/metrics").status_code == 501
        assert httpx.post(s.url + "/v1/embeddings", json={"input": "x"}).status_code == 501
        assert httpx.get(f"http://[::1]:{port}/health").status_code == 200
        ask = {"Access-Control-Request-Method": "POST"}
        r = httpx.options(s.url + "/v1/chat/completions", headers={"Origin": "https://app.example", **ask})
        assert r.headers.get("access-control-allow-origin") == "https://app.example"
        r = httpx.options(s.url + "/v1/chat/completions", headers={"Origin": "http://localhost:3000", **ask})
        assert "access-control-allow-origin" not in r.headers
        assert free_port()  # the helper still works alongside


# --- pieces, in process --------------------------------------------------------------------------------------

def test_tool_call_parsing():
    from llamafile.server.tools import parse_tool_calls
    tools = [{"type": "function", "function": {"name": "get_weather"}}]
    content, calls = parse_tool_calls('Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": '
                                      '{"city": "Paris"}}\n</tool_call>', tools)
    assert content == "Let me check." and calls[0]["function"]["name"] == "get_weather"
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Paris"}
    _, calls = parse_tool_calls('{"name": "get_weather", "parameters": {"city": "Rome"}}', tools)  # Llama 3.x
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Rome"}
    _, calls = parse_tool_calls('```json\n{"tool_call": {"name": "get_weather", "arguments": {"city": "Oslo"}}}\n```',
                                tools)  # generic
    assert calls and calls[0]["id"].startswith("call_")
    assert parse_tool_calls('{"name": "other", "arguments": {}}', tools) == ('{"name": "other", "arguments": {}}', [])
    assert parse_tool_calls("Just text.", tools) == ("Just text.", [])


def test_tool_call_stream_holds_back_what_may_be_a_call():
    from llamafile.server.tools import ToolCallStream
    tools = [{"type": "function", "function": {"name": "f"}}]
    s = ToolCallStream(tools)
    sent = "".join(s.add(p) for p in ["Sure. ", "<tool", "_call>", '{"name": "f", ', '"arguments": {}}', "</tool_call>"])
    assert sent == "Sure. "
    rest, calls = s.finish()
    assert rest == "" and calls[0]["function"]["name"] == "f"
    s = ToolCallStream(tools)
    assert "".join(s.add(p) for p in ["Hello", " there"]) == "Hello there" and s.finish() == ("", [])
    s = ToolCallStream(tools)
    assert s.add("{not json") == "" and s.finish() == ("{not json", [])


def test_logit_bias_validation():
    from llamafile.server.errors import APIError
    from llamafile.server.validate import get_logit_bias
    tok = {"hi": [5, 6]}.get
    assert get_logit_bias({"logit_bias": {"3": 1.5}}, 10) == {3: 1.5}
    assert get_logit_bias({"logit_bias": [[3, False], ["hi", 2]]}, 10, tok) == {3: -math.inf, 5: 2.0, 6: 2.0}
    with pytest.raises(APIError):
        get_logit_bias({"logit_bias": {"3": float("nan")}}, 10)
