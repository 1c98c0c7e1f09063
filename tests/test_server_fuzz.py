"""The server under fuzzing: a few thousand generated requests against a real server (subprocess on
127.0.0.1, SmolLM2, two slots, every optional endpoint on), as one hypothesis property.

Where the requests come from. The endpoints, their methods and their path and query parameters are read
from the server's own OpenAPI schema (FastAPI's app.openapi(), built in-process from the same routes; the
server does not publish it). That schema says nothing about the bodies: every handler reads a raw JSON
object and checks it field by field (validate.py), so the bodies come from hand-written hypothesis
strategies, one per endpoint: a valid request, then mutations of it: a field set to a wrong type, a huge
or negative number (1e20, -2**63, 1e308), NaN or Infinity, a lone surrogate ("\\ud800"), a unicode digit
("²" as a logit_bias key), nested junk, a field left out; or the body replaced by a non-object, broken or
non-UTF-8 JSON, JSON nested too deep; or a wrong method, an unknown path, a missing or wrong API key.

The property: no 5xx; every 4xx is a JSON error of the API's shape ({"error": {"message", ...}}, and
Anthropic's {"type": "error", ...} for /v1/messages); a streamed 200 carries no internal error. Afterwards
/health is ok and the server's log holds no traceback.

Bounded in time (about a minute here, on a shared machine): the server's -n 4 and 128 tokens per slot
cap what a valid request without a limit (or with a huge one) generates, the strategies draw token limits
of 0 to 4, the server runs one thread, and hypothesis does not shrink (a failure is reported as generated).
What fuzzing found once is replayed first (FOUND), whatever the seed. LLAMAFILE_FUZZ_SEED picks another seed (the default is fixed, so that
CI runs the same requests each time); LLAMAFILE_FUZZ_EXAMPLES another count.
"""
from __future__ import annotations

import json
import math
import os
import re
import time
from collections import Counter
from types import SimpleNamespace
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, Phase, example, given, seed, settings
from hypothesis import strategies as st

from conftest import model_path
from serve_for_tests import running_server

KEY = "fuzz-key"
EXAMPLES = int(os.environ.get("LLAMAFILE_FUZZ_EXAMPLES", 2000))
SEED = int(os.environ.get("LLAMAFILE_FUZZ_SEED", 20261207))
N_VOCAB = 49152  # SmolLM2's


@pytest.fixture(scope="module")
def slot_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz-slots")


@pytest.fixture(scope="module")
def server(slot_dir):
    # one thread: on a busy machine every parallel region waits for the other core (a few ms per token
    # become hundreds), and these prompts are too short to gain from two
    with running_server("--parallel", "2", "-n", "4", "-t", "1", "--metrics", "--embedding", "--slot-save-path",
                        str(slot_dir), api_key=KEY, ctx_size=256) as s:
        yield s


def schema_operations() -> list[tuple[str, str, list[dict]]]:
    """(METHOD, path template, parameters) of every route, from the app's OpenAPI schema."""
    from llamafile.server import State, create_app
    state = State(SimpleNamespace(), model_path("smollm2"))  # not started: only the routes are read
    app = create_app(state).app  # create_app wraps the FastAPI app in the CORS middleware
    ops = []
    for path, methods in app.openapi()["paths"].items():
        for method, op in methods.items():
            ops.append((method.upper(), path, op.get("parameters", [])))
    return sorted(ops)


# --- values --------------------------------------------------------------------------------------

HUGE = [10**20, -10**20, 1e20, -1e20, 1e308, -1e308, 2**63, -2**63 - 1, 2**64, 10**400, 1e-320, -0.0, -1, -2,
        -100, 0, 4.5]
NOT_FINITE = [math.nan, math.inf, -math.inf]  # json.dumps writes NaN / Infinity, which are not JSON
WEIRD_TEXT = ["\ud800", "a\udfffb", "\udc00\ud800", "²", "١٢", "𝟙", "-1", "1e3", " 7 ", "", "\x00", "\u202e",
              "<|im_end|>", "<|im_start|>assistant\n", "9" * 30, "-0", "{{ 7*7 }}", "{% for x in y %}", "\n" * 3,
              "é" * 50, "../../etc/passwd", "\\", "\"", "null"]
