"""The real server in a subprocess, for test_server.py and test_web.py.

    with running_server("--parallel", "2", api_key="k") as server:
        httpx.get(server.url + "/health")
"""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

import httpx

from conftest import model_path

LOAD_TIMEOUT = 60.0  # seconds for /health to say ok (the first load may compile kernels)


@dataclass
class RunningServer:
    url: str
    process: subprocess.Popen
    api_key: str | None
    log_path: str
    health: list = field(default_factory=list)  # (status, json) of every /health answer while starting

    @property
    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def log(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(*flags: str, api_key: str | None = None, ctx_size: int = 512,
                   model: str | os.PathLike = "smollm2"):
    """Start `python -m llamafile.server` on a catalogue model (or a GGUF file's path), wait for /health, stop
    it afterwards. ctx_size is the total, split across --parallel slots."""
    port = free_port()
    gguf = model if isinstance(model, os.PathLike) else model_path(model)
    cmd = [sys.executable, "-m", "llamafile.server", "-m", str(gguf), "--port", str(port),
           "--nobrowser", "-c", str(ctx_size), *flags]
    if api_key:
        cmd += ["--api-key", api_key]
    log = tempfile.NamedTemporaryFile("w+", prefix="llamafile-server-", suffix=".log", delete=False)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # this checkout's code, not an installed one
    path = os.pathsep.join([repo] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": path})
    server = RunningServer(f"http://127.0.0.1:{port}", process, api_key, log.name)
    try:
        wait_healthy(server)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
        os.unlink(log.name)


def wait_healthy(server: RunningServer) -> None:
    deadline = time.monotonic() + LOAD_TIMEOUT
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"the server exited with {server.process.returncode}:\n{server.log()}")
        try:
            r = httpx.get(server.url + "/health", timeout=2)
            server.health.append((r.status_code, r.json()))
            if r.status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"the server was not healthy after {LOAD_TIMEOUT} s:\n{server.log()}")
