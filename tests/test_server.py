"""The HTTP server, as clients use it: the official openai client and raw HTTP against a real
server (subprocess, SmolLM2, context 512, two slots, an API key)."""
from __future__ import annotations

import contextlib
import json
import socket
import threading
import time

import httpx
import openai
import pytest

from conftest import read_jsonl
from llamafile.server import MAX_BODY, Job, QueueFull, Scheduler, Slot, StopText, bind
from llamafile.sampling import SamplingParams
from serve_for_tests import running_server

KEY = "test-key-123"
MODEL = "smollm2-135m-instruct"
N_CTX = 512  # per slot: -c is the total, split across the two slots


@pytest.fixture(scope="module")
def server():
    with running_server("--parallel", "2", "--queue", "16", api_key=KEY, ctx_size=2 * N_CTX) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, headers=server.headers, timeout=60) as c:
        yield c


def busy_slots(http) -> int:
    return sum(s["is_processing"] for s in http.get("/slots").json())


def wait_idle(http, timeout: float) -> float:
    """Seconds until no slot is busy (fails after timeout)."""
    start = time.monotonic()
    while busy_slots(http):
        assert time.monotonic() - start < timeout, http.get("/slots").json()
        time.sleep(0.02)
    return time.monotonic() - start


# --- the server itself -----------------------------------------------------------------------

def test_health_says_loading_then_ok(server):
    assert server.health[0] == (503, {"status": "loading model"}), server.health[:3]
    r = httpx.get(server.url + "/health")  # no key needed
    assert r.status_code == 200 and r.json()["status"] == "ok"
    assert "listening on " + server.url in server.log()


def test_web_page_is_served_without_a_key(server):
    r = httpx.get(server.url + "/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "<title>llamafile</title>" in r.text and "/v1/chat/completions" in r.text


def test_wrong_or_missing_key_is_401(server):
    wrong = openai.OpenAI(base_url=server.url + "/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=1)
    for path in ("/slots", "/props"):
        r = httpx.get(server.url + path)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert r.json()["error"]["type"] == "authentication_error"


def test_models_list(client):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert models.data[0].object == "model"


# --- completions -------------------------------------------------------------------------------

def test_chat_completion(client):
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}],
                                       max_tokens=16, temperature=0)
    assert r.id.startswith("chatcmpl-") and r.object == "chat.completion" and r.model == MODEL
    choice = r.choices[0]
    assert choice.message.role == "assistant" and choice.message.content.startswith("Hello")
    assert choice.finish_reason in ("stop", "length")
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert 0 < r.usage.completion_tokens <= 16


def test_chat_completion_stream_matches_non_stream(client):
    kwargs = dict(model=MODEL, max_tokens=12, temperature=0,
                  messages=[{"role": "system", "content": "Answer briefly."},
                            {"role": "user", "content": [{"type": "text", "text": "What is the capital of France?"}]}])
    whole = client.chat.completions.create(**kwargs)
    chunks = list(client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == [whole.choices[0].finish_reason]
    assert not chunks[-1].choices and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert len({c.id for c in chunks}) == 1 and chunks[0].object == "chat.completion.chunk"


def test_same_greedy_request_same_answer_in_every_order_and_mode(server, client):
    """Issue 15: the answer to a greedy request never depends on what the slots held before (the prefix
    reused or not, after a request sharing part of it), on streaming, or on the other slot being busy."""
    system = {"role": "system", "content": "You are a helpful assistant. Answer in two sentences."}
    ask = dict(model=MODEL, max_tokens=40, temperature=0,
               messages=[system, {"role": "user", "content": "Why is the sky blue?"}])

    def answer(stream=False):
        if not stream:
            return client.chat.completions.create(**ask).choices[0].message.content
        chunks = client.chat.completions.create(**ask, stream=True)
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    def other(content, max_tokens=24):
        client.chat.completions.create(model=MODEL, max_tokens=max_tokens, temperature=0,
                                       messages=[system, {"role": "user", "content": content}])
    texts = {"first": answer(), "repeated": answer(), "streamed": answer(stream=True)}
    other("Why is the sea salty? Tell me about rivers, rocks and rain, and how long it took.")
    texts["after a shared prefix"] = answer()
    client.chat.completions.create(model=MODEL, max_tokens=8, temperature=0, messages=[
        *ask["messages"], {"role": "assistant", "content": texts["first"]}, {"role": "user", "content": "Shorter?"}])
    texts["after its own longer conversation"] = answer()
    busy = threading.Thread(target=other, args=("Count from 1 to 60.", 120))
    busy.start()
    texts["beside a busy slot"] = answer(stream=True)
    busy.join()
    assert len(set(texts.values())) == 1, texts
    assert len(texts["first"]) > 40


def test_text_completion_and_stream(client):
    r = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=8, temperature=0)
    assert r.object == "text_completion" and "Paris" in r.choices[0].text
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 8
    pieces = list(client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=8,
                                            temperature=0, stream=True))
    assert "".join(p.choices[0].text for p in pieces) == r.choices[0].text
    assert pieces[-1].choices[0].finish_reason == "length"


