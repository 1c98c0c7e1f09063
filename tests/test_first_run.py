"""A new user's first run: the kernels compile once, and while they do the program says so.

The notice on a cheap jitted function (milliseconds), /health while kernels compile, and the real
thing: the CLI with an empty kernel cache (compiles the one-token path, ~10-20 s here), then warm.
"""
from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest
from numba import njit

from conftest import REPO, model_path
from llamafile import progress


def fresh_kernel():
    """A function Numba has never seen (no cache): calling it compiles it."""
    @njit(cache=False)
    def add_one(x):
        return x + 1
    return add_one


def test_notice_only_when_something_compiles():
    out = io.StringIO()
    kernel = fresh_kernel()
    with progress.compile_notice(out, live=False):
        assert kernel(1) == 2
    text = out.getvalue()
    assert f"compiling kernels for {progress.level()} — first run only" in text
    assert "compiled fresh_kernel.add_one in" in text and "compiled 1 kernel in" in text

    out = io.StringIO()
    with progress.compile_notice(out, live=False):
        assert kernel(2) == 3  # compiled already: silent
    assert out.getvalue() == ""


def test_notice_on_a_console_without_unicode_is_ascii():
    out = io.TextIOWrapper(io.BytesIO(), encoding="cp437", write_through=True)
    with progress.compile_notice(out, live=True):
        fresh_kernel()(1)
    text = out.buffer.getvalue().decode("cp437")
    assert f"compiling kernels for {progress.level()} - first run only" in text
    assert "later runs load them from the cache" in text


def test_notice_on_a_terminal_is_one_line_redrawn():
    out = io.StringIO()
    with progress.compile_notice(out, live=True):
        fresh_kernel()(1)
    header, line = out.getvalue().split("\n", 1)
    assert header.endswith("first run only")
    assert line.startswith("\r") and line.rstrip().endswith("later runs load them from the cache")
    assert line.count("\n") == 1  # the summary replaced the spinner on its line


def test_interrupted_compile_is_not_called_done():
    out = io.StringIO()
    with pytest.raises(KeyboardInterrupt):
        with progress.compile_notice(out, live=False):
            fresh_kernel()(1)
            raise KeyboardInterrupt
    assert "stopped after compiling 1 kernel in" in out.getvalue()
    assert "later runs load them" not in out.getvalue()


def test_nested_notices_share_one_display():
    out, other = io.StringIO(), io.StringIO()
    with progress.compile_notice(out, live=False):
        with progress.compile_notice(other, live=False):  # e.g. the server's loader inside the chat's process
            fresh_kernel()(1)
            assert progress.status()["kernels_done"] == 1
    assert other.getvalue() == "" and out.getvalue().count("first run only") == 1
    assert progress.status() is None


def test_health_says_what_compiles_while_loading():
    import argparse

    from starlette.testclient import TestClient

    from llamafile.server import State, create_app
    state = State(argparse.Namespace(), "/nowhere/SmolLM2-135M-Instruct.Q4_1.gguf")  # never loads: no worker
    app = TestClient(create_app(state))
    with progress.compile_notice(io.StringIO(), live=False):
        fresh_kernel()(1)
        body = app.get("/health").json()
    assert body["status"] == "loading model"
    assert body["compiling"]["message"].startswith("compiling kernels for ") and body["compiling"]["kernels_done"] == 1
    assert app.get("/health").json() == {"status": "loading model"}  # nothing compiling: as before


def cli(cache, *args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_")}
    env.update(NUMBA_CACHE_DIR=str(cache), PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "llamafile", "-m", str(model_path("smollm2")), *args],
                          capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL, env=env, cwd=REPO)


def test_fresh_kernel_cache_says_so_and_a_warm_one_does_not(tmp_path):
    """A one-token prompt compiles only the one-token path; the compile is load time, not prompt time."""
    first = cli(tmp_path, "-p", "hi", "-n", "2", "--temp", "0")
    assert first.returncode == 0, first.stderr
    assert "compiling kernels for" in first.stderr and "first run only" in first.stderr, first.stderr
    assert "later runs load them from the cache" in first.stderr
    assert any(f.suffix == ".nbi" for f in tmp_path.rglob("*")), "nothing was cached"
    load_ms = float(first.stderr.split("load time =")[1].split("ms")[0])
    prompt_ms = float(first.stderr.split("prompt eval time =")[1].split("ms")[0])
    assert prompt_ms < load_ms, first.stderr

    again = cli(tmp_path, "-p", "hi", "-n", "2", "--temp", "0")
    assert again.returncode == 0, again.stderr
    assert "compil" not in again.stderr, again.stderr
    assert again.stdout == first.stdout


def test_web_page_shows_the_compile_while_the_server_loads():
    """The page polls /health while the server loads: the header says what compiles, then the model."""
    import argparse
    import asyncio
    import threading

    import uvicorn
    from playwright.sync_api import expect, sync_playwright

    from llamafile.server import State, bind, create_app
    state = State(argparse.Namespace(), "/nowhere/SmolLM2-135M-Instruct.Q4_1.gguf")  # never loads: no worker
    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(create_app(state), log_level="warning", lifespan="off"))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True)
    thread.start()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=["--no-sandbox"])
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{sock.getsockname()[1]}/")
            expect(page.locator("#model")).to_have_text("loading model…", timeout=15_000)
            with progress.compile_notice(io.StringIO(), live=False):
                fresh_kernel()(1)
                expect(page.locator("#model")).to_contain_text(f"compiling kernels for {progress.level()} — first run only",
                                                               timeout=15_000)
                expect(page.locator("#model")).to_contain_text("1 kernel done")
            state.status = "ok"
            expect(page.locator("#model")).to_have_text("smollm2-135m-instruct", timeout=15_000)
            browser.close()
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