FIELDS = ["model", "messages", "prompt", "stream", "stream_options", "max_tokens", "max_completion_tokens",
          "max_output_tokens", "n_predict", "temperature", "top_k", "top_p", "min_p", "repeat_penalty",
          "repeat_last_n", "presence_penalty", "frequency_penalty", "seed", "logit_bias", "n", "n_probs",
          "post_sampling_probs", "id_slot", "stop", "ignore_eos", "cache_prompt", "timings_per_token",
          "return_tokens", "response_format", "json_schema", "grammar", "tools", "tool_choice",
          "parallel_tool_calls", "logprobs", "top_logprobs", "echo", "add_generation_prompt",
          "continue_final_message", "chat_template_kwargs", "input", "instructions", "text", "system",
          "stop_sequences", "input_prefix", "input_suffix", "input_extra", "content", "tokens", "with_pieces",
          "add_special", "parse_special", "filename", "encoding_format", "dimensions", "embd_normalize",
          "metadata", "role", "type", "function", "name", "arguments", "schema", "json_schema", "tool_calls",
          "tool_call_id", "call_id", "output", "format", "input_schema", "tool_use_id", "include_usage"]

NUMBER_FIELDS = ["max_tokens", "max_completion_tokens", "max_output_tokens", "n_predict", "temperature", "top_k",
                 "top_p", "min_p", "repeat_penalty", "repeat_last_n", "presence_penalty", "frequency_penalty", "seed",
                 "n", "n_probs", "id_slot", "logprobs", "top_logprobs", "dimensions", "embd_normalize"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.sampled_from(HUGE + NOT_FINITE),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
                    st.sampled_from(WEIRD_TEXT))
junk = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=6), inner, max_size=4),
                    max_leaves=12)
small_text = st.one_of(st.sampled_from(["Hi", "The capital of France is", "1, 2, 3,", "Say a word.", " "]),
                       st.text(max_size=16), st.sampled_from(WEIRD_TEXT))
limit = st.integers(0, 4)
token_id = st.integers(0, N_VOCAB - 1)


def optional(**fields) -> st.SearchStrategy[dict]:
    """A dict holding any subset of these fields."""
    return st.fixed_dictionaries({}, optional=fields)


sampling = optional(
    temperature=st.sampled_from([0, 0.0, 0.7, 1, 2]), top_k=st.integers(0, 50), top_p=st.floats(0, 1),
    min_p=st.floats(0, 1), repeat_penalty=st.floats(0, 2), repeat_last_n=st.integers(-1, 64),
    presence_penalty=st.floats(-2, 2), frequency_penalty=st.floats(-2, 2), seed=st.integers(-1, 2**32),
    stop=st.one_of(small_text, st.lists(small_text, max_size=3)),
    logit_bias=st.one_of(
        st.dictionaries(st.one_of(token_id.map(str), st.sampled_from(["²", "١", "-1", " 5", "hello", "1e3"])),
                        st.one_of(st.floats(-100, 100), st.just(False)), max_size=3),
        st.lists(st.tuples(st.one_of(token_id, small_text), st.one_of(st.floats(-5, 5), st.just(False)))
                 .map(list), max_size=3)),
    cache_prompt=st.booleans(), model=st.sampled_from(["gpt-4o", "x", ""]),
)
SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
constraint = optional(response_format=st.sampled_from([{"type": "json_object"}, {"type": "text"},
                                                       {"type": "json_schema", "json_schema": {"schema": SCHEMA}}]))
grammar = optional(grammar=st.sampled_from(['root ::= "a"+', 'root ::= [0-9]{1,3}', "root ::= x", "nonsense"]),
                   json_schema=st.sampled_from([SCHEMA, {"type": "nope"}]))

