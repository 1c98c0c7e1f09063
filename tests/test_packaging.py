"""The one-file executable (packaging/build.py), run the way a user runs it.

The executable is built once per source hash (build.py caches its PyInstaller part and the kernel
warm-up under ~/.cache/llamafile/build/: a few minutes the first time, seconds after), copied
into a directory without the source tree and run there with no PYTHONPATH.
Set LLAMAFILE_SKIP_PACKAGING=1 to leave these out.
"""
from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, greedy_prefix, model_path
from weights import embedded

PROMPT = "The capital of France is"
pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux") or platform.machine().lower() not in ("x86_64", "amd64"),
                       reason="the test builds the Linux x86_64 executable"),
    pytest.mark.skipif(os.environ.get("LLAMAFILE_SKIP_PACKAGING") == "1", reason="LLAMAFILE_SKIP_PACKAGING=1"),
]


# --- the trailer, without building anything ----------------------------------------------
def test_trailer_round_trip():
    t = embedded.Trailer(65536, 1234, "ab" * 32, "model.gguf", 100, 200, "0123456789abcdef", 1400, 12)
    assert embedded.Trailer.unpack(t.pack()) == t
    assert embedded.Trailer.unpack(b"x" * embedded.TRAILER_SIZE) is None


def test_args_file_convention():
    defaults = embedded.parse_args_file("-c\n2048\n...\n--temp\n0\n\n")
    assert defaults == ["-c", "2048", "...", "--temp", "0"]
    assert embedded.merge_args(defaults, ["-p", "hi"]) == ["-c", "2048", "-p", "hi", "--temp", "0"]
    assert embedded.merge_args(["--temp", "0"], ["-p", "hi"]) == ["--temp", "0", "-p", "hi"]


def test_gguf_maps_from_a_file_that_carries_it(tmp_path):
    """GGUFFile(path) on an 'executable' finds the GGUF through the trailer and maps it in place."""
    from weights.gguf import GGUFFile
    src = model_path("smollm2")
    fake = tmp_path / "program"
    with open(fake, "wb") as f:
        f.write(b"\x7fELF" + b"\0" * 5000)
        f.write(b"\0" * (-f.tell() % embedded.ALIGNMENT))
        offset = f.tell()
        with open(src, "rb") as g:
            shutil.copyfileobj(g, f)
        size = f.tell() - offset
        f.write(embedded.Trailer(offset, size, "", src.name).pack())
        f.write(b"MEI\014\013\012\013\016" + b"\0" * 80)  # a cookie after it, as in the real thing
    assert embedded.gguf_region(fake) == (offset, size)
    assert embedded.gguf_region(src) is None
    g = GGUFFile(fake)
    assert g.offset == offset and g.require("general.architecture") == "llama"
    assert len(g.tensors) == len(GGUFFile(src).tensors)


# --- the executable ----------------------------------------------------------------------
def clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTHON", "NUMBA_", "LLAMAFILE_CPU", "LLAMAFILE_THREADS", "VIRTUAL_ENV"))}
    env.update(extra)
    return env


