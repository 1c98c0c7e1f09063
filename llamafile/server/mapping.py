"""The model file under a running server. The weights are read straight out of the mapped file, so:

- deleting (or renaming, or replacing by a new file) the file is harmless: the mapping keeps the inode;
- truncating it is not: touching a page past the new end raises SIGBUS in whichever thread reads it,
  usually inside a Numba kernel, which Python cannot catch (a Python-level handler would return to
  the faulting instruction and loop).

So the server watches the mapped inode through a file descriptor of its own (FileGuard): every request and
every turn of the worker first checks that the file still has the size and modification time it had when it
was mapped, and otherwise fails with a 503 naming the file. A truncation in the instant between that
check and the read still ends the process, but with one line, not a core dump: a native SIGBUS handler
(install_sigbus_message, a Numba cfunc calling write(2) and _exit(2), both safe in a signal handler)."""
from __future__ import annotations

import ctypes
import os
import signal
import sys

from .errors import APIError


class FileGuard:
    """The identity of the mapped file, checked in microseconds (one fstat of a descriptor held open)."""

    def __init__(self, path: str | os.PathLike, mapped_end: int):
        self.path, self.mapped_end = str(path), mapped_end
        self.fd = os.open(self.path, os.O_RDONLY)
        st = os.fstat(self.fd)
        self.size, self.mtime = st.st_size, st.st_mtime_ns

    def problem(self) -> str | None:
        """None while the file is as mapped; else what happened to it."""
        st = os.fstat(self.fd)
        if st.st_size < self.mapped_end:
            return (f"the model file {self.path} was truncated on disk while mapped ({st.st_size} of "
                    f"{self.mapped_end} bytes left): restart the server")
        if st.st_size != self.size or st.st_mtime_ns != self.mtime:
            return f"the model file {self.path} was changed on disk while mapped: restart the server"
        return None

    def check(self) -> None:
        problem = self.problem()
        if problem is not None:
            raise APIError(503, problem, code="model_file_changed", type="unavailable_error")

    def close(self) -> None:
        os.close(self.fd)


_installed: list = []  # the handler and its message, alive as long as the process


def install_sigbus_message(path: str | os.PathLike) -> None:
    """On SIGBUS, print one line naming the model file to stderr and exit with status 135 (128 + SIGBUS).
    Linux and macOS; a no-op elsewhere. About 0.3 s (the handler is compiled for its message)."""
    sigbus = getattr(signal, "SIGBUS", None)
    if sigbus is None or os.name != "posix":
        return
    from numba import cfunc, types

    libc = ctypes.CDLL(None)
    c_write, c_exit = libc.write, libc._exit
    c_write.argtypes, c_write.restype = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t], ctypes.c_ssize_t
    c_exit.argtypes, c_exit.restype = [ctypes.c_int], None
    text = (f"llamafile: fatal: the model file {path} changed on disk while mapped (truncated?): "
            "its weights cannot be read\n").encode(sys.getfilesystemencoding(), "replace")
    message = ctypes.create_string_buffer(text, len(text))
    address, length = ctypes.addressof(message), len(text)

    @cfunc(types.void(types.int32))
    def on_sigbus(signum):
        c_write(2, address, length)
        c_exit(128 + signum)

    libc.signal.argtypes, libc.signal.restype = [ctypes.c_int, ctypes.c_void_p], ctypes.c_void_p
    libc.signal(sigbus, on_sigbus.address)
    _installed.append((message, on_sigbus))