role = st.sampled_from(["system", "user", "assistant", "developer", "tool"])
message = st.fixed_dictionaries({"role": role, "content": st.one_of(
    small_text, st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": small_text}), max_size=2))})
messages = st.lists(message, min_size=1, max_size=3)
prompt = st.one_of(small_text, st.lists(token_id, min_size=1, max_size=8),
                   st.lists(small_text, min_size=1, max_size=2), st.lists(st.one_of(token_id, small_text), max_size=4))


def merged(*parts) -> st.SearchStrategy[dict]:
    return st.tuples(*parts).map(lambda ds: {k: v for d in ds for k, v in d.items()})


chat = merged(st.fixed_dictionaries({"messages": messages, "max_tokens": st.integers(1, 4)}), sampling, constraint,
              optional(stream=st.booleans(), stream_options=st.just({"include_usage": True}), n=st.integers(1, 2),
                       logprobs=st.booleans(), top_logprobs=st.integers(0, 3), tools=st.just(TOOLS),
                       tool_choice=st.sampled_from(["auto", "none", "required"]), parallel_tool_calls=st.booleans(),
                       add_generation_prompt=st.booleans(), continue_final_message=st.booleans(),
                       chat_template_kwargs=st.just({"x": 1}), timings_per_token=st.booleans()))
oai_completion = merged(st.fixed_dictionaries({"prompt": prompt, "max_tokens": st.integers(1, 4)}), sampling,
                        optional(stream=st.booleans(), echo=st.booleans(), logprobs=st.integers(0, 3),
                                 n=st.integers(1, 2)))
native_completion = merged(st.fixed_dictionaries({"prompt": prompt, "n_predict": limit}), sampling, grammar,
                           optional(stream=st.booleans(), n_probs=st.integers(0, 3), post_sampling_probs=st.booleans(),
                                    id_slot=st.integers(-1, 1), return_tokens=st.booleans(),
                                    timings_per_token=st.booleans()))
infill = merged(st.fixed_dictionaries({"n_predict": limit}),
                optional(input_prefix=small_text, input_suffix=small_text, prompt=small_text, stream=st.booleans(),
                         input_extra=st.lists(st.fixed_dictionaries({"filename": small_text, "text": small_text}),
                                              max_size=2)))
responses = merged(st.fixed_dictionaries({"input": st.one_of(small_text, st.lists(
    st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system"]), "content": small_text}),
    min_size=1, max_size=2)), "max_output_tokens": st.integers(1, 4)}),
    optional(instructions=small_text, stream=st.booleans(), temperature=st.floats(0, 2),
             text=st.just({"format": {"type": "json_schema", "schema": SCHEMA}})))
anthropic_message = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant"]), "content": st.one_of(
    small_text, st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": small_text}), max_size=2))})
anthropic = merged(st.fixed_dictionaries({"messages": st.lists(anthropic_message, min_size=1, max_size=3),
                                          "max_tokens": st.integers(1, 4)}),
                   optional(system=small_text, stream=st.booleans(), stop_sequences=st.lists(small_text, max_size=2),
                            temperature=st.floats(0, 1), tool_choice=st.just({"type": "auto"}),
                            tools=st.just([{"name": "f", "input_schema": {"type": "object"}}])))
BODIES = {
    "/v1/chat/completions": chat, "/chat/completions": chat,
    "/v1/completions": oai_completion,
    "/completion": native_completion, "/completions": native_completion,
    "/infill": infill,
    "/v1/responses": responses,
    "/v1/messages": anthropic, "/v1/messages/count_tokens": anthropic,
    "/apply-template": merged(st.fixed_dictionaries({"messages": messages}),
                              optional(add_generation_prompt=st.booleans())),
    "/v1/embeddings": optional(input=st.one_of(small_text, st.lists(small_text, max_size=3), st.lists(token_id)),
                               encoding_format=st.sampled_from(["float", "base64"]), dimensions=st.integers(1, 8)),
    "/embedding": optional(content=st.one_of(small_text, st.lists(token_id, max_size=8)),
                           embd_normalize=st.integers(-1, 3)),
    "/tokenize": merged(st.fixed_dictionaries({"content": small_text}),
                        optional(with_pieces=st.booleans(), add_special=st.booleans(), parse_special=st.booleans())),
    "/detokenize": st.fixed_dictionaries({"tokens": st.lists(token_id, max_size=8)}),
    "/slots/{id_slot}": optional(filename=st.sampled_from(["a.bin", "b", "../x", "", "a/b", "ok-1.npz"])),
}
BODIES["/embeddings"] = BODIES["/v1/embeddings"]
PATH_VALUES = {"id_slot": st.sampled_from(["0", "1", "2", "-1", "x", "²", "99999999999999999999", "0x1", " 0"]),
               "path": st.sampled_from(["favicon.svg", "vendor/marked.min.js", "../../README.md", "nope.js",
                                        "vendor", "..%2F..%2Fetc/passwd", "", "a" * 300, "\u00e9.js"])}
QUERY_VALUES = {"action": st.sampled_from(["save", "restore", "erase", "", "SAVE", "x", "²"])}


# --- mutations -----------------------------------------------------------------------------------

@st.composite
def mutated(draw, body: dict) -> dict:
    """The body with one to three fields set to junk, removed, or a nested value replaced."""
    body = json.loads(json.dumps(body))  # a copy (the strategies' values may be shared)
    for _ in range(draw(st.integers(1, 3))):
        how = draw(st.sampled_from(["set", "set", "delete", "nested", "huge", "huge"]))
        if how == "delete" and body:
            del body[draw(st.sampled_from(sorted(body)))]
        elif how == "nested":
            holder = body
            for _ in range(4):  # walk down a few levels, then replace what is there
                keys = list(holder) if isinstance(holder, dict) else list(range(len(holder))) \
                    if isinstance(holder, list) else []
                if not keys:
                    break
                key = draw(st.sampled_from(keys))
                if not isinstance(holder[key], (dict, list)) or draw(st.booleans()):
                    holder[key] = draw(junk)
                    break
                holder = holder[key]
        elif how == "huge":
            body[draw(st.sampled_from(NUMBER_FIELDS))] = draw(st.sampled_from(HUGE + NOT_FINITE))
        else:
            body[draw(st.sampled_from(sorted(body) + FIELDS if body else FIELDS))] = draw(junk)
    return body


def encoded(body) -> bytes:
    return json.dumps(body, allow_nan=True).encode()  # ASCII: lone surrogates go as \\ud800 escapes


RAW_BODIES = [b"", b" ", b"{", b"[1, 2]", b"null", b"\"text\"", b"\xff\xfe{}", b"{\"a\": \xc3}", b"{}" * 3,
              b"[" * 100000 + b"]" * 100000, b"{\"seed\": " + b"9" * 5000 + b"}", b"{\"a\": NaN}",
              b"{\"temperature\": Infinity}", b"{\"model\": \"\\ud800\"}", b"\x00"]


@st.composite
def requests(draw, operations):
    """(method, url path, headers, body bytes or None, the route's template)."""
    method, template, params = draw(st.sampled_from(operations))
    path, query = template, {}
    for p in params:
        value = draw(PATH_VALUES.get(p["name"], junk.map(str)) if p["in"] == "path"
                     else QUERY_VALUES.get(p["name"], junk.map(str)))
        if p["in"] == "path":
            path = path.replace("{" + p["name"] + "}", quote(value, safe="/%"))
        elif draw(st.sampled_from([True] * 9 + [False])):
            query[p["name"]] = value
    content = None
    if method == "POST":
        base = draw(BODIES[template])
        kind = draw(st.sampled_from(["valid"] * 35 + ["mutated"] * 57 + ["junk"] * 4 + ["raw"] * 4))
        if kind == "valid":
            content = encoded(base)                   # valid, as far as the strategies know
        elif kind == "mutated":
            content = encoded(draw(mutated(base)))
        elif kind == "junk":
            content = encoded(draw(junk))             # any JSON at all
        else:
            content = draw(st.sampled_from(RAW_BODIES))
    # (sampled_from, not integers(0, 99) < k: hypothesis draws small integers far more often)
    twist = draw(st.sampled_from(["none"] * 48 + ["method", "path"]))
    if twist == "method":
        method = "GET" if method == "POST" else "POST"  # a method the route does not take: 405
    elif twist == "path":
        path = "/v1/" + draw(st.sampled_from(["nope", "chat", "models/x", "completions/1"]))  # 404
    auth = draw(st.sampled_from([("Authorization", f"Bearer {KEY}")] * 30 + [("X-Api-Key", KEY), None,
                                ("Authorization", "Bearer wrong"), ("Authorization", KEY), ("X-Api-Key", "")]))
    headers = {"Content-Type": "application/json"}
    if auth is not None:
        headers[auth[0]] = auth[1]
    if query:
        path += "?" + "&".join(f"{k}={quote(v)}" for k, v in query.items())
    return method, path, headers, content, template


# What the fuzzing found once (each was a 500), sent every run before the generated requests.
AUTH = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
FOUND = [
    ("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "\ud800"}], "max_tokens": 1}),
    ("POST", "/v1/messages", {"messages": [{"role": "user", "content": "a\udfffb"}], "max_tokens": 1}),
    ("POST", "/completion", {"prompt": "Hi", "n_predict": 1, "logit_bias": {"²": 1}}),
    ("POST", "/slots/%C2%B2?action=save", {"filename": "a.bin"}),
    ("POST", "/completion", {"prompt": "Hi", "n_predict": 1, "temperature": 10**400}),
    ("POST", "/v1/completions", {"prompt": "Hi", "max_tokens": 1, "top_p": -10**400}),
    ("POST", "/embedding", {"content": "Hi", "embd_normalize": 10**400}),
    ("POST", "/completion", {"prompt": "Hi", "n_predict": 4, "temperature": 0, "n_probs": 2, "min_p": 0.9,
                             "json_schema": {"type": "object", "properties": {"a": {"type": "integer"}}}}),
    ("POST", "/tokenize", b'{"content": "Hi", "add_special": NaN}'),
    ("POST", "/tokenize", b'{"content": "Hi", "x": ' + b"9" * 5000 + b"}"),
]


def found_examples(test):
    for method, path, body in FOUND:
        content = body if isinstance(body, bytes) else encoded(body)
        test = example((method, path, AUTH, content, re.sub(r"^/slots/[^?]*", "/slots/{id_slot}",
                                                             path.split("?")[0])))(test)
    return test


# --- checks --------------------------------------------------------------------------------------

NOT_JSON_OK = {"/", "/index.html", "/web/{path}", "/metrics"}


def check(method: str, path: str, template: str, r: httpx.Response) -> None:
    where = f"{method} {path} -> {r.status_code}: {r.text[:300]}"
    assert r.status_code < 500, where
    if r.status_code >= 400:
        body = r.json()  # a JSON error, not an HTML page or a bare string
        if path.startswith("/v1/messages"):
            assert body["type"] == "error" and isinstance(body["error"]["message"], str), where
        else:
            error = body["error"]
            assert isinstance(error["message"], str) and error["message"], where
            assert error["type"] != "server_error", where
        return
    if r.headers.get("content-type", "").startswith("text/event-stream"):
        assert "internal_error" not in r.text and "internal error" not in r.text, where
        assert r.text.endswith("\n\n"), where
    elif template not in NOT_JSON_OK and r.status_code != 204:
        r.json()


def test_fuzzed_requests_get_no_5xx_and_json_errors(server):
    operations = schema_operations()
    routes = {template for _, template, _ in operations}
    assert routes - set(BODIES) - {t for m, t, _ in operations if m == "GET"} == set(), \
        "a POST route without a body strategy: add one to BODIES"
    seen: Counter = Counter()
    statuses: Counter = Counter()
    start = time.monotonic()
    # one connection, kept: 2,000 requests on fresh connections would spend their time in TCP set-up
    with httpx.Client(base_url=server.url, timeout=60) as http:

        @seed(SEED)
        @settings(max_examples=EXAMPLES, deadline=None, database=None, phases=[Phase.explicit, Phase.generate],
                  suppress_health_check=list(HealthCheck), print_blob=False)
        @given(requests(operations))
        @found_examples
        def one_request(request):
            method, path, headers, content, template = request
            r = http.request(method, path, headers=headers, content=content)
            seen[template] += 1
            statuses[r.status_code] += 1
            check(method, path, template, r)

        one_request()
        elapsed = time.monotonic() - start
        health = http.get("/health")
    print(f"\n{sum(seen.values())} requests in {elapsed:.1f} s; statuses {dict(sorted(statuses.items()))}")
    assert sum(seen.values()) >= EXAMPLES
    assert set(seen) == routes, routes - set(seen)
    assert statuses[200] > EXAMPLES // 10, statuses  # enough requests got through to the model
    assert health.status_code == 200 and health.json()["status"] == "ok", health.text
    log = server.log()
    assert not re.search(r"Traceback|Exception in ASGI|\bERROR\b", log), log[-3000:]
