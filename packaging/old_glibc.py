"""The Linux x86_64 executable for older distributions, built inside a Debian 11 (bullseye) root.

    sudo python3 packaging/old_glibc.py [--model NAME] [--out dist-bullseye] [--root DIR]

An executable needs a glibc at least as new as the one its bundled libpython and system libraries
were linked against: built on Debian 12 that means glibc 2.34+ (2.35 for this machine's Python).
Built here it runs on glibc 2.31 (Debian 11, Ubuntu 20.04, RHEL 9 and newer):

1. a bullseye root (glibc 2.31, gcc 10) from Debian's mirror with debootstrap, as root;
2. Python 3.11 compiled in it from Debian's own source package (bookworm's python3.11, via
   apt-get source inside the root): bullseye has only Python 3.9 and PyPI has no CPython builds;
3. the dependencies as wheels for glibc <= 2.31, fetched on this machine (pip download) and installed
   offline in the root (llguidance's wheels need 2.31, numpy/numba/llvmlite's 2.27-2.28);
4. packaging/build.py run in the root on this source tree (bind-mounted) and the model.

Each step is kept in the root (~/.cache/llamafile/bullseye-root, or $LLAMAFILE_CACHE's), so a second
run only rebuilds the executable (build.py's own caches live in the root too). Older than bullseye
is out of reach: buster (glibc 2.28) is served from archive.debian.org only (unreachable here),
and llguidance has no wheel below glibc 2.31.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SUITE = "bullseye"
MIRROR = "http://deb.debian.org/debian"
ROOT = Path(os.environ.get("LLAMAFILE_CACHE") or Path.home() / ".cache" / "llamafile").expanduser() / "bullseye-root"
BUILD_PACKAGES = ("build-essential,libssl-dev,zlib1g-dev,libffi-dev,libbz2-dev,liblzma-dev,libsqlite3-dev,"
                  "uuid-dev,ca-certificates,binutils,xz-utils,file")
PYTHON = "/opt/python3.11/bin/python3.11"
VENV = "/opt/venv"
PYTHON_SOURCE = "python3.11"   # the source package, from bookworm
WHEEL_PLATFORMS = [f"manylinux_2_{v}_x86_64" for v in (31, 30, 29, 28, 27, 26, 25, 24, 17, 12, 5)] + \
                  ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]
REQUIREMENTS = ("numpy numba gguf regex sentencepiece jinja2 tqdm prompt_toolkit fastapi uvicorn llguidance "
                "pyinstaller").split()
MOUNTS = ("proc", "dev")


def say(message: str) -> None:
    print(f"old_glibc: {message}", file=sys.stderr, flush=True)


def run(cmd: list[str], **kwargs) -> None:
    say(" ".join(cmd) if len(" ".join(cmd)) < 200 else " ".join(cmd)[:200] + " ...")
    subprocess.run(cmd, check=True, **kwargs)


def can_build() -> str | None:
    """Why this machine cannot make the root, or None."""
    if sys.platform != "linux" or os.uname().machine != "x86_64":
        return "needs Linux x86_64"
    if os.geteuid() != 0:
        return "needs root (debootstrap, chroot, mount)"
    if not shutil.which("debootstrap"):
        return "needs debootstrap (apt-get install debootstrap)"
    return None


@contextlib.contextmanager
def mounted(root: Path, binds: dict[str, Path] | None = None):
    """/proc, /dev and the given host directories (target in the root -> host path) bound into the root."""
    done = []
    try:
        for name in MOUNTS:
            target = root / name
            if not os.path.ismount(target):
                subprocess.run(["mount", "--bind", f"/{name}", str(target)], check=True)
                done.append(target)
        for inside, host in (binds or {}).items():
            target = root / inside.lstrip("/")
            target.mkdir(parents=True, exist_ok=True)
            subprocess.run(["mount", "--bind", str(host), str(target)], check=True)
            done.append(target)
        yield
    finally:
        for target in reversed(done):
            subprocess.run(["umount", "-l", str(target)], check=False)


def in_root(root: Path, script: str, **kwargs) -> None:
    """A bash script in the root, with a clean environment (none of this machine's pip, Numba or
    llamafile settings)."""
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
           "LANG": "C.UTF-8", "TERM": os.environ.get("TERM", "dumb")}
    run(["chroot", str(root), "/bin/bash", "-euc", script], env=env, **kwargs)


def make_root(root: Path) -> None:
    if (root / ".stamp-root").exists():
        return
    run(["debootstrap", "--variant=minbase", f"--include={BUILD_PACKAGES}", SUITE, str(root), MIRROR])
    (root / ".stamp-root").write_text(SUITE)


def make_python(root: Path) -> None:
    if (root / ".stamp-python").exists():
        return
    shutil.copy("/etc/resolv.conf", root / "etc" / "resolv.conf")
    (root / "etc/apt/sources.list.d/bookworm-src.list").write_text(f"deb-src {MIRROR} bookworm main\n")
    with mounted(root):
        in_root(root, f"""
            apt-get update -qq
            mkdir -p /build && cd /build
            apt-get source --download-only {PYTHON_SOURCE}
            tar xzf python3.11_*.orig.tar.gz
            cd Python-3.11.*/
            ./configure --prefix=/opt/python3.11 --enable-shared LDFLAGS=-Wl,-rpath,/opt/python3.11/lib > ../configure.log
            make -j"$(nproc)" > ../make.log 2>&1
            make install > ../install.log 2>&1
            {PYTHON} -c 'import ssl, lzma, bz2, sqlite3, ctypes, zlib'
        """)
    (root / ".stamp-python").write_text(PYTHON)


def install_packages(root: Path) -> None:
    if (root / ".stamp-packages").exists():
        return
    wheels = root / "build" / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    platforms = [arg for p in WHEEL_PLATFORMS for arg in ("--platform", p)]
    run([sys.executable, "-m", "pip", "download", "-q", "--dest", str(wheels), "--only-binary=:all:", *platforms,
         "--python-version", "3.11", "--implementation", "cp", *REQUIREMENTS])
    with mounted(root):
        in_root(root, f"""
            {PYTHON} -m venv {VENV}
            {VENV}/bin/pip install -q --no-index --find-links /build/wheels {' '.join(REQUIREMENTS)}
        """)
    (root / ".stamp-packages").write_text(" ".join(REQUIREMENTS))


def build(root: Path, model: Path, out: Path, extra: list[str]) -> Path:
    """packaging/build.py in the root, on this source tree (bound at /src) and the model (/model)."""
    out.mkdir(parents=True, exist_ok=True)
    with mounted(root, {"/src": REPO, "/model": model.parent, "/out": out}):
        in_root(root, f"""
            cd /src
            export HOME=/root LLAMAFILE_CACHE=/root/.cache/llamafile PYTHONDONTWRITEBYTECODE=1
            {VENV}/bin/python packaging/build.py --model /model/{model.name} --out /out {' '.join(extra)}
        """)
    return out / "llamafile-linux-x86_64"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct", help="catalogue name or GGUF path")
    p.add_argument("--out", default=str(REPO / "dist-bullseye"))
    p.add_argument("--root", default=str(ROOT), help=f"the bullseye root (default: {ROOT})")
    p.add_argument("build_args", nargs="*", help="more packaging/build.py arguments (after --)")
    args = p.parse_args()
    why = can_build()
    if why:
        say(why)
        return 1
    sys.path.insert(0, str(REPO))
    from weights.fetch import fetch
    model = Path(args.model) if Path(args.model).exists() else fetch(args.model, progress=True)
    root = Path(args.root).resolve()
    make_root(root)
    make_python(root)
    install_packages(root)
    exe = build(root, model.resolve(), Path(args.out).resolve(), args.build_args)
    say(f"built {exe}")
    print(exe)
    return 0


if __name__ == "__main__":
    sys.exit(main())
