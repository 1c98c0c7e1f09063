"""Build the one-file executable: PyInstaller program + runtime blob + GGUF + default args + trailer.

    python packaging/build.py --model NAME|PATH [--args "..."] [--out DIR]

NAME is a catalogue name (fetched into the cache), PATH any GGUF file. The executable lands in
DIR (default dist/) as llamafile-<os>-<arch>[.exe]. Layout (see weights/embedded.py):

    [PyInstaller one-file executable]  Python, our code, the libraries Python needs at start
    [runtime blob]                     big shared libraries (Linux) + precompiled Numba kernels,
                                       unpacked once into ~/.cache/llamafile/runtime/<key>/
    [padding to 64 KiB][GGUF]          mapped in place at run time, never copied
    [default args][trailer][cookie]    the trailer locates the parts; the cookie is a copy of
                                       PyInstaller's, so its bootloader finds its archive at once

Steps: (1) PyInstaller, cached in ~/.cache/llamafile/build/<source hash>/ (a minute or two the
first time); (2) a warm-up executable runs the model once per CPU target to fill Numba's cache
(generic, avx2 = haswell, avx512 = skylake-avx512, the machine's best level both as its portable
target and as this very CPU; on ARM cortex-a72 and, when the CPU has it, cortex-a76), cached by
source hash and model; (3) the final executable is assembled with those caches inside.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shlex
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

import llamafile_runtime  # noqa: E402  (packaging/llamafile_runtime.py)
from weights import embedded  # noqa: E402

COOKIE_MAGIC = b"MEI\014\013\012\013\016"
COOKIE_FORMAT = "!8sIIII64s"  # PyInstaller's CArchive cookie: magic, pkg length, toc offset, toc length, pyvers, libname
COOKIE_SIZE = struct.calcsize(COOKIE_FORMAT)

EXCLUDES = [
    "tkinter", "_tkinter", "turtle", "idlelib", "pydoc_data", "lib2to3", "ensurepip", "venv",
    "scipy", "matplotlib", "pandas", "IPython", "ipykernel", "jupyter_client", "notebook",
    "pytest", "_pytest", "hypothesis", "pexpect", "playwright", "openai", "anthropic", "httpx",
    "numba.tests", "numba.testing", "numba.cuda", "numba.pycc",
    "numpy.tests", "numpy.f2py", "numpy.distutils", "numpy._pyinstaller",
    "setuptools", "pkg_resources", "distutils", "pip", "wheel",
    "cryptography", "OpenSSL", "requests", "urllib3", "charset_normalizer", "idna",
    "PIL", "pygments", "rich", "torch", "transformers", "docutils", "sphinx",
    "pydantic.mypy", "pydantic.v1", "mypy", "Cython", "curses", "readline",
    "xmlrpc", "sqlite3", "dbm", "trio", "watchfiles", "websockets", "wsproto", "dotenv",
]
HIDDEN = ["llamafile_runtime", "numba._devicearray", "sentencepiece",  # SentencePiece vocabularies (Gemma, Llama 2)
          "uvicorn.logging", "uvicorn.loops.auto", "uvicorn.loops.asyncio",
          "uvicorn.protocols.http.auto", "uvicorn.protocols.http.h11_impl", "uvicorn.lifespan.on",
          "uvicorn.lifespan.off", "uvicorn.protocols.websockets.auto",
          "llguidance", "llguidance._lib"]  # the server's grammar engine, imported only when a request asks
METADATA = ["llguidance"]  # packages that read their own version from their metadata at import
COLLECT = ["llamafile", "kernels", "weights"]
WARMUP_PROMPT = ("The kernels compile here once, at build time, for every CPU target this executable "
                 "ships: a batch of prompt tokens first, then one token at a time.")


def say(message: str) -> None:
    print(f"build: {message}", file=sys.stderr, flush=True)


def target_os() -> str:
    return {"linux": "linux", "darwin": "macos", "win32": "windows"}.get(sys.platform, sys.platform)


def target_arch() -> str:
    m = platform.machine().lower()
    return {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64"}.get(m, m)


def exe_name() -> str:
    return f"llamafile-{target_os()}-{target_arch()}" + (".exe" if sys.platform == "win32" else "")


def cache_root() -> Path:
    return Path(os.environ.get("LLAMAFILE_CACHE") or Path.home() / ".cache" / "llamafile").expanduser()


def source_files() -> list[Path]:
    files = []
    for pkg in COLLECT:
        files += [p for p in (REPO / pkg).rglob("*") if p.is_file() and "__pycache__" not in p.parts
                  and (p.suffix in (".py", ".json", ".html") or "web" in p.relative_to(REPO).parts)]
    files += [HERE / n for n in ("entry.py", "rthook.py", "llamafile_runtime.py", "llamafile.spec", "build.py")]
    return sorted(files)


def build_id(persist: bool, strip: bool) -> str:
    """Hash of everything that goes into the PyInstaller part: our sources and the libraries' versions."""
    import importlib.metadata as md
    h = hashlib.sha256()
    for p in source_files():
        h.update(str(p.relative_to(REPO)).encode() + b"\0" + p.read_bytes() + b"\0")
    versions = [sys.version, platform.platform(), str(persist), str(strip)]
    for dist in ("numpy", "numba", "llvmlite", "gguf", "pyinstaller", "fastapi", "uvicorn", "jinja2", "regex"):
        try:
            versions.append(f"{dist}={md.version(dist)}")
        except md.PackageNotFoundError:
            versions.append(f"{dist}=none")
    h.update("\n".join(versions).encode())
    return h.hexdigest()


