"""Whether Numba is compiling a kernel right now (rather than loading it from its cache), and which.

Numba announces every compilation with a "numba:compile" event, and a function that loads from
its on-disk cache (cache=True) announces nothing: a warm cache makes no events at all. `install()`
registers one listener, once per process, that keeps the count and the time of the kernels compiled
at the top level (a kernel's callees compile inside it and count as part of it) and tells the
subscribers (llamafile.progress) when one starts and when it ends. Compiles are serial (Numba holds a
global lock), but may happen on any thread: the server compiles on its worker.
"""
from __future__ import annotations

import threading
import time
from typing import Callable

_lock = threading.Lock()
_installed = False
_depth = 0
_subscribers: list[Callable[[str, str, float], None]] = []

compiled = 0           # kernels compiled at the top level, since the process started
seconds = 0.0          # time spent compiling them
current: str | None = None   # the kernel compiling now (its function's name), or None
started = 0.0          # when it started (time.monotonic())


def kernel_name(dispatcher) -> str:
    """A short name for a dispatcher's function: `rope_tables`, and for one a factory made, the factory's
    name too (`quant_matmul.matmul`, `decoder.decode_blocks`)."""
    func = getattr(dispatcher, "py_func", None)
    qualname = getattr(func, "__qualname__", None) or str(dispatcher)
    return ".".join(part.lstrip("_") for part in qualname.split(".") if part != "<locals>")


def _notify(what: str, name: str, elapsed: float) -> None:
    for subscriber in list(_subscribers):
        try:
            subscriber(what, name, elapsed)
        except Exception:  # a display must never break a compile
            pass


def install() -> None:
    """Listen to Numba's compile events (idempotent)."""
    global _installed
    with _lock:
        if _installed:
            return
        _installed = True
    from numba.core import event

    class Listener(event.Listener):
        def on_start(self, ev):
            global _depth, current, started
            _depth += 1
            if _depth == 1:
                current, started = kernel_name(ev.data["dispatcher"]), time.monotonic()
                _notify("start", current, 0.0)

        def on_end(self, ev):
            global _depth, current, compiled, seconds
            _depth = max(0, _depth - 1)
            if _depth == 0 and current is not None:
                name, elapsed = current, time.monotonic() - started
                compiled, seconds, current = compiled + 1, seconds + elapsed, None
                _notify("end", name, elapsed)

    event.register("numba:compile", Listener())


def subscribe(callback: Callable[[str, str, float], None]) -> Callable[[], None]:
    """callback(what, kernel, seconds) on every top-level compile: what is "start" (seconds 0) or
    "end" (seconds it took). Returns the function that unsubscribes."""
    install()
    _subscribers.append(callback)

    def unsubscribe():
        if callback in _subscribers:
            _subscribers.remove(callback)
    return unsubscribe


def compiling() -> bool:
    return current is not None