def test_stop_strings_end_the_reply_and_are_not_returned(client, http):
    r = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=16, temperature=0,
                                  stop=[" Par", "never"])
    assert r.choices[0].finish_reason == "stop" and "Par" not in r.choices[0].text
    native = http.post("/completion", json={"prompt": "The capital of France is", "n_predict": 16,
                                            "temperature": 0, "stop": ["Paris"]}).json()
    assert native["stop_type"] == "word" and native["stopping_word"] == "Paris" and "Paris" not in native["content"]


def test_native_completion(http):
    body = {"prompt": "The capital of France is", "n_predict": 8, "temperature": 0}
    r = http.post("/completion", json=body).json()
    assert "Paris" in r["content"] and r["stop"] is True and r["tokens_predicted"] == 8
    assert r["tokens_evaluated"] > 0 and r["stop_type"] == "limit" and r["model"] == MODEL
    with http.stream("POST", "/completion", json={**body, "stream": True}) as s:
        events = [json.loads(line[6:]) for line in s.iter_lines() if line.startswith("data: ")]
    assert all(e["stop"] is False for e in events[:-1]) and events[-1]["stop"] is True
    assert "".join(e["content"] for e in events) == r["content"]


def test_tokenize_detokenize(http):
    ids = http.post("/tokenize", json={"content": "Hello world"}).json()["tokens"]
    assert ids and all(isinstance(t, int) for t in ids)
    assert http.post("/detokenize", json={"tokens": ids}).json()["content"] == "Hello world"


def test_small_replies_on_a_kept_connection_are_not_delayed(http):
    """Connections have TCP_NODELAY: without it a reply written in two parts (headers, then body) waits
    for the client's delayed ACK, about 40 ms for every request after the first on a connection."""
    times = []
    for _ in range(6):
        start = time.perf_counter()
        assert http.get("/health").status_code == 200
        times.append(time.perf_counter() - start)
    assert min(times[1:]) < 0.02, times


def test_prompt_longer_than_the_context_is_400(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hello " * 600}])
    assert e.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt="word " * N_CTX, max_tokens=4)
    assert e.value.code == "context_length_exceeded"


def test_huge_max_tokens_is_clamped_to_the_room_left(client, http):
    prompt = "one two three " * 160
    n_prompt = len(http.post("/tokenize", json={"content": prompt, "add_special": True}).json()["tokens"])
    assert N_CTX - 40 < n_prompt < N_CTX
    r = client.completions.create(model=MODEL, prompt=prompt, max_tokens=10**9, temperature=0,
                                  extra_body={"ignore_eos": True})
    assert r.choices[0].finish_reason == "length"
    assert r.usage.prompt_tokens == n_prompt and r.usage.total_tokens == N_CTX


def margin_cut(record, tau=0.5) -> int:
    """Steps before the first one whose reference margin is below tau."""
    return next((k for k, m in enumerate(record["margins"]) if m < tau), len(record["ids"]))


@pytest.mark.parametrize("record", read_jsonl("chat_smollm2.jsonl"), ids=lambda r: r["messages"][-1]["content"][:24])
def test_greedy_chat_matches_llamacpp(client, smollm2, record):
    r = client.chat.completions.create(model=MODEL, messages=record["messages"], temperature=0,
                                       max_tokens=len(record["ids"]))
    assert r.usage.prompt_tokens == len(record["prompt_ids"])
    expected = smollm2.detokenize(record["ids"][:margin_cut(record)])
    assert r.choices[0].message.content.startswith(expected), (r.choices[0].message.content, expected)


# --- load, disconnects ---------------------------------------------------------------------------

