"""A GGUF (and friends) appended to an executable, found through a trailer at the end of the file.

The one-file executable that packaging/build.py makes is laid out as

    [PyInstaller executable][runtime blob][padding to 64 KiB][GGUF][default args][trailer][cookie]

The trailer (TRAILER_SIZE bytes, little-endian, magic at both ends) says where each part lies;
the PyInstaller cookie after it is a copy of the bootloader's own, so that the bootloader finds
its archive in the last few bytes instead of scanning back through the whole model. The GGUF is
never extracted or copied: weights.gguf maps it straight from the executable at its offset.

    embedded_model()            (sys.executable, offset, size, name) in a frozen program, else None
    read_trailer(path)          the Trailer of any file that has one (None otherwise)
    gguf_region(path)           (offset, size) when path is such a file rather than a plain GGUF
"""
from __future__ import annotations

import hashlib
import os
import struct
import sys
from dataclasses import dataclass

MAGIC = b"LLAMAFILE-PY-GGUF"
END_MAGIC = b"LLAMAFILE-PY-END"
VERSION = 1
ALIGNMENT = 64 * 1024  # where the GGUF starts: page- (and huge-page-friendly) aligned for the map
# magic, version, size, gguf offset/size, sha256 (hex), name, runtime offset/size, runtime key,
# args offset/size, reserved, end magic
_FORMAT = "<24sII QQ 64s 128s QQ 32s QQ 160s 24s"
TRAILER_SIZE = struct.calcsize(_FORMAT)
_SEARCH = 64 * 1024  # how far back from the end the trailer may start (a cookie may follow it)


@dataclass(frozen=True)
class Trailer:
    gguf_offset: int = 0
    gguf_size: int = 0
    sha256: str = ""          # of the GGUF bytes, hex
    name: str = ""            # the model's file name (or catalogue name) at build time
    runtime_offset: int = 0   # packaging's runtime blob (shared libraries, shipped kernel caches)
    runtime_size: int = 0
    runtime_key: str = ""     # names the blob's extraction directory
    args_offset: int = 0      # default arguments, llamafile's .args format, UTF-8
    args_size: int = 0

    def pack(self) -> bytes:
        return struct.pack(_FORMAT, MAGIC, VERSION, TRAILER_SIZE, self.gguf_offset, self.gguf_size,
                           self.sha256.encode("ascii"), self.name.encode("utf-8")[:128],
                           self.runtime_offset, self.runtime_size, self.runtime_key.encode("ascii"),
                           self.args_offset, self.args_size, b"", END_MAGIC)

    @classmethod
    def unpack(cls, raw: bytes) -> "Trailer | None":
        if len(raw) != TRAILER_SIZE:
            return None
        (magic, version, size, g_off, g_size, sha, name, r_off, r_size, r_key, a_off, a_size, _,
         end) = struct.unpack(_FORMAT, raw)
        if magic.rstrip(b"\0") != MAGIC or end.rstrip(b"\0") != END_MAGIC or version != VERSION \
                or size != TRAILER_SIZE:
            return None
        text = lambda b: b.rstrip(b"\0").decode("utf-8", "replace")  # noqa: E731
        return cls(g_off, g_size, text(sha), text(name), r_off, r_size, text(r_key), a_off, a_size)


def read_trailer(path: str | os.PathLike) -> Trailer | None:
    """The trailer near the end of the file, checked against the file's size; None if there is none."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            file_size = f.tell()
            start = max(0, file_size - _SEARCH)
            f.seek(start)
            tail = f.read()
    except OSError:
        return None
    pos = tail.rfind(MAGIC)
    while pos >= 0:
        trailer = Trailer.unpack(tail[pos : pos + TRAILER_SIZE])
        end = start + pos  # every part lies before the trailer
        if trailer is not None and all(o + s <= end for o, s in (
                (trailer.gguf_offset, trailer.gguf_size), (trailer.runtime_offset, trailer.runtime_size),
                (trailer.args_offset, trailer.args_size))):
            return trailer
        pos = tail.rfind(MAGIC, 0, pos)
    return None


def gguf_region(path: str | os.PathLike) -> tuple[int, int] | None:
    """(offset, size) of the GGUF embedded in path, when path is not itself a GGUF but carries one."""
    try:
        with open(path, "rb") as f:
            if f.read(4) == b"GGUF":
                return None
    except OSError:
        return None
    trailer = read_trailer(path)
    if trailer is None or trailer.gguf_size == 0:
        return None
    return trailer.gguf_offset, trailer.gguf_size


def frozen() -> bool:
    return bool(getattr(sys, "frozen", False))


_TRAILER_CACHE: dict = {}


def own_trailer() -> Trailer | None:
    """The trailer of this executable when running frozen (read once), else None."""
    if not frozen():
        return None
    if "t" not in _TRAILER_CACHE:
        _TRAILER_CACHE["t"] = read_trailer(sys.executable)
    return _TRAILER_CACHE["t"]


def embedded_model() -> tuple[str, int, int, str] | None:
    """(path, offset, size, name) of the GGUF inside this executable; None when not frozen or none."""
    t = own_trailer()
    if t is None or t.gguf_size == 0:
        return None
    return sys.executable, t.gguf_offset, t.gguf_size, t.name


def parse_args_file(text: str) -> list[str]:
    """llamafile's .args: one argument per line (blank lines skipped); a line `...` marks where
    the user's arguments go (at the end when there is none)."""
    return [line.rstrip("\r") for line in text.split("\n") if line.rstrip("\r") != ""]


def embedded_args() -> list[str] | None:
    """The default arguments built into this executable (with a possible `...`), or None."""
    t = own_trailer()
    if t is None or t.args_size == 0:
        return None
    with open(sys.executable, "rb") as f:
        f.seek(t.args_offset)
        return parse_args_file(f.read(t.args_size).decode("utf-8"))


def merge_args(defaults: list[str], user: list[str]) -> list[str]:
    """The user's arguments in place of `...` (or after the defaults)."""
    if "..." in defaults:
        i = defaults.index("...")
        return defaults[:i] + user + [a for a in defaults[i + 1 :] if a != "..."]
    return defaults + user


def sha256_of(path: str | os.PathLike, offset: int, size: int, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(offset)
        left = size
        while left > 0:
            data = f.read(min(chunk, left))
            if not data:
                break
            h.update(data)
            left -= len(data)
    return h.hexdigest()


def verify(path: str | os.PathLike | None = None) -> bool:
    """Whether the embedded GGUF still has the sha256 written at build time (reads it all)."""
    path = path or sys.executable
    t = read_trailer(path)
    return t is not None and t.gguf_size > 0 and sha256_of(path, t.gguf_offset, t.gguf_size) == t.sha256
