"""The Linux executable for older distributions, built inside a Debian 11 (bullseye) root.

    sudo python3 packaging/old_glibc.py [--arch x86_64|arm64] [--model NAME] [--out DIR] [--root DIR] [-- BUILD_ARGS]
    python3 packaging/old_glibc.py --glibc EXE       # the newest GLIBC_ version EXE's ELF files need

An executable needs a glibc at least as new as the one its bundled libpython and system libraries
were linked against: built on this Debian 12 machine, GLIBC_2.36 (libstdc++; libpython 2.35, as
--glibc measures). Built here it runs on glibc 2.31 (Debian 11, Ubuntu 20.04, RHEL 9 and newer):

1. a bullseye root (glibc 2.31, gcc 10) from Debian's mirror with debootstrap, as root;
2. Python 3.11 compiled in it from Debian's own source package (bookworm's python3.11, via
   apt-get source inside the root): bullseye has only Python 3.9 and PyPI has no CPython builds;
3. the dependencies as wheels for glibc <= 2.31, fetched on this machine (pip download) and installed
   offline in the root (llguidance's wheels need 2.31, numpy/numba/llvmlite's 2.27-2.28);
4. packaging/build.py run in the root on this source tree (bind-mounted) and the model.

Each step is kept in the root (~/.cache/llamafile/bullseye-root, or $LLAMAFILE_CACHE's), so a second
run only rebuilds the executable (build.py's own caches live in the root too).

`--arch arm64` does the same for aarch64 (Raspberry Pi OS bullseye has glibc 2.31 too) on this x86_64
machine, emulated by qemu-user-static through binfmt_misc (as ../shared/arm64/setup.sh): an arm64
bullseye root in ~/.cache/llamafile/bullseye-arm64-root, Python compiled in it under emulation, the
manylinux aarch64 wheels for glibc <= 2.31, and build.py run as a cortex-a76 (QEMU_CPU), so that both
Raspberry Pi targets (cortex-a72 = Pi 4, cortex-a76 = Pi 5 with sdot) are warmed up; the blob is
compressed with `--xz-level 1` unless the build arguments say otherwise (xz runs emulated too).

Older than bullseye is out of reach: buster (glibc 2.28) is served from archive.debian.org only
(unreachable here), and llguidance has no wheel below glibc 2.31.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SUITE = "bullseye"
MIRROR = "http://deb.debian.org/debian"
CACHE = Path(os.environ.get("LLAMAFILE_CACHE") or Path.home() / ".cache" / "llamafile").expanduser()
ROOT = CACHE / "bullseye-root"   # the x86_64 root; root_for(arch) for any
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
# Per target: Debian's name, the root's directory in the cache, the wheels' platform tags (glibc <= 2.31;
# aarch64's manylinux starts at 2.17), the CPU build.py runs as under qemu (None: natively), build.py's
# default arguments.
ARCHES = {
    "x86_64": {"debian": "amd64", "machine": "x86_64", "root": "bullseye-root", "wheels": WHEEL_PLATFORMS,
               "build_cpu": None, "build_args": {}},
    "arm64": {"debian": "arm64", "machine": "aarch64", "root": "bullseye-arm64-root",
              "wheels": [f"manylinux_2_{v}_aarch64" for v in range(31, 16, -1)] + ["manylinux2014_aarch64"],
              "build_cpu": "cortex-a76", "build_args": {"--xz-level": "1"}},
}


def say(message: str) -> None:
    print(f"old_glibc: {message}", file=sys.stderr, flush=True)


def run(cmd: list[str], **kwargs) -> None:
    say(" ".join(cmd) if len(" ".join(cmd)) < 200 else " ".join(cmd)[:200] + " ...")
    subprocess.run(cmd, check=True, **kwargs)


def root_for(arch: str = "x86_64") -> Path:
    return CACHE / ARCHES[arch]["root"]


def exe_name(arch: str = "x86_64") -> str:
    return f"llamafile-linux-{ARCHES[arch]['machine']}"


def can_build(arch: str = "x86_64") -> str | None:
    """Why this machine cannot make the root, or None."""
    if sys.platform != "linux" or os.uname().machine != "x86_64":
        return "needs Linux x86_64"
    if os.geteuid() != 0:
        return "needs root (debootstrap, chroot, mount)"
    if not shutil.which("debootstrap"):
        return "needs debootstrap (apt-get install debootstrap)"
    if arch != "x86_64" and not shutil.which(f"qemu-{ARCHES[arch]['machine']}-static"):
        return "needs qemu-user-static and binfmt-support (apt-get install qemu-user-static binfmt-support)"
    return None


def enable_binfmt(arch: str) -> None:
    """The kernel runs the root's aarch64 programs through qemu (what ../shared/arm64/setup.sh does);
    Debian's qemu-user-static registers it with the F flag, so the root needs no copy of qemu."""
    if arch == "x86_64":
        return
    if not os.path.ismount("/proc/sys/fs/binfmt_misc"):
        run(["mount", "-t", "binfmt_misc", "binfmt_misc", "/proc/sys/fs/binfmt_misc"])
    entry = Path(f"/proc/sys/fs/binfmt_misc/qemu-{ARCHES[arch]['machine']}")
    if not entry.exists() or not entry.read_text().startswith("enabled"):
        run(["update-binfmts", "--enable", f"qemu-{ARCHES[arch]['machine']}"])


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