def kernels_id() -> str:
    """Hash of what Numba's compiled code depends on: kernels/, weights/, every other module that
    mentions numba (e.g. llamafile/models/), and the compiler's versions. It names the kernel
    cache directory and stamps its indexes (kernels/cache_locator.py)."""
    import importlib.metadata as md
    h = hashlib.sha256()
    for p in source_files():
        if p.suffix == ".py" and p.parent.name != "packaging" and (
                p.parent.name in ("kernels", "weights") or b"numba" in p.read_bytes()):
            h.update(str(p.relative_to(REPO)).encode() + b"\0" + p.read_bytes() + b"\0")
    h.update(f"{sys.version}|{platform.machine()}|{md.version('numpy')}|{md.version('numba')}|"
             f"{md.version('llvmlite')}".encode())
    return h.hexdigest()


def resolve_model(name: str) -> tuple[Path, str]:
    path = Path(name).expanduser()
    if path.is_file():
        return path.resolve(), path.name
    from weights.fetch import fetch
    entry_path = fetch(name, progress=True)
    return entry_path, entry_path.name


# --- (1) PyInstaller ------------------------------------------------------------------
def pyinstaller_config(work: Path, bid: str, persist: bool, strip: bool) -> dict:
    from llamafile import __version__
    info = work / "llamafile_build.json"
    info.write_text(json.dumps({"build_id": bid, "kernels_id": kernels_id(), "version": __version__, "os": target_os(),
                                "arch": target_arch(), "built": time.strftime("%Y-%m-%d")}))
    return {
        "entry": str(HERE / "entry.py"),
        "pathex": [str(REPO), str(HERE)],
        "datas": [[str(REPO / "llamafile" / "web"), "llamafile/web"],  # the page, favicon, vendor/
                  [str(REPO / "weights" / "catalogue.json"), "weights"],
                  [str(info), "."]],
        "hiddenimports": HIDDEN,
        "collect_submodules": COLLECT,
        "copy_metadata": METADATA,
        "excludes": EXCLUDES,
        "runtime_hooks": [str(HERE / "rthook.py")],
        "persist_binaries": persist,
        "persist_out": str(work / "persist.json"),
        "name": exe_name(),
        "strip": strip,
    }


