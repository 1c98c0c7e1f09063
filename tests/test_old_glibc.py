"""The executable for older Linux (packaging/old_glibc.py): built in a Debian 11 root, it runs there.

The executable built on this machine needs glibc 2.35 (its libpython's); the one built in a bullseye
root runs on glibc 2.31. This test builds it with packaging/old_glibc.py (the root, Python 3.11
compiled in it and the wheels are kept in ~/.cache/llamafile/bullseye-root: ~25 minutes the first
time on a busy 2-core machine, then the executable only, a few minutes) and runs the reference's
greedy completion in that root with chroot. Skipped where debootstrap cannot run (not root, not
Linux x86_64, no debootstrap), or with LLAMAFILE_SKIP_PACKAGING=1 as the other packaging tests.

The aarch64 case runs the executable `make exe-arm64` builds (old_glibc.py --arch arm64, under qemu)
in the arm64 bullseye root, as a Raspberry Pi 4 (cortex-a72) and a Pi 5 (cortex-a76), and checks
the glibc it needs. Building the root and the executable under emulation takes over an hour on a
2-core machine the first time; after that (the root cached in ~/.cache/llamafile/bullseye-arm64-root)
the executable is built from this tree at every run, as the x86_64 one is. Without the root the test
builds it, as the x86_64 case builds its own: it skips only where the root cannot be made or run (the
skipif below), never because it was not made yet.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, greedy_prefix

sys.path.insert(0, str(REPO / "packaging"))
import old_glibc  # noqa: E402

PROMPT = "The capital of France is"
pytestmark = pytest.mark.skipif(os.environ.get("LLAMAFILE_SKIP_PACKAGING") == "1", reason="LLAMAFILE_SKIP_PACKAGING=1")


@pytest.fixture(scope="module")
def exe() -> Path:
    out = old_glibc.ROOT.parent / "bullseye-dist"
    r = subprocess.run([sys.executable, str(REPO / "packaging" / "old_glibc.py"), "--out", str(out)],
                       capture_output=True, text=True, timeout=3 * 3600, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr[-4000:]
    return Path(r.stdout.strip().splitlines()[-1])


def in_root(*cmd: str, timeout=600, root: Path = old_glibc.ROOT, **env_extra: str) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8",
           "LLAMAFILE_CACHE": "/tmp/llamafile-test/cache", **env_extra}
    return subprocess.run(["chroot", str(root), *cmd], capture_output=True, text=True, env=env,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def expected_prefix() -> str:
    return greedy_prefix(PROMPT)


@pytest.mark.skipif(old_glibc.can_build() is not None, reason=f"debootstrap cannot run: {old_glibc.can_build()}")
def test_greedy_completion_on_glibc_2_31(exe):
    glibc = in_root("/usr/bin/ldd", "--version")
    assert re.search(r"GLIBC 2\.31\b", glibc.stdout), glibc.stdout
    work = old_glibc.ROOT / "tmp" / "llamafile-test"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    shutil.copy2(exe, work / exe.name)
    try:
        with old_glibc.mounted(old_glibc.ROOT):
            r = in_root(f"/tmp/llamafile-test/{exe.name}", "-p", PROMPT, "-n", "16", "--temp", "0")
        assert r.returncode == 0, r.stderr[-3000:]
        assert r.stdout.startswith(expected_prefix()), r.stdout
        assert "compiling kernels" not in r.stderr, "the shipped kernels were not used"
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="module")
def exe_arm64() -> Path:
    """The aarch64 executable, built from this tree in the arm64 root (as the x86_64 one is): minutes once the
    root is there (kernels that did not change come from the root's Numba cache); the root itself, made by
    old_glibc.py on the first run, about an hour under qemu."""
    out = old_glibc.root_for("arm64").parent / "bullseye-arm64-dist"
    r = subprocess.run(["nice", "-n", "19", sys.executable, str(REPO / "packaging" / "old_glibc.py"),
                        "--arch", "arm64", "--out", str(out)],
                       capture_output=True, text=True, timeout=12 * 3600, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr[-4000:]
    return Path(r.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(old_glibc.can_build("arm64") is not None,
                    reason=f"cannot run the arm64 root: {old_glibc.can_build('arm64')}")
@pytest.mark.parametrize("cpu, level", [("cortex-a72", "generic"), ("cortex-a76", "dotprod")])
def test_greedy_completion_on_glibc_2_31_aarch64(exe_arm64, cpu, level):
    """A Pi 4 runs the generic kernels (no sdot: a Pi 5's would die of SIGILL), a Pi 5 the dotprod
    ones, both shipped (nothing compiles), both the reference's greedy text, on glibc 2.31."""
    root = old_glibc.root_for("arm64")
    old_glibc.enable_binfmt("arm64")
    glibc = in_root("/usr/bin/ldd", "--version", root=root)
    assert re.search(r"GLIBC 2\.31\b", glibc.stdout), glibc.stdout
    work = root / "tmp" / "llamafile-test"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    shutil.copy2(exe_arm64, work / exe_arm64.name)
    try:
        with old_glibc.mounted(root):
            r = in_root(f"/tmp/llamafile-test/{exe_arm64.name}", "-p", PROMPT, "-n", "16", "--temp", "0",
                        "--verbose", root=root, timeout=3600, QEMU_CPU=cpu)  # --verbose: the banner names the cpu level
        print(f"{cpu}: {r.stdout!r}")
        assert r.returncode == 0, r.stderr[-3000:]
        assert r.stdout.startswith(expected_prefix()), r.stdout
        assert f"cpu {level}" in r.stderr, r.stderr[-3000:]
        assert "compiling kernels" not in r.stderr, "the shipped kernels were not used"
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.mark.skipif(old_glibc.can_build("arm64") is not None,
                    reason=f"cannot run the arm64 root: {old_glibc.can_build('arm64')}")
def test_aarch64_needs_at_most_glibc_2_31(exe_arm64):
    """The newest GLIBC_ version any ELF file in the executable (bootloader, PyInstaller's archive,
    the runtime blob) requires."""
    pytest.importorskip("PyInstaller", reason="reading PyInstaller's archive needs PyInstaller")
    floor, worst = old_glibc.glibc_needed(exe_arm64)
    print(f"{exe_arm64.name} needs GLIBC_{floor} ({', '.join(f'{n} {v}' for n, v in worst)})")
    assert tuple(map(int, floor.split("."))) <= (2, 31), worst
