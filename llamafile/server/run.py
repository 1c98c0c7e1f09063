"""Binding, serving, stopping: uvicorn on one socket per --host address (comma-separated)."""
from __future__ import annotations

import asyncio
import os
import socket
import sys
import threading
import webbrowser
from typing import Callable

from .app import create_app
from .state import State

PORT_ATTEMPTS = 100         # ports tried after a taken one


def bind(host: str, port: int, say=lambda message: print(message, file=sys.stderr)) -> socket.socket:
    """A listening socket on host:port, or on the next free port after a taken one (said on stderr)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    last_error = None
    for candidate in ([0] if port == 0 else range(port, min(port + PORT_ATTEMPTS, 65536))):
        # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on the accepted connections only then (else
        # every reply after the first on a kept connection waits ~40 ms for the client's delayed ACK)
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        if os.name != "nt":  # on Windows SO_REUSEADDR would let two servers share a port
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            sock.bind((host, candidate))
            sock.listen(128)
        except OSError as e:
            sock.close()
            last_error = e
            if e.errno not in (98, 48, 10048, 13, 10013):  # in use (Linux, macOS, Windows), or not allowed
                raise
            continue
        if candidate != port and port != 0:
            say(f"llamafile: port {port} is in use, using {candidate}")
        return sock
    raise OSError(f"no free port from {port} to {port + PORT_ATTEMPTS - 1} on {host}: {last_error}")


def bind_all(hosts: str, port: int) -> list[socket.socket]:
    """One socket per address of a comma-separated --host, all on the port the first one got."""
    names = [h.strip().strip("[]") for h in hosts.split(",") if h.strip()] or ["127.0.0.1"]
    first = bind(names[0], port)
    socks = [first]
    try:
        for name in names[1:]:
            socks.append(bind(name, first.getsockname()[1]))
    except OSError:
        for s in socks:
            s.close()
        raise
    return socks


def url_of(host: str, sock: socket.socket) -> str:
    port = sock.getsockname()[1]
    host = host.split(",")[0].strip().strip("[]")
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else "[::1]" if host == "::" else (
        f"[{host}]" if ":" in host else host)
    return f"http://{shown}:{port}"


def has_display() -> bool:
    """Whether a browser window could open: always on macOS and Windows, with X or Wayland on Linux."""
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _UvicornServer(config, on_shutdown: Callable[[], None]):
    """uvicorn's server, which first ends the running jobs when it shuts down (their streams
    then finish at once instead of holding the graceful shutdown)."""
    import uvicorn

    class UvicornServer(uvicorn.Server):
        async def shutdown(self, sockets=None):
            on_shutdown()
            await super().shutdown(sockets=sockets)

    return UvicornServer(config)


class Server:
    """The HTTP server, bound at construction, serving as soon as it runs; the model loads meanwhile."""

    def __init__(self, args, model_path: str | os.PathLike, open_browser: bool | None = None):
        import uvicorn

        self.args = args
        host = getattr(args, "host", "127.0.0.1")
        self.socks = bind_all(host, getattr(args, "port", 8080))
        self.url = url_of(host, self.socks[0])
        self.open_browser = (not getattr(args, "nobrowser", False)) if open_browser is None else open_browser
        self.state = State(args, model_path)
        self.state.on_ready, self.state.on_error = self._ready, self._failed
        verbose = getattr(args, "verbose", False)
        config = uvicorn.Config(create_app(self.state), log_level="info" if verbose else "warning",
                                access_log=verbose, lifespan="off", timeout_graceful_shutdown=3,
                                timeout_keep_alive=30)
        self.uvicorn = _UvicornServer(config, on_shutdown=self.state.scheduler.stop)
        self._thread: threading.Thread | None = None

    @property
    def sock(self) -> socket.socket:
        return self.socks[0]

    def _ready(self) -> None:
        print(f"llamafile: listening on {self.url}", file=sys.stderr, flush=True)
        if self.open_browser and has_display():
            threading.Thread(target=webbrowser.open, args=(self.url,), daemon=True).start()

    def _failed(self, e: BaseException) -> None:
        print(f"llamafile: error: {e}", file=sys.stderr, flush=True)
        self.uvicorn.should_exit = True

    def _close(self) -> None:
        for s in self.socks:
            s.close()

    def run(self) -> int:
        """Serve in this thread until Ctrl-C (or a model that fails to load: exit status 1)."""
        self.state.scheduler.start()
        try:
            self.uvicorn.run(sockets=self.socks)
        except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it handled
            pass
        finally:
            self.state.scheduler.stop()
            self._close()
        return 1 if self.state.status == "error" else 0

    def start(self) -> threading.Thread:
        """Serve on a background thread (uvicorn leaves the signals to the main thread there)."""
        self.state.scheduler.start()
        thread = threading.Thread(target=lambda: asyncio.run(self.uvicorn.serve(sockets=self.socks)),
                                  name="llamafile-http", daemon=True)
        thread.start()
        return thread

    def stop(self, timeout: float = 5.0) -> None:
        self.uvicorn.should_exit = True
        self.state.scheduler.stop()
        if self._thread is not None:
            self._thread.join(timeout)
        self._close()


def serve(args, model_path: str | os.PathLike) -> int:
    """`llamafile --server`: serve until interrupted; 0, or 1 when the model cannot be loaded."""
    return Server(args, model_path).run()


def start_in_thread(args, model_path: str | os.PathLike, open_browser: bool | None = None
                    ) -> tuple[str, Callable[[], None]]:
    """Serve in the background (the terminal chat keeps the foreground): (url, stop).

    The URL answers at once (/health says 503 until the model is loaded); the browser opens
    after loading unless --nobrowser or open_browser=False."""
    server = Server(args, model_path, open_browser=open_browser)
    server._thread = server.start()
    return server.url, server.stop