def in_root(root: Path, script: str, qemu_cpu: str | None = None, **kwargs) -> None:
    """A bash script in the root, with a clean environment (none of this machine's pip, Numba or
    llamafile settings); under qemu as the CPU qemu_cpu."""
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
           "LANG": "C.UTF-8", "TERM": os.environ.get("TERM", "dumb")}
    if qemu_cpu:
        env["QEMU_CPU"] = qemu_cpu
    run(["chroot", str(root), "/bin/bash", "-euc", script], env=env, **kwargs)


@contextlib.contextmanager
def step(name: str):
    t = time.monotonic()
    yield
    say(f"{name} took {time.monotonic() - t:.0f} s")


def make_root(root: Path, arch: str = "x86_64") -> None:
    if (root / ".stamp-root").exists():
        return
    # a foreign root is made in one go: with binfmt registered, debootstrap's second stage runs
    # the root's own programs through qemu
    foreign = [] if arch == "x86_64" else [f"--arch={ARCHES[arch]['debian']}"]
    run(["debootstrap", *foreign, "--variant=minbase", f"--include={BUILD_PACKAGES}", SUITE, str(root), MIRROR])
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


def install_packages(root: Path, arch: str = "x86_64") -> None:
    if (root / ".stamp-packages").exists():
        return
    wheels = root / "build" / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    platforms = [arg for p in ARCHES[arch]["wheels"] for arg in ("--platform", p)]
    run([sys.executable, "-m", "pip", "download", "-q", "--dest", str(wheels), "--only-binary=:all:", *platforms,
         "--python-version", "3.11", "--implementation", "cp", *REQUIREMENTS])
    with mounted(root):
        in_root(root, f"""
            {PYTHON} -m venv {VENV}
            {VENV}/bin/pip install -q --no-index --find-links /build/wheels {' '.join(REQUIREMENTS)}
        """)
    (root / ".stamp-packages").write_text(" ".join(REQUIREMENTS))


def build(root: Path, model: Path, out: Path, extra: list[str], arch: str = "x86_64") -> Path:
    """packaging/build.py in the root, on this source tree (bound at /src) and the model (/model)."""
    out.mkdir(parents=True, exist_ok=True)
    with mounted(root, {"/src": REPO, "/model": model.parent, "/out": out}):
        in_root(root, f"""
            cd /src
            export HOME=/root LLAMAFILE_CACHE=/root/.cache/llamafile PYTHONDONTWRITEBYTECODE=1
            {VENV}/bin/python packaging/build.py --model /model/{model.name} --out /out {' '.join(extra)}
        """, qemu_cpu=ARCHES[arch]["build_cpu"])
    return out / exe_name(arch)