def test_eight_concurrent_streams_on_two_slots(server, http):
    results, errors, busy = {}, [], []

    def one(i: int):
        try:
            c = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=120)
            chunks = list(c.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": f"Count from {i} to {i + 20}."}],
                max_tokens=24, temperature=0.7, seed=i, stream=True, stream_options={"include_usage": True}))
            results[i] = chunks
        except Exception as e:  # reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        busy.append(busy_slots(http))
        time.sleep(0.05)
    assert not errors and len(results) == 8
    for chunks in results.values():
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        assert text and finish in (["stop"], ["length"])
        assert 0 < chunks[-1].usage.completion_tokens <= 24
    assert max(busy) == 2  # both slots generated at once


def test_disconnect_mid_stream_frees_the_slot(server, http):
    body = {"messages": [{"role": "user", "content": "Tell me a very long story."}], "max_tokens": 450,
            "ignore_eos": True, "stream": True}
    with contextlib.ExitStack() as streams:
        readers = []  # kept: a reader that is garbage-collected closes its connection
        for _ in range(2):  # one in each slot
            c = streams.enter_context(httpx.Client(base_url=server.url, headers=server.headers, timeout=30))
            r = streams.enter_context(c.stream("POST", "/v1/chat/completions", json=body))
            readers.append(line for line in r.iter_lines() if line.startswith("data: "))
            next(readers[-1]), next(readers[-1])
        assert busy_slots(http) == 2
    assert wait_idle(http, timeout=3) < 3  # unfreed, the two would run for several more seconds
    start = time.monotonic()
    r = http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8})
    assert r.status_code == 200 and time.monotonic() - start < 3


def test_disconnect_without_streaming_frees_the_slot(server, http):
    body = json.dumps({"messages": [{"role": "user", "content": "Tell me a long story."}], "max_tokens": 450,
                       "ignore_eos": True}).encode()
    with socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1]))) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Authorization: Bearer " + KEY.encode() + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        time.sleep(0.5)
    assert wait_idle(http, timeout=3) < 3


# --- bad requests ----------------------------------------------------------------------------------

CHAT = "/v1/chat/completions"
HELLO = [{"role": "user", "content": "hello"}]
BAD_REQUESTS = [
    # (name, method, path, body: dict or raw bytes, expected status)
    ("malformed JSON", "POST", CHAT, b'{"messages": [', 400),
    ("invalid UTF-8", "POST", CHAT, b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}', 400),
    ("empty body", "POST", CHAT, b"", 400),
    ("body not an object", "POST", CHAT, b"[1, 2]", 400),
    ("missing messages", "POST", CHAT, {}, 400),
    ("messages not a list", "POST", CHAT, {"messages": "hello"}, 400),
    ("empty messages", "POST", CHAT, {"messages": []}, 400),
    ("message not an object", "POST", CHAT, {"messages": ["hello"]}, 400),
    ("unknown role", "POST", CHAT, {"messages": [{"role": "wizard", "content": "hi"}]}, 400),
    ("missing content", "POST", CHAT, {"messages": [{"role": "user"}]}, 400),
    ("content a number", "POST", CHAT, {"messages": [{"role": "user", "content": 42}]}, 400),
    ("image content", "POST", CHAT, {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]}, 400),
    ("negative max_tokens", "POST", CHAT, {"messages": HELLO, "max_tokens": -5}, 400),
    ("fractional max_tokens", "POST", CHAT, {"messages": HELLO, "max_tokens": 2.5}, 400),
    ("max_tokens a string", "POST", CHAT, {"messages": HELLO, "max_tokens": "10"}, 400),
    ("temperature hot", "POST", CHAT, {"messages": HELLO, "temperature": "hot"}, 400),
    ("temperature above 2", "POST", CHAT, {"messages": HELLO, "temperature": 3}, 400),
    ("negative temperature", "POST", CHAT, {"messages": HELLO, "temperature": -0.1}, 400),
    ("top_p above 1", "POST", CHAT, {"messages": HELLO, "top_p": 1.5}, 400),
    ("stop a number", "POST", CHAT, {"messages": HELLO, "stop": 42}, 400),
    ("stream a string", "POST", CHAT, {"messages": HELLO, "stream": "yes"}, 400),
    ("stream_options a string", "POST", CHAT, {"messages": HELLO, "stream": True, "stream_options": "all"}, 400),
    ("seed a string", "POST", CHAT, {"messages": HELLO, "seed": "abc"}, 400),
    ("n above the slots", "POST", CHAT, {"messages": HELLO, "n": 3}, 400),
    ("logit_bias not numbers", "POST", CHAT, {"messages": HELLO, "logit_bias": {"abc": "high"}}, 400),
    ("model a number", "POST", CHAT, {"messages": HELLO, "model": 7}, 400),
    ("body over the limit", "POST", CHAT, {"messages": [{"role": "user", "content": "x" * MAX_BODY}]}, 413),
    ("GET on a POST route", "GET", CHAT, None, 405),
    ("unknown path", "GET", "/v1/nothing-here", None, 404),
    ("completion without prompt", "POST", "/v1/completions", {"max_tokens": 4}, 400),
    ("prompt a number", "POST", "/v1/completions", {"prompt": 12}, 400),
    ("prompt nested too deep", "POST", "/v1/completions", {"prompt": [[["a"]]]}, 400),
    ("token id out of range", "POST", "/v1/completions", {"prompt": [1, 10**9]}, 400),
    ("native n_predict below -1", "POST", "/completion", {"prompt": "hi", "n_predict": -7}, 400),
    ("tokenize a number", "POST", "/tokenize", {"content": 5}, 400),
    ("detokenize strings", "POST", "/detokenize", {"tokens": ["a"]}, 400),
]


