"""The runtime blob: files the one-file executable unpacks once into a cache directory and reuses.

PyInstaller's one-file bootloader extracts everything in its archive into a new /tmp/_MEIxxxxxx
on every start; with numpy, numba and llvmlite (~180 MB of LLVM alone) that costs over a second
each time. So packaging/build.py takes the big shared libraries out of PyInstaller's archive and
appends them to the executable as this blob (with the precompiled Numba kernel caches). On the
first start the run-time hook (packaging/rthook.py) unpacks the blob into

    $LLAMAFILE_CACHE/runtime/<key>/   (default ~/.cache/llamafile/runtime/<key>/; key = blob hash)

in parallel, atomically (a temporary directory renamed into place), and on every start links
each library into sys._MEIPASS, where PyInstaller's importers and the dynamic loader expect it.
Other executables' blobs unused for 30 days are removed when a new one unpacks.
If the cache directory cannot be written, the blob is unpacked into sys._MEIPASS for this run.

Blob layout: MAGIC, u64 length of a JSON header, the header (a list of entries: name, offset
from the end of the header, compressed size, size, method xz|zlib|store, mode, link), then the data.
This module is both bundled (as a top-level module) and imported by packaging/build.py.
"""
from __future__ import annotations

import json
import lzma
import os
import shutil
import struct
import sys
import tempfile
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

MAGIC = b"LFPY-RUNTIME-01\0"
_HEAD = struct.Struct("<16sQ")
CHUNK = 1 << 20
RUNTIME_DIR: Path | None = None  # where this process's blob was unpacked (set by boot())


# --- writing (build time) -------------------------------------------------------------
def _compress(src: Path, method: str, level: int) -> bytes:
    data = src.read_bytes()
    if method == "xz":
        return lzma.compress(data, preset=level)
    if method == "zlib":
        return zlib.compress(data, level)
    return data


def write_blob(out, files: list[tuple[str, Path, str, bool]], xz_level: int = 3, cache_dir: Path | None = None,
               threads: int | None = None) -> int:
    """Append a blob of files [(name, source, method, link)] to the open binary file `out`;
    returns its length. Compressed members are cached in cache_dir by source size, mtime and method."""
    def compressed(item):
        name, src, method, link = item
        st = src.stat()
        key = f"{src.name}-{st.st_size}-{int(st.st_mtime)}-{method}{xz_level}"
        cache = cache_dir if st.st_size >= (1 << 20) else None  # worth keeping: the big ones
        if cache is not None:
            hit = cache / key
            if hit.exists():
                return hit.read_bytes()
        data = _compress(src, method, xz_level if method == "xz" else 9)
        if cache is not None:
            cache.mkdir(parents=True, exist_ok=True)
            tmp = cache / f".{key}.{os.getpid()}"
            tmp.write_bytes(data)
            os.replace(tmp, cache / key)
        return data

    with ThreadPoolExecutor(threads or os.cpu_count() or 2) as pool:  # lzma and zlib release the GIL
        blobs = list(pool.map(compressed, sorted(files, key=lambda f: -f[1].stat().st_size)))
    items = sorted(files, key=lambda f: -f[1].stat().st_size)
    entries, pos = [], 0
    for (name, src, method, link), data in zip(items, blobs):
        entries.append({"name": name, "offset": pos, "csize": len(data), "size": src.stat().st_size,
                        "method": method, "mode": src.stat().st_mode & 0o777, "link": link})
        pos += len(data)
    header = json.dumps(entries, separators=(",", ":")).encode()
    out.write(_HEAD.pack(MAGIC, len(header)))
    out.write(header)
    for data in blobs:
        out.write(data)
    return _HEAD.size + len(header) + pos


# --- reading (run time) ---------------------------------------------------------------
def read_header(exe: str, offset: int) -> tuple[list[dict], int]:
    """The blob's entries and where their data starts in the file."""
    with open(exe, "rb") as f:
        f.seek(offset)
        magic, n = _HEAD.unpack(f.read(_HEAD.size))
        if magic != MAGIC:
            raise OSError(f"{exe}: no runtime blob at offset {offset}")
        return json.loads(f.read(n)), offset + _HEAD.size + n


