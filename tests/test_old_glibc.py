"""The executable for older Linux (packaging/old_glibc.py): built in a Debian 11 root, it runs there.

The executable built on this machine needs glibc 2.35 (its libpython's); the one built in a bullseye
root runs on glibc 2.31. This test builds it with packaging/old_glibc.py (the root, Python 3.11
compiled in it and the wheels are kept in ~/.cache/llamafile/bullseye-root: ~25 minutes the first
time on a busy 2-core machine, then the executable only, a few minutes) and runs the reference's
greedy completion in that root with chroot. Skipped where debootstrap cannot run (not root, not
Linux x86_64, no debootstrap), or with LLAMAFILE_SKIP_PACKAGING=1 as the other packaging tests.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, greedy_prefix, model_path

sys.path.insert(0, str(REPO / "packaging"))
import old_glibc  # noqa: E402

PROMPT = "The capital of France is"
pytestmark = [
    pytest.mark.skipif(old_glibc.can_build() is not None, reason=f"debootstrap cannot run: {old_glibc.can_build()}"),
    pytest.mark.skipif(os.environ.get("LLAMAFILE_SKIP_PACKAGING") == "1", reason="LLAMAFILE_SKIP_PACKAGING=1"),
]


@pytest.fixture(scope="module")
def exe() -> Path:
    out = old_glibc.ROOT.parent / "bullseye-dist"
    r = subprocess.run([sys.executable, str(REPO / "packaging" / "old_glibc.py"), "--out", str(out)],
                       capture_output=True, text=True, timeout=3 * 3600, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr[-4000:]
    return Path(r.stdout.strip().splitlines()[-1])


def in_root(*cmd: str, timeout=600) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8",
           "LLAMAFILE_CACHE": "/tmp/llamafile-test/cache"}
    return subprocess.run(["chroot", str(old_glibc.ROOT), *cmd], capture_output=True, text=True, env=env,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def expected_prefix() -> str:
    return greedy_prefix(PROMPT)


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
