"""Numba's on-disk cache in the one-file executable (packaging/build.py).

In a frozen program Numba's own locators do not work well: there is no writable source tree, and
its fallback hashes the whole executable (model included) on every start to stamp the cache.
So, frozen only, `install()` registers `FrozenCacheLocator` ahead of Numba's locators:

- the cache lives in `$LLAMAFILE_CACHE/numba/<key>/` (default ~/.cache/llamafile), keyed on
  cheap facts of the executable: the kernels id written at build time (a hash of kernels/ and of
  the library versions; without one, the version and the executable's size and mtime);
  `LLAMAFILE_NUMBA_CACHE=DIR` names the directory outright, `NUMBA_CACHE_DIR` moves its base;
- every index is stamped with that key, never with a hash of the executable;
- kernels precompiled at build time ship read-only inside the executable (`numba_cache/` of the
  runtime blob or sys._MEIPASS); a fresh cache directory is seeded from them, function by function.
  Numba keys its index by CPU name and features, so the targets live side by side: the build
  machine's own CPU and each level's portable target (kernels.cpu: x86-64, haswell = x86-64-v3,
  skylake-avx512 = x86-64-v4, cascadelake; cortex-a72, cortex-a76). When the machine is not the
  build machine, `install()` asks Numba for the portable target of its level if that one shipped,
  so a first run loads kernels instead of compiling them. Anything else compiles (JIT) as usual
  and lands in the user's cache.

Outside a frozen program `install()` does nothing at all (it does not even import numba).
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

SHIPPED = "numba_cache"        # directory name of the shipped caches (runtime blob or _MEIPASS)
TARGETS = "targets.json"       # in it: the (cpu name, features) pairs that were warmed up
BUILD_INFO = "llamafile_build.json"  # in _MEIPASS: {"build_id", "kernels_id", "version", ...}

STAMP: str | None = None
CACHE_DIR: Path | None = None


def frozen() -> bool:
    return bool(getattr(sys, "frozen", False))


def build_info() -> dict:
    base = getattr(sys, "_MEIPASS", None)
    if base:
        try:
            return json.loads((Path(base) / BUILD_INFO).read_text())
        except (OSError, ValueError):
            pass
    return {}


def build_key() -> str:
    """Names the cache directory and stamps every index: the hash of the kernels' sources and of
    the Python, NumPy, Numba and llvmlite versions, written at build time (so a rebuild that leaves
    the kernels alone keeps its users' caches); failing that, the version with the executable's
    size and mtime. Never a hash of the executable itself."""
    info = build_info()
    if info.get("kernels_id"):
        return f"k{info['kernels_id'][:16]}"
    st = os.stat(sys.executable)
    return f"{info.get('version', '0')}-{st.st_size}-{int(st.st_mtime)}"


def cache_dir() -> Path:
    if os.environ.get("LLAMAFILE_NUMBA_CACHE"):
        return Path(os.environ["LLAMAFILE_NUMBA_CACHE"]).expanduser()
    if os.environ.get("NUMBA_CACHE_DIR"):
        return Path(os.environ["NUMBA_CACHE_DIR"]).expanduser() / f"llamafile-{build_key()}"
    base = Path(os.environ.get("LLAMAFILE_CACHE") or Path.home() / ".cache" / "llamafile").expanduser()
    return base / "numba" / build_key()


def shipped_dirs() -> list[Path]:
    """Read-only precompiled caches inside this executable."""
    dirs = []
    runtime = sys.modules.get("llamafile_runtime")
    if runtime is not None and getattr(runtime, "RUNTIME_DIR", None):
        dirs.append(Path(runtime.RUNTIME_DIR) / SHIPPED)
    if getattr(sys, "_MEIPASS", None):
        dirs.append(Path(sys._MEIPASS) / SHIPPED)
    return [d for d in dirs if d.is_dir()]


def shipped_targets() -> list[tuple[str, str]]:
    out = []
    for d in shipped_dirs():
        try:
            out += [(t["cpu_name"], t["features"]) for t in json.loads((d / TARGETS).read_text())]
        except (OSError, ValueError, KeyError, TypeError):
            pass
    return out


def prefer_shipped_target() -> None:
    """Off the build machine, compile for the portable target of this CPU's level when its
    kernels shipped (x86; on ARM kernels.cpu always names a portable target)."""
    from . import cpu
    if cpu.is_arm() or os.environ.get("NUMBA_CPU_NAME") or \
            os.environ.get("LLAMAFILE_CPU", "") not in ("", "native", "auto"):
        return
    targets = shipped_targets()
    if not targets:
        return
    import llvmlite.binding as ll
    try:
        host = (ll.get_host_cpu_name(), ll.get_host_cpu_features().flatten())
    except RuntimeError:
        host = (ll.get_host_cpu_name(), "")
    if host in targets:
        return  # the build machine's own CPU: its exact kernels shipped
    portable = cpu._X86_TARGETS[cpu.detect()]
    if portable in targets:
        os.environ["NUMBA_CPU_NAME"], os.environ["NUMBA_CPU_FEATURES"] = portable


def _copy_missing(src: Path, dst: Path) -> None:
    """Seed dst with src's caches: each function's index with its data files, where dst has no index."""
    for index in src.rglob("*.nbi"):
        rel = index.relative_to(src)
        target = dst / rel
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        stem = index.name[: -len(".nbi")]
        for f in [*index.parent.glob(f"{stem}.*.nbc"), index]:  # the index last: it names the data
            tmp = target.parent / f".{f.name}.{os.getpid()}"
            shutil.copyfile(f, tmp)
            os.replace(tmp, target.parent / f.name)


def seed(dst: Path) -> None:
    marker = dst / ".seeded"
    if marker.exists():
        return
    for src in shipped_dirs():
        _copy_missing(src, dst)
    marker.write_text("")


def install() -> None:
    """Frozen programs only: pick the CPU target, configure kernels.cpu, and point Numba's cache
    at the user's cache directory, seeded with the shipped kernels."""
    global STAMP, CACHE_DIR
    if not frozen() or CACHE_DIR is not None:
        return
    from . import cpu
    if "numba" not in sys.modules:
        prefer_shipped_target()
    cpu.configure()
    from numba.core import caching

    STAMP = build_key()
    directory = cache_dir()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=directory).close()
    except OSError:
        directory = Path(tempfile.gettempdir()) / f"llamafile-numba-{os.getuid() if hasattr(os, 'getuid') else 0}" \
            / build_key()
        directory.mkdir(parents=True, exist_ok=True)
    CACHE_DIR = directory
    try:
        seed(directory)
    except OSError:
        pass  # the shipped kernels are an optimisation; JIT is the fallback
    impl = getattr(caching, "CacheImpl", None) or caching._CacheImpl
    locator = _make_locator(caching._CacheLocator)
    if locator not in impl._locator_classes:
        impl._locator_classes.insert(0, locator)


def _make_locator(base):
    class FrozenCacheLocator(base):
        """Caches a frozen program's functions in CACHE_DIR/<package>/, stamped with the build."""

        def __init__(self, py_func, py_file):
            self._lineno = py_func.__code__.co_firstlineno
            package = (py_func.__module__ or "__main__").rpartition(".")[0] or "__main__"
            self._cache_path = str(CACHE_DIR / package.replace(".", "_"))

        def get_cache_path(self):
            return self._cache_path

        def get_source_stamp(self):
            return STAMP

        def get_disambiguator(self):
            return str(self._lineno)

        @classmethod
        def from_function(cls, py_func, py_file):
            if CACHE_DIR is None or not frozen():
                return None
            self = cls(py_func, py_file)
            try:
                self.ensure_cache_path()
            except OSError:
                return None
            return self

    return FrozenCacheLocator
