"""The server when its surroundings fail: SIGTERM in the middle of requests, the model file deleted or
truncated under the running server (the weights are mmapped). Each test starts its own server (SmolLM2,
subprocess on 127.0.0.1) and ends within a few seconds of its load."""
from __future__ import annotations

import json
import signal
import threading
import time

import httpx
import pytest

from serve_for_tests import running_server

LONG = {"prompt": "Once upon a time", "n_predict": 400, "ignore_eos": True, "temperature": 0}


def wait_busy(url: str, n: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while sum(s["is_processing"] for s in httpx.get(url + "/slots").json()) < n:
        assert time.monotonic() < deadline, "the requests did not start"
        time.sleep(0.02)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_mid_stream_ends_every_request_and_the_server_exits(sig):
    """SIGTERM (or Ctrl-C's SIGINT) while a stream runs on one slot, a whole reply is computed on the other and a third request
    waits: the stream gets an error event and closes, the others a 503 JSON error, nothing hangs, the
    process exits at once (uvicorn re-raises the signal: status -15 for SIGTERM) and its log holds no
    traceback."""
    with running_server("--parallel", "2", "-t", "1", ctx_size=1024) as server:
        replies: dict[str, httpx.Response] = {}

        def whole(name: str) -> None:
            replies[name] = httpx.post(server.url + "/completion", json=LONG, timeout=60)

        threads = [threading.Thread(target=whole, args=(name,)) for name in ("running", "waiting")]
        threads[0].start()
        wait_busy(server.url, 1)
        events, signalled, queued = [], None, False
        with httpx.stream("POST", server.url + "/v1/chat/completions", timeout=60, json={
                "messages": [{"role": "user", "content": "Tell me a long story."}], "max_tokens": 400,
                "stream": True}) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if line.startswith("data: "):
                    events.append(line[6:])
                if len(events) == 1 and not queued:
                    queued = True
                    threads[1].start()  # both slots are busy: it waits in the queue
                    time.sleep(0.3)
                if len(events) == 4 and signalled is None:
                    server.process.send_signal(sig)
                    signalled = time.monotonic()
        ended = time.monotonic() - signalled
        for t in threads:
            t.join(30)
        code = server.process.wait(10)
        exited = time.monotonic() - signalled
        log = server.log()
    assert ended < 5 and exited < 10, (ended, exited)
    assert events[-1] == "[DONE]" and json.loads(events[-2])["error"]["code"] == "shutting_down", events[-3:]
    for name in ("running", "waiting"):
        r = replies[name]
        assert r.status_code == 503 and r.json()["error"]["code"] == "shutting_down", (name, r.text)
    assert code in (0, -sig), code
    assert "Traceback" not in log and "Error" not in log, log