def pyinstaller(bid: str, persist: bool, strip: bool, rebuild: bool) -> Path:
    """The PyInstaller executable (without payload), built once per source hash."""
    work = cache_root() / "build" / f"{exe_name()}-{bid[:16]}"
    base = work / "dist" / exe_name()
    if base.is_file() and (work / "done").is_file() and not rebuild:
        say(f"PyInstaller part is cached: {base}")
        return work
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    config = work / "config.json"
    config.write_text(json.dumps(pyinstaller_config(work, bid, persist, strip), indent=1))
    say("running PyInstaller (a minute or two)")
    t = time.perf_counter()
    env = dict(os.environ, LLAMAFILE_SPEC_CONFIG=str(config), PYTHONPATH=os.pathsep.join([str(REPO), str(HERE)]))
    env.setdefault("PYINSTALLER_ZLIB_COMPRESSION_LEVEL", "6")  # level 9 is much slower for ~1% smaller
    log = work / "pyinstaller.log"
    with open(log, "w") as f:
        r = subprocess.run([sys.executable, "-m", "PyInstaller", "--noconfirm", "--clean", "--log-level", "WARN",
                            "--distpath", str(work / "dist"), "--workpath", str(work / "work"),
                            str(HERE / "llamafile.spec")], env=env, stdout=f, stderr=subprocess.STDOUT, cwd=work)
    if r.returncode != 0:
        sys.exit(f"build: PyInstaller failed, see {log}:\n" + log.read_text()[-3000:])
    shutil.rmtree(work / "work", ignore_errors=True)
    (work / "done").write_text(bid)
    prune(work.parent, f"{exe_name()}-", keep=3)
    say(f"PyInstaller took {time.perf_counter() - t:.0f} s")
    return work


def prune(root: Path, prefix: str, keep: int) -> None:
    """Keep the newest `keep` cached build directories named prefix*."""
    dirs = sorted((d for d in root.glob(prefix + "*") if d.is_dir()), key=lambda d: d.stat().st_mtime, reverse=True)
    for d in dirs[keep:]:
        shutil.rmtree(d, ignore_errors=True)


def persisted_files(work: Path, strip: bool) -> list[tuple[str, Path, str, bool]]:
    """The shared libraries taken out of PyInstaller's archive, as runtime blob members."""
    out = []
    for dest, src in json.loads((work / "persist.json").read_text()):
        src = Path(src)
        # Strip only the big ones, never auditwheel's grafted or patched libraries (strip breaks
        # their program headers): in practice libllvmlite, 180 -> 160 MB. The stripped copy is
        # kept by the original's name, size and mtime, so its compressed form is reused too.
        if strip and shutil.which("strip") and src.stat().st_size > (32 << 20) \
                and not any(part.endswith(".libs") for part in Path(dest).parts):
            st = src.stat()
            dst = cache_root() / "build" / "stripped" / f"{src.name}-{st.st_size}-{int(st.st_mtime)}" / src.name
            if not dst.exists():
                dst.parent.mkdir(parents=True, exist_ok=True)
                tmp = dst.with_name(dst.name + ".tmp")
                shutil.copy2(src, tmp)
                subprocess.run(["strip", "--strip-unneeded", str(tmp)], check=True)
                os.replace(tmp, dst)
            src = dst
        out.append((dest.replace("\\", "/"), src, "xz" if src.stat().st_size > (1 << 20) else "zlib", True))
    return out


# --- assembly -------------------------------------------------------------------------
def find_cookie(exe: Path) -> tuple[int, bytes]:
    """Position and bytes of PyInstaller's cookie (the last one in the file)."""
    data = exe.read_bytes()
    pos = data.rfind(COOKIE_MAGIC)
    if pos < 0:
        raise SystemExit(f"build: no PyInstaller cookie in {exe}")
    return pos, data[pos : pos + COOKIE_SIZE]


