"""The first run's notice: saying what the wait is for while Numba compiles the kernels.

    with compile_notice():            # the CLI, the terminal chat and the server's loader
        model = load(...)
        model.warmup(...)

Nothing appears unless a kernel actually compiles (kernels.jitwatch: a warm cache loads them
silently). When one does, on stderr:

    llamafile: compiling kernels for avx512bf16 — first run only
    llamafile: ⠼ 12 s, 5 kernels done, compiling decode_blocks          (a terminal: one line, redrawn)
    llamafile: compiled decode_blocks in 9.1 s (11 s so far)              (not a terminal, e.g. a log:
                                                                          a line per kernel)
    llamafile: compiled 8 kernels in 14.2 s; later runs load them from the cache

`status()` says the same as data, for the server's /health while it loads. Notices nest and may be
entered from several threads at once (the terminal chat and the server it starts both warm up): the
first one entered shows the display, which lasts until the last one leaves.
"""
from __future__ import annotations

import sys
import threading
import time
from contextlib import contextmanager

SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
SPINNER_ASCII = "|/-\\"
REDRAW = 0.1  # seconds between redraws of the terminal line


def level() -> str:
    from kernels import cpu
    return cpu.LEVEL or cpu.configure()


class _Display:
    """One notice on one stream, from the first compile to the end of the outermost compile_notice()."""

    def __init__(self, stream, prefix: str, live: bool | None):
        self.stream, self.prefix = stream, prefix
        self.live = _is_terminal(stream) if live is None else live
        self.spinner = SPINNER if _can_write(stream, SPINNER) else SPINNER_ASCII
        self.dash = "—" if _can_write(stream, "—") else "-"  # a console whose code page lacks them
        self.lock = threading.Lock()
        self.start: float | None = None      # when the first kernel started compiling
        self.done = 0                         # kernels compiled since then
        self.current: str | None = None       # compiling now
        self.width = 0                        # of the terminal line drawn last
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None

    def write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # a closed or broken stderr: the notice is not worth an error
            pass

    def on_compile(self, what: str, kernel: str, seconds: float) -> None:
        with self.lock:
            if self.start is None:
                self.start = time.monotonic()
                self.write(f"{self.prefix}compiling kernels for {level()} {self.dash} first run only\n")
                if self.live:
                    self.thread = threading.Thread(target=self._spin, name="llamafile-compile-notice", daemon=True)
                    self.thread.start()
            if what == "start":
                self.current = kernel
            else:
                self.done += 1
                self.current = None
                if not self.live:
                    self.write(f"{self.prefix}compiled {kernel} in {seconds:.1f} s "
                               f"({time.monotonic() - self.start:.0f} s so far)\n")

    def line(self, tick: int) -> str:
        elapsed = time.monotonic() - self.start
        doing = f", compiling {self.current}" if self.current else ""
        return (f"{self.prefix}{self.spinner[tick % len(self.spinner)]} {elapsed:.0f} s, "
                f"{self.done} kernel{'s' * (self.done != 1)} done{doing}")

    def _draw(self, text: str) -> None:
        pad = max(0, self.width - len(text))
        self.write("\r" + text + " " * pad + "\b" * pad)
        self.width = len(text)

    def _spin(self) -> None:
        tick = 0
        while not self.stop.wait(REDRAW):
            with self.lock:
                self._draw(self.line(tick))
            tick += 1

    def close(self, stopped: bool = False) -> None:
        """End the display; stopped: the body raised (e.g. Ctrl-C), so the compiling did not finish."""
        self.stop.set()
        if self.thread is not None:
            self.thread.join()
        if self.start is None:
            return
        kernels = f"{self.done} kernel{'s' * (self.done != 1)}"
        seconds = time.monotonic() - self.start
        summary = (f"{self.prefix}stopped after compiling {kernels} in {seconds:.1f} s" if stopped else
                   f"{self.prefix}compiled {kernels} in {seconds:.1f} s; later runs load them from the cache")
        if self.live:
            self._draw(summary)
            self.write("\n")
        else:
            self.write(summary + "\n")

    def status(self) -> dict | None:
        with self.lock:
            if self.start is None:
                return None
            return {"message": f"compiling kernels for {level()} — first run only", "cpu": level(),
                    "kernels_done": self.done, "compiling": self.current,
                    "seconds": round(time.monotonic() - self.start, 1)}


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _can_write(stream, text: str) -> bool:
    encoding = getattr(stream, "encoding", None)
    if not encoding:  # e.g. io.StringIO: any text
        return True
    try:
        text.encode(encoding)
        return True
    except (UnicodeEncodeError, LookupError):
        return False


_lock = threading.Lock()
_users = 0
_display: _Display | None = None
_unsubscribe = None


@contextmanager
def compile_notice(stream=None, prefix: str = "llamafile: ", live: bool | None = None):
    """While the body runs, tell stream (stderr) about any kernel that compiles; see the module's doc.
    live: redraw one line with a spinner (default: when stream is a terminal), else a line per kernel."""
    global _users, _display, _unsubscribe
    from kernels import jitwatch
    with _lock:
        _users += 1
        if _display is None:
            _display = _Display(stream or sys.stderr, prefix, live)
            _unsubscribe = jitwatch.subscribe(_display.on_compile)
    stopped = True
    try:
        yield
        stopped = False
    finally:
        with _lock:
            _users -= 1
            if _users == 0:
                display, _display = _display, None
                _unsubscribe()
                display.close(stopped)


def status() -> dict | None:
    """What is compiling while a notice is on and kernels compile (for /health), else None."""
    display = _display
    return display.status() if display is not None else None