def elf_files(exe: Path, into: Path) -> list[Path]:
    """Every ELF file the executable carries, unpacked into `into`: the bootloader (the executable
    itself), what PyInstaller's archive holds and what the runtime blob holds."""
    for d in (REPO, REPO / "packaging"):
        if str(d) not in sys.path:
            sys.path.insert(0, str(d))
    import llamafile_runtime
    from PyInstaller.archive.readers import CArchiveReader
    from weights.embedded import read_trailer
    files = [exe]
    archive = CArchiveReader(str(exe))
    for name, entry in archive.toc.items():
        if entry[4] in "bxn":  # binaries, data files, symlinks (the rest are Python's bytecode)
            data = archive.extract(name)
            if data[:4] == b"\x7fELF":
                dst = into / "pyinstaller" / name
                dst.parent.mkdir(parents=True, exist_ok=True)
                dst.write_bytes(data)
                files.append(dst)
    trailer = read_trailer(exe)
    if trailer is not None and trailer.runtime_size:
        entries, offset = llamafile_runtime.read_header(str(exe), trailer.runtime_offset)
        llamafile_runtime.extract(str(exe), offset, entries, into / "blob")
        for e in entries:
            with open(into / "blob" / e["name"], "rb") as f:
                if f.read(4) == b"\x7fELF":
                    files.append(into / "blob" / e["name"])
    return files


def glibc_needed(exe: Path) -> tuple[str, list[tuple[str, str]]]:
    """The newest GLIBC_ symbol version any of the executable's ELF files requires (their version
    references, what `objdump -T` lists as (GLIBC_x.y)): the oldest glibc it starts on. Also the files
    that need it (at most five)."""
    def key(v: str) -> tuple[int, ...]:
        return tuple(int(x) for x in v.split("."))
    needs: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="old_glibc-") as tmp:
        for f in elf_files(exe.resolve(), Path(tmp)):
            out = subprocess.run(["objdump", "-p", str(f)], capture_output=True, text=True, check=True).stdout
            versions = re.findall(r"\bGLIBC_(\d+(?:\.\d+)+)\b", out.partition("Version References:")[2])
            if versions:
                needs[f.name if f == exe.resolve() else str(f.relative_to(tmp))] = max(versions, key=key)
    floor = max(needs.values(), key=key)
    return floor, sorted(((n, v) for n, v in needs.items() if v == floor))[:5]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", choices=sorted(ARCHES), default="x86_64",
                   help="x86_64 (default) or arm64 (emulated: qemu-user-static)")
    p.add_argument("--model", default="smollm2-135m-instruct", help="catalogue name or GGUF path")
    p.add_argument("--out", help="output directory (default: dist-bullseye/, arm64: dist-arm64/)")
    p.add_argument("--root", help=f"the bullseye root (default: {root_for('x86_64')}, "
                                  f"arm64: {root_for('arm64')})")
    p.add_argument("--glibc", metavar="EXE", help="print the glibc version EXE needs, build nothing")
    p.add_argument("build_args", nargs="*", help="more packaging/build.py arguments (after --)")
    args = p.parse_args()
    if args.glibc:
        floor, worst = glibc_needed(Path(args.glibc))
        say(f"{args.glibc} needs GLIBC_{floor}: " + ", ".join(f"{n} {v}" for n, v in worst))
        print(floor)
        return 0
    why = can_build(args.arch)
    if why:
        say(why)
        return 1
    sys.path.insert(0, str(REPO))
    from weights.fetch import fetch
    model = Path(args.model) if Path(args.model).exists() else fetch(args.model, progress=True)
    root = Path(args.root or root_for(args.arch)).resolve()
    out = Path(args.out or REPO / ("dist-bullseye" if args.arch == "x86_64" else f"dist-{args.arch}"))
    build_args = list(args.build_args)
    for flag, value in ARCHES[args.arch]["build_args"].items():
        if not any(a == flag or a.startswith(flag + "=") for a in build_args):
            build_args += [flag, value]
    enable_binfmt(args.arch)
    with step("the root"):
        make_root(root, args.arch)
    with step("Python"):
        make_python(root)
    with step("the wheels"):
        install_packages(root, args.arch)
    with step("the executable"):
        exe = build(root, model.resolve(), out.resolve(), build_args, args.arch)
    say(f"built {exe}")
    print(exe)
    return 0


if __name__ == "__main__":
    sys.exit(main())