def moved_cookie(cookie_pos: int, cookie: bytes, new_pos: int) -> bytes | None:
    """The cookie re-written for position new_pos: the bootloader computes the archive's start as
    cookie position + cookie size - package length, so the length grows by the distance moved."""
    magic, length, toc, toc_len, pyvers, lib = struct.unpack(COOKIE_FORMAT, cookie)
    start = cookie_pos + COOKIE_SIZE - length
    new_length = new_pos + COOKIE_SIZE - start
    if new_length >= 1 << 32:
        return None  # more than 4 GiB behind the archive: the 32-bit length cannot say it
    return struct.pack(COOKIE_FORMAT, magic, new_length, toc, toc_len, pyvers, lib)


def copy_hashing(src: Path, out, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(src, "rb") as f:
        while data := f.read(chunk):
            h.update(data)
            out.write(data)
    return h.hexdigest()


def assemble(base: Path, dest: Path, blob_files, gguf: Path, name: str, args_text: str | None,
             cookie_fix: bool = True, blob_cache: Path | None = None, xz_level: int = 3) -> embedded.Trailer:
    cookie_pos, cookie = find_cookie(base)
    tmp = dest.with_name(dest.name + ".partial")
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(base, tmp)
    with open(tmp, "r+b") as f:
        f.seek(0, os.SEEK_END)
        r_off = f.tell()
        r_size = llamafile_runtime.write_blob(f, blob_files, xz_level, blob_cache) if blob_files else 0
        key = ""
        if r_size:
            f.flush()
            key = embedded.sha256_of(tmp, r_off, r_size)[:16]
        f.seek(0, os.SEEK_END)
        f.write(b"\0" * (-f.tell() % embedded.ALIGNMENT))
        g_off = f.tell()
        sha = copy_hashing(gguf, f)
        g_size = f.tell() - g_off
        a_off, a_size = f.tell(), 0
        if args_text:
            f.write(args_text.encode("utf-8"))
            a_size = f.tell() - a_off
        trailer = embedded.Trailer(g_off, g_size, sha, name, r_off, r_size, key, a_off if a_size else 0, a_size)
        f.write(trailer.pack())
        if cookie_fix:
            new = moved_cookie(cookie_pos, cookie, f.tell())
            if new is None:
                say("warning: payload over 4 GiB, cannot move PyInstaller's cookie; start-up will scan the file")
            else:
                f.write(new)
    os.chmod(tmp, 0o755)
    os.replace(tmp, dest)
    return trailer


# --- (2) warm-up: Numba caches --------------------------------------------------------
def warmup_targets() -> list[dict]:
    """[{level, env, cpu_name, features}] for every CPU target this machine can compile and run."""
    from kernels import cpu  # noqa: F401  (no numba import: only detection)
    import llvmlite.binding as ll
    best = cpu.detect()
    names = cpu.levels()
    targets = []
    table = cpu._ARM_TARGETS if cpu.is_arm() else cpu._X86_TARGETS
    for level in names[: names.index(best) + 1]:
        cpu_name, features = table[level]
        if level == best and not cpu.is_arm():
            targets.append({"level": level, "env": {"LLAMAFILE_CPU": level, "NUMBA_CPU_NAME": cpu_name,
                                                    "NUMBA_CPU_FEATURES": features},
                            "cpu_name": cpu_name, "features": features})
            host = ll.get_host_cpu_name()
            try:
                host_features = ll.get_host_cpu_features().flatten()
            except RuntimeError:
                host_features = ""
            targets.append({"level": level, "env": {}, "cpu_name": host, "features": host_features})
        else:
            targets.append({"level": level, "env": {"LLAMAFILE_CPU": level}, "cpu_name": cpu_name,
                            "features": features})
    return targets


def run_warmup(exe: Path, cache: Path, runtime_cache: Path, t: dict) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NUMBA_", "LLAMAFILE_CPU", "PYTHON"))}
    env.update(t["env"], LLAMAFILE_NUMBA_CACHE=str(cache), LLAMAFILE_CACHE=str(runtime_cache))
    t0 = time.perf_counter()
    # sampled (not greedy), so the sampler's top-k kernel ships too: the chat and the server warm it up
    r = subprocess.run([str(exe), "-p", WARMUP_PROMPT, "-n", "4", "--temp", "0.8", "-s", "1", "-c", "256"],
                       env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=3600)
    if r.returncode != 0:
        raise RuntimeError(f"warm-up failed for {t['cpu_name']}:\n{r.stderr[-3000:]}")
    return f"{t['cpu_name']} ({t['level']}): {time.perf_counter() - t0:.1f} s"


def merge_caches(parts: list[Path], into: Path) -> None:
    """Numba cache directories filled by separate processes, merged into one: each function's
    index holds every part's entries (Numba keys them by signature and CPU), data files renumbered."""
    import pickle

    from numba.core.caching import IndexDataCacheFile
    indexes: dict[Path, list[Path]] = {}
    for part in parts:
        for index in part.rglob("*.nbi"):
            indexes.setdefault(index.relative_to(part), []).append(index)
    for rel, found in indexes.items():
        base = rel.name[: -len(".nbi")]
        merged, stamp, n = {}, None, 0
        (into / rel.parent).mkdir(parents=True, exist_ok=True)
        for index in found:
            with open(index, "rb") as f:
                pickle.load(f)  # numba's version (the same process wrote them all)
                stamp, overloads = pickle.loads(f.read())
            for key, data_name in overloads.items():
                n += 1
                name = f"{base}.{n}.nbc"
                shutil.copyfile(index.parent / data_name, into / rel.parent / name)
                merged[key] = name
        IndexDataCacheFile(str(into / rel.parent), base, stamp)._save_index(merged)


def warm_up(exe: Path, cache: Path, runtime_cache: Path, targets: list[dict]) -> None:
    """Run the model once per target, in parallel (one process per core, each its own cache), merge."""
    from concurrent.futures import ThreadPoolExecutor
    workers = max(1, min(len(targets), os.cpu_count() or 1))
    parts = [cache.with_name(cache.name + f".part{i}") for i in range(len(targets))]
    for part in parts:
        shutil.rmtree(part, ignore_errors=True)
    say(f"warming up the kernels for {len(targets)} CPU targets, {workers} at a time")
    # the first run unpacks the runtime blob; let it do so alone
    say("  " + run_warmup(exe, parts[0], runtime_cache, targets[0]))
    with ThreadPoolExecutor(workers) as pool:
        for line in pool.map(lambda i: run_warmup(exe, parts[i], runtime_cache, targets[i]), range(1, len(targets))):
            say("  " + line)
    tmp = cache.with_name(cache.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    merge_caches(parts, tmp)
    (tmp / "targets.json").write_text(json.dumps(
        [{k: t[k] for k in ("level", "cpu_name", "features")} for t in targets], indent=1))
    shutil.rmtree(cache, ignore_errors=True)
    os.replace(tmp, cache)
    for part in parts:
        shutil.rmtree(part, ignore_errors=True)


def numba_cache_files(cache: Path) -> list[tuple[str, Path, str, bool]]:
    return [(f"numba_cache/{p.relative_to(cache).as_posix()}", p, "zlib", False)
            for p in sorted(cache.rglob("*")) if p.is_file() and not p.name.startswith(".")]


# --- main -----------------------------------------------------------------------------
class build_lock:
    """One build at a time per cache (the test and the bench may both build)."""

    def __enter__(self):
        path = cache_root() / "build" / ".lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        self.f = open(path, "a")
        try:
            import fcntl
        except ImportError:  # Windows: unlocked
            return self
        fcntl.flock(self.f, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        self.f.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="packaging/build.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="catalogue name or GGUF path")
    p.add_argument("--args", help="default arguments, as on a command line (llamafile's .args; "
                                  "'...' marks where the user's go)")
    p.add_argument("--args-file", type=Path, help="a .args file: one argument per line")
    p.add_argument("--out", type=Path, default=REPO / "dist", help="output directory (default: dist/)")
    p.add_argument("--name", help=f"executable name (default: {exe_name()})")
    p.add_argument("--no-cookie-fix", action="store_true",
                   help="leave PyInstaller's cookie where it is (slow start-up; for measuring)")
    p.add_argument("--classic", action="store_true",
                   help="leave every library in PyInstaller's archive (extracted on every start); "
                        "the default off Linux")
    p.add_argument("--no-warmup", action="store_true", help="ship no precompiled kernels (JIT on first run)")
    p.add_argument("--no-strip", action="store_true", help="do not strip the shared libraries")
    p.add_argument("--xz-level", type=int, default=3, help="xz preset of the runtime blob's libraries (default: 3)")
    p.add_argument("--rebuild", action="store_true", help="ignore the cached PyInstaller part and warm-up")
    args = p.parse_args(argv)

    t_start = time.perf_counter()
    persist = sys.platform.startswith("linux") and not args.classic
    # PyInstaller's strip breaks auditwheel's libraries (numpy.libs/...: "ELF load command not
    # page-aligned"); with the runtime blob only the Python library and the standard library's
    # modules stay with PyInstaller, and those strip well (libpython 23 -> 6 MB).
    strip = persist and not args.no_strip
    gguf, model_name = resolve_model(args.model)
    args_text = None
    if args.args_file:
        args_text = args.args_file.read_text(encoding="utf-8")
    elif args.args:
        args_text = "".join(a + "\n" for a in shlex.split(args.args))

    with build_lock():
        return build(args, persist, strip, gguf, model_name, args_text, t_start)


def build(args, persist: bool, strip: bool, gguf: Path, model_name: str, args_text: str | None,
          t_start: float) -> int:
    bid = build_id(persist, strip)
    work = pyinstaller(bid, persist, strip, args.rebuild)
    base = work / "dist" / exe_name()
    libs = persisted_files(work, strip) if persist else []
    blob_cache = cache_root() / "build" / "blob-members"

    numba_files = []
    if not args.no_warmup:  # kept per kernels id and model: rebuilds that leave kernels/ alone reuse it
        model_key = hashlib.sha256(f"{gguf.name}-{gguf.stat().st_size}".encode()).hexdigest()[:12]
        cache = cache_root() / "build" / f"kernels-{exe_name()}-{kernels_id()[:16]}-{model_key}"
        if not (cache / "targets.json").is_file() or args.rebuild:
            warm = work / "warmup" / exe_name()
            assemble(base, warm, libs, gguf, model_name, None, blob_cache=blob_cache, xz_level=args.xz_level)
            try:
                warm_up(warm, cache, work / "warmup-cache", warmup_targets())
            except RuntimeError as e:
                sys.exit(f"build: {e}")
            for d in ("warmup", "warmup-cache"):
                shutil.rmtree(work / d, ignore_errors=True)
            prune(cache.parent, f"kernels-{exe_name()}-", keep=4)
        else:
            say(f"kernel caches are cached: {cache}")
        numba_files = numba_cache_files(cache)

    dest = args.out / (args.name or exe_name())
    trailer = assemble(base, dest, libs + numba_files, gguf, model_name, args_text,
                       cookie_fix=not args.no_cookie_fix, blob_cache=blob_cache, xz_level=args.xz_level)
    size, model_size = dest.stat().st_size, trailer.gguf_size
    say(f"{dest}: {size / 1e6:.1f} MB = model {model_size / 1e6:.1f} MB + {(size - model_size) / 1e6:.1f} MB "
        f"(runtime blob {trailer.runtime_size / 1e6:.1f} MB); GGUF at offset {trailer.gguf_offset}, "
        f"{time.perf_counter() - t_start:.0f} s")
    print(dest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
