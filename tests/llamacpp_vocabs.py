"""llama.cpp's tokenizer test vocabularies (`models/ggml-vocab-*.gguf` with `.inp`/`.out`), as the
llama-cpp-python 0.3.36 sdist on PyPI ships them in vendor/llama.cpp/models/.

Fetched into the cache ($LLAMAFILE_CACHE or ~/.cache/llamafile) on first use, checked against the
sha256 PyPI lists for the file, and only those files extracted; a stamp marks a finished copy.
`.inp` holds texts separated by "\\n__ggml_vocab_test__\\n", `.out` one line of ids per text,
tokenised by llama.cpp with add_special = false, parse_special = false (its test-tokenizer-0).
"""
from __future__ import annotations

import hashlib
import os
import tarfile
import tempfile
import urllib.request
from pathlib import Path

from weights.fetch import FetchError, _locked, cache_dir

SDIST = "llama_cpp_python-0.3.36.tar.gz"
URL = ("https://files.pythonhosted.org/packages/ec/e9/e7de2b0463ea3ffbf0ede6cb21b58c1258a8f6521aae45ca773a59fe7cf3/"
       + SDIST)
SIZE = 76589250
SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
MEMBER_DIR = "llama_cpp_python-0.3.36/vendor/llama.cpp/models/"
SEPARATOR = "\n__ggml_vocab_test__\n"


def vocab_dir() -> Path:
    """The directory holding the ggml-vocab-* files, fetched and extracted if needed."""
    dst = cache_dir() / "llamacpp-vocabs-0.3.36"
    stamp = dst / ".complete"
    if stamp.exists():
        return dst
    with _locked(cache_dir() / "llamacpp-vocabs-0.3.36.lock", progress=False):
        if stamp.exists():
            return dst
        dst.mkdir(exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache_dir(), prefix=".sdist-") as tmp:
            sdist = Path(tmp) / SDIST
            h = hashlib.sha256()
            try:
                with urllib.request.urlopen(URL, timeout=120) as r, open(sdist, "wb") as out:
                    while chunk := r.read(1 << 20):
                        out.write(chunk)
                        h.update(chunk)
            except OSError as e:
                raise FetchError(f"cannot download {URL}: {e}") from None
            if sdist.stat().st_size != SIZE or h.hexdigest() != SHA256:
                raise FetchError(f"{SDIST}: expected {SIZE} bytes with sha256 {SHA256}, "
                                 f"got {sdist.stat().st_size} bytes with {h.hexdigest()}")
            with tarfile.open(sdist) as tar:
                for m in tar.getmembers():
                    name = m.name[len(MEMBER_DIR):] if m.name.startswith(MEMBER_DIR) else ""
                    if m.isfile() and name.startswith("ggml-vocab-") and "/" not in name:
                        with tar.extractfile(m) as src, open(dst / name, "wb") as out:
                            out.write(src.read())
        stamp.write_text(SHA256 + "\n")
    return dst


def vocab_names() -> list[str]:
    """Every vocabulary in the sdist: 'llama-bpe', 'phi-3', ... (fetches on first use)."""
    return sorted(p.name[len("ggml-vocab-"):-len(".gguf")] for p in vocab_dir().glob("ggml-vocab-*.gguf"))


def vocab_path(name: str) -> Path:
    return vocab_dir() / f"ggml-vocab-{name}.gguf"


def cases(name: str) -> list[tuple[str, list[int]]] | None:
    """(text, llama.cpp's ids) for each test text of a vocabulary; None when it has no .inp/.out."""
    path = vocab_path(name)
    inp, out = Path(f"{path}.inp"), Path(f"{path}.out")
    if not inp.exists():
        return None
    texts = inp.read_text(encoding="utf-8").split(SEPARATOR)
    lines = out.read_text(encoding="utf-8").split("\n")
    if texts and texts[-1] == "":
        texts.pop()
    return [(t, [int(x) for x in lines[i].split()]) for i, t in enumerate(texts)]


# names of the sdist's vocabularies, so that tests can be parametrised without fetching at import time
NAMES = ["aquila", "baichuan", "bert-bge", "command-r", "deepseek-coder", "deepseek-llm", "falcon", "gemma-4",
         "gpt-2", "gpt-neox", "llama-bpe", "llama-spm", "mpt", "nomic-bert-moe", "phi-3", "qwen2", "qwen35",
         "refact", "starcoder"]
WITHOUT_CASES = ["aquila", "baichuan", "gpt-neox", "nomic-bert-moe"]

if __name__ == "__main__":
    print(vocab_dir())
    for n in vocab_names():
        c = cases(n)
        print(n, "no cases" if c is None else f"{len(c)} cases")
