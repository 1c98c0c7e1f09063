"""The server when its surroundings fail: SIGTERM in the middle of requests, the model file deleted or
truncated under the running server (the weights are mmapped). Each test starts its own server (SmolLM2,
subprocess on 127.0.0.1) and ends within a few seconds of its load."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest

from conftest import REPO
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


# --- the model file changed under the running server ----------------------------------------------------

HELLO = {"prompt": "The capital of France is", "n_predict": 4, "temperature": 0}


@pytest.fixture
def model_copy(tmp_path, smollm2_path):
    copy = tmp_path / smollm2_path.name
    shutil.copyfile(smollm2_path, copy)
    return copy


def test_model_file_deleted_while_serving_is_harmless(model_copy):
    """The mapping keeps the inode: the same replies, /health ok."""
    with running_server("-t", "1", model=model_copy) as server:
        before = httpx.post(server.url + "/completion", json=HELLO, timeout=60).json()["content"]
        model_copy.unlink()
        after = httpx.post(server.url + "/completion", json=HELLO, timeout=60)
        assert after.status_code == 200 and after.json()["content"] == before
        assert httpx.get(server.url + "/health").json()["status"] == "ok"
        assert "Traceback" not in server.log()


def test_model_file_truncated_between_requests_is_a_503(model_copy):
    """Each request first checks the mapped file (one fstat): a truncated one is a 503 JSON error naming it,
    /health says so, and the process lives on."""
    with running_server("-t", "1", model=model_copy) as server:
        assert httpx.post(server.url + "/completion", json=HELLO, timeout=60).status_code == 200
        size = model_copy.stat().st_size
        os.truncate(model_copy, size // 2)
        for path, body in [("/completion", HELLO), ("/v1/chat/completions",
                                                     {"messages": [{"role": "user", "content": "Hi"}]})]:
            r = httpx.post(server.url + path, json=body, timeout=60)
            error = r.json()["error"]
            assert r.status_code == 503 and error["code"] == "model_file_changed", r.text
            assert str(model_copy) in error["message"] and "truncated" in error["message"]
        health = httpx.get(server.url + "/health")
        assert health.status_code == 503 and "truncated" in health.json()["error"]
        assert server.process.poll() is None and "Traceback" not in server.log()


def test_model_file_truncated_mid_stream_ends_the_stream(model_copy):
    """Truncated while a reply streams, one of two things, neither a hang: the worker's check before the
    next token sees it first (here, most runs): the stream ends with the 503 error event and the server
    lives on; or a read inside a forward pass hits a lost page: SIGBUS, and the process ends at once with
    one line naming the file (status 135, no core dump, no traceback) while the client's stream is cut."""
    with running_server("-t", "1", model=model_copy) as server:
        events = []
        try:
            with httpx.stream("POST", server.url + "/completion", json={**LONG, "stream": True}, timeout=30) as r:
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        events.append(json.loads(line[6:]))
                    if len(events) == 3:
                        os.truncate(model_copy, 4096)
        except httpx.RemoteProtocolError:
            pass  # the server died mid-response
        time.sleep(0.2)
        if server.process.poll() is None:
            assert events[-1]["error"]["code"] == "model_file_changed", events[-1]
            assert httpx.post(server.url + "/completion", json=HELLO, timeout=60).status_code == 503
            assert "Traceback" not in server.log()
            return
        code = server.process.wait(10)
        log = server.log().strip()
    assert code == 128 + signal.SIGBUS, (code, log)
    assert log.splitlines()[-1].startswith(f"llamafile: fatal: the model file {model_copy} changed on disk")
    assert "Traceback" not in log and "core dumped" not in log


def test_sigbus_handler_prints_one_line_and_exits(tmp_path):
    """install_sigbus_message, alone: a Numba kernel reading a truncated mapping."""
    data = tmp_path / "weights.bin"
    data.write_bytes(b"\1" * (1 << 20))
    script = f"""
import os, numpy as np
from numba import njit
from llamafile.server.mapping import install_sigbus_message
@njit
def total(a):
    s = 0
    for x in a:
        s += x
    return s
install_sigbus_message({str(data)!r})
m = np.memmap({str(data)!r}, dtype=np.uint8, mode="r")
assert total(m) == 1 << 20
os.truncate({str(data)!r}, 4096)
total(m)
print("not reached")
"""
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert p.returncode == 128 + signal.SIGBUS, (p.returncode, p.stderr)
    assert p.stderr == f"llamafile: fatal: the model file {data} changed on disk while mapped (truncated?): " \
                       "its weights cannot be read\n" and p.stdout == ""