def test_bad_requests_get_json_errors_and_the_server_stays_up(server, http):
    assert len(BAD_REQUESTS) >= 15
    failures = []
    for name, method, path, body, status in BAD_REQUESTS:
        if isinstance(body, dict):
            r = http.request(method, path, json=body)
        else:
            r = http.request(method, path, content=body, headers={"Content-Type": "application/json"})
        try:
            error = r.json()["error"]
            ok = r.status_code == status and isinstance(error["message"], str) and error["message"] and error["type"]
        except (ValueError, KeyError, TypeError):
            ok = False
        if not ok:
            failures.append(f"{name}: {r.status_code} {r.text[:200]}")
    assert not failures, "\n".join(failures)
    assert httpx.get(server.url + "/health").status_code == 200
    r = http.post(CHAT, json={"messages": HELLO, "max_tokens": 4})
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"]
    assert server.process.poll() is None


# --- pieces, in process ------------------------------------------------------------------------

def test_stop_text_holds_back_a_possible_stop_and_cuts_at_it():
    s = StopText(["</end>", "STOP"])
    assert s.add("Hello <") == ("Hello ", None)      # "<" may begin "</end>"
    assert s.add("/e") == ("", None)
    assert s.add("x") == ("</ex", None)               # it did not
    assert s.add(" ST") == (" ", None)
    assert s.add("OP and more") == ("", "STOP")
    assert s.text == "Hello </ex " and s.flush() == ""
    assert StopText([]).add("abc") == ("abc", None)


def test_queue_bound():
    sched = Scheduler(lambda: [], max_queue=1)
    sched.slots = [Slot(0, model=None)]
    job = lambda: Job(prompt_ids=[1], params=SamplingParams(), max_tokens=1)  # noqa: E731
    sched.submit(job())  # takes the free slot
    sched.submit(job())  # waits
    with pytest.raises(QueueFull) as e:
        sched.submit(job())
    assert e.value.status == 503
    queued = sched.waiting[-1]
    sched.cancel(queued)
    assert queued not in sched.waiting and queued.cancelled.is_set()


def test_taken_port_moves_to_the_next_one():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        said = []
        sock = bind("127.0.0.1", port, say=said.append)
        with sock:
            got = sock.getsockname()[1]
    assert got > port and said == [f"llamafile: port {port} is in use, using {got}"]


def in_process_app(status: str, model=None):
    """The app around a State that never loads (no worker), for what needs no model."""
    import argparse

    from starlette.testclient import TestClient

    from llamafile.server import State, create_app
    state = State(argparse.Namespace(), "/nowhere/SmolLM2-135M-Instruct.Q4_1.gguf")
    state.status, state.model = status, model
    return TestClient(create_app(state), raise_server_exceptions=False)


def test_api_answers_503_while_loading():
    app = in_process_app("loading")
    assert app.get("/health").json() == {"status": "loading model"}
    r = app.post(CHAT, json={"messages": HELLO})
    assert r.status_code == 503 and r.json()["error"]["code"] == "model_loading"
    assert app.get("/v1/models").json()["data"][0]["id"] == MODEL  # known before loading


def test_unexpected_exception_is_500_json():
    class Broken:
        def tokenize(self, *args):
            raise RuntimeError("boom")

    r = in_process_app("ok", Broken()).post("/tokenize", json={"content": "hi"})
    assert r.status_code == 500 and "boom" in r.json()["error"]["message"]