def _extract_one(exe: str, offset: int, entry: dict, into: Path) -> None:
    dst = into / entry["name"]
    dst.parent.mkdir(parents=True, exist_ok=True)
    method = entry["method"]
    dec = lzma.LZMADecompressor() if method == "xz" else zlib.decompressobj() if method == "zlib" else None
    with open(exe, "rb") as src, open(dst, "wb") as out:
        src.seek(offset + entry["offset"])
        left = entry["csize"]
        while left > 0:
            chunk = src.read(min(CHUNK, left))
            if not chunk:
                raise OSError(f"{exe}: runtime blob truncated at {entry['name']}")
            left -= len(chunk)
            out.write(dec.decompress(chunk) if dec is not None else chunk)
        if method == "zlib":
            out.write(dec.flush())
        if out.tell() != entry["size"]:
            raise OSError(f"{exe}: {entry['name']} unpacked to {out.tell()} bytes, expected {entry['size']}")
    os.chmod(dst, entry["mode"] or 0o644)


def extract(exe: str, offset: int, entries: list[dict], into: Path) -> None:
    with ThreadPoolExecutor(min(len(entries), os.cpu_count() or 2) or 1) as pool:
        for f in [pool.submit(_extract_one, exe, offset, e, into) for e in entries]:
            f.result()


def cache_base() -> Path:
    """$LLAMAFILE_CACHE, else ~/.cache/llamafile (as weights.fetch)."""
    return Path(os.environ.get("LLAMAFILE_CACHE") or Path.home() / ".cache" / "llamafile").expanduser()


KEEP_DAYS = 30  # other executables' unpacked blobs, unused this long, go when a new one unpacks


def _touch_daily(marker: Path) -> None:
    """Mark the blob as in use (at most once a day: one stat on most starts)."""
    try:
        if time.time() - marker.stat().st_mtime > 86400:
            os.utime(marker)
    except OSError:
        pass


def _prune(root: Path, keep: str) -> None:
    for d in root.iterdir():
        try:
            if d.name != keep and not d.name.startswith(".") and \
                    time.time() - (d / ".complete").stat().st_mtime > KEEP_DAYS * 86400:
                shutil.rmtree(d, ignore_errors=True)
        except OSError:
            pass


def ensure(exe: str, offset: int, key: str, entries: list[dict], base: Path | None = None) -> Path:
    """The directory the blob is unpacked in, unpacking it first if no earlier run did."""
    root = (base or cache_base()) / "runtime"
    target = root / key
    if (target / ".complete").is_file():
        _touch_daily(target / ".complete")
        return target
    root.mkdir(parents=True, exist_ok=True)
    _prune(root, key)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=root))
    try:
        extract(exe, offset, entries, tmp)
        (tmp / ".complete").write_text(key + "\n")
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / ".complete").is_file():  # not another process winning the race
                shutil.rmtree(target, ignore_errors=True)
                os.rename(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def link_into(runtime: Path, meipass: Path, entries: list[dict]) -> None:
    """Symlink the blob's libraries where PyInstaller's extraction would have put them (files
    only: the bootloader deletes _MEIPASS at exit, which removes links, never their targets)."""
    for e in entries:
        if not e["link"]:
            continue
        dst = meipass / e["name"]
        if os.path.lexists(dst):
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(runtime / e["name"], dst)


def boot() -> Path | None:
    """Run-time hook: unpack (once) and link this executable's runtime blob. Returns its directory."""
    global RUNTIME_DIR
    if not getattr(sys, "frozen", False):
        return None
    from weights.embedded import own_trailer
    trailer = own_trailer()
    if trailer is None or trailer.runtime_size == 0:
        return None
    exe, meipass = sys.executable, Path(getattr(sys, "_MEIPASS", os.path.dirname(sys.executable)))
    entries, data = read_header(exe, trailer.runtime_offset)
    try:
        runtime = ensure(exe, data, trailer.runtime_key, entries)
    except OSError as e:  # read-only home, full disk: unpack into this run's temporary directory
        print(f"llamafile: cannot unpack into {cache_base() / 'runtime'} ({e}); using a temporary copy",
              file=sys.stderr)
        runtime = meipass / "_runtime"
        extract(exe, data, entries, runtime)
    link_into(runtime, meipass, entries)
    RUNTIME_DIR = runtime
    return runtime