def build(out: Path, *extra: str) -> Path:
    try:
        import PyInstaller  # noqa: F401
    except ImportError:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "pyinstaller"], check=True)
    r = subprocess.run([sys.executable, str(REPO / "packaging" / "build.py"), "--model", "smollm2-135m-instruct",
                        "--out", str(out), *extra], capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stderr[-4000:]
    return Path(r.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def exe(tmp_path_factory) -> Path:
    """The built executable, copied alone into an empty directory."""
    built = build(tmp_path_factory.mktemp("dist"))
    home = tmp_path_factory.mktemp("run")
    dst = home / built.name
    shutil.copy2(built, dst)
    return dst


def run(exe: Path, *args: str, timeout=600, **env) -> subprocess.CompletedProcess:
    return subprocess.run([str(exe), *args], cwd=exe.parent, env=clean_env(**env), capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def expected_prefix() -> str:
    return greedy_prefix(PROMPT)


def test_size_and_trailer(exe):
    t = embedded.read_trailer(exe)
    assert t is not None and t.gguf_offset % embedded.ALIGNMENT == 0
    assert t.gguf_size == model_path("smollm2").stat().st_size
    assert exe.stat().st_size <= t.gguf_size + 100_000_000
    assert embedded.verify(exe)  # the sha256 in the trailer


def test_greedy_completion_matches_reference_and_source(exe):
    r = run(exe, "-p", PROMPT, "-n", "16", "--temp", "0")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(expected_prefix()), r.stdout
    src = subprocess.run([sys.executable, "-m", "llamafile", "-m", str(model_path("smollm2")), "-p", PROMPT,
                          "-n", "16", "--temp", "0"], cwd=REPO, capture_output=True, text=True, timeout=600,
                         env=clean_env(PYTHONPATH=str(REPO)), stdin=subprocess.DEVNULL)
    assert src.returncode == 0, src.stderr
    assert r.stdout == src.stdout


def test_other_model_with_m(exe):
    """-m still takes any GGUF, like llamafile (here the same file, from the cache)."""
    r = run(exe, "-m", str(model_path("smollm2")), "-p", PROMPT, "-n", "4", "--temp", "0")
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout


def is_gguf(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"GGUF"


def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def test_weights_are_mapped_from_the_executable_never_written(exe, tmp_path):
    cache = tmp_path / "cache"  # a fresh cache: the runtime blob and kernels unpack here, the model must not
    p = subprocess.Popen([str(exe), "-p", "Once upon a time", "-n", "2000", "--temp", "0", "--ignore-eos", "-c", "2048"],
                         cwd=exe.parent, env=clean_env(LLAMAFILE_CACHE=str(cache)), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        assert p.stdout.read(len("Once upon a time") + 1)  # generating: the model is loaded
        trailer = embedded.read_trailer(exe)
        pids = [p.pid] + children(p.pid)  # the bootloader and the Python process it starts
        maps = {pid: Path(f"/proc/{pid}/maps").read_text() for pid in pids}
        weights = [line for text in maps.values() for line in text.splitlines()
                   if line.endswith(str(exe)) and int(line.split()[2], 16) >= trailer.gguf_offset]
        assert weights, "no mapping of the executable at the GGUF's offset"
        assert not any(".gguf" in line for text in maps.values() for line in text.splitlines())
        meipass = [m.group(1) for pid in pids
                   for m in [re.search(rb"_PYI_APPLICATION_HOME_DIR=([^\0]+)", Path(f"/proc/{pid}/environ").read_bytes())]
                   if m]
        assert meipass, "no PyInstaller extraction directory in the child's environment"
        for where in [Path(meipass[0].decode()), exe.parent, cache]:
            written = [f for f in where.rglob("*") if f.is_file() and not f.is_symlink() and f != exe]
            assert written or where == exe.parent
            assert not [f for f in written if f.suffix == ".gguf" or is_gguf(f)], where
    finally:
        p.terminate()
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        for pid in children(p.pid):
            try:
                os.kill(pid, 9)
            except OSError:
                pass


def lower_levels() -> list[str]:
    """The forced levels to try: AVX2-only and generic, those this CPU can run (generic on ARM)."""
    from kernels import cpu
    runnable = cpu.levels()[: cpu.levels().index(cpu.detect()) + 1]
    return [level for level in ("avx2", "generic") if level in runnable]


@pytest.mark.parametrize("level", lower_levels())
def test_lower_cpu_levels_use_the_shipped_kernels(exe, level):
    t = time.perf_counter()
    r = run(exe, "-p", PROMPT, "-n", "16", "--temp", "0", "--verbose", LLAMAFILE_CPU=level, NUMBA_DEBUG_CACHE="1")
    assert r.returncode == 0, r.stderr[-3000:]
    text = re.sub(r"\[cache\][^\n]*\n", "", r.stdout)  # numba's cache log goes to stdout too
    assert text.startswith(expected_prefix()), text
    assert f"cpu {level}" in r.stderr
    assert "data loaded from" in r.stdout and "data saved to" not in r.stdout, "compiled instead of loading"
    assert time.perf_counter() - t < 60


def test_default_arguments_built_in(tmp_path):
    """--args at build time: llamafile's .args, the user's arguments in place of `...`."""
    built = build(tmp_path, "--args", "-n 3 --temp 0 ... --no-display-prompt", "--name", "llamafile-args")
    r = run(built, "-p", PROMPT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(" Paris.") and "capital" not in r.stdout, r.stdout
    r = run(built, "-p", PROMPT, "-n", "1")  # the user's -n comes after the built-in one
    assert r.returncode == 0, r.stderr
    assert r.stdout == " Paris\n", r.stdout
