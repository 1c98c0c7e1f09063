"""Shared test fixtures: llama.cpp's reference data and the real model files (fetched into the cache)."""
from __future__ import annotations

import json
import os
import shutil
from functools import lru_cache
from pathlib import Path

import pytest

import kernels  # noqa: F401  (fixes the CPU level before anything imports numba)

REPO = Path(__file__).resolve().parents[1]
# llama.cpp's output for the real models (tests/reference/README.md: where each file comes from); a
# copy in the repository, so that a fresh clone tests. LLAMAFILE_REFERENCE points elsewhere.
REFERENCE = Path(os.environ.get("LLAMAFILE_REFERENCE", REPO / "tests" / "reference"))
# llama.cpp's logits for its tiny random-weight architecture and format models, and the models' sha256
# (tests/reference/archs/README.md); LLAMAFILE_ARCHS points elsewhere.
ARCHS = Path(os.environ.get("LLAMAFILE_ARCHS", REFERENCE / "archs"))
# The models themselves are not in the repository (no model file is): archs_model copies them into the
# cache from here, each checked against ARCHS/SHA256SUMS. CI has shared/ beside its checkout.
ARCHS_MODELS = Path(os.environ.get("LLAMAFILE_ARCHS_MODELS", REPO.parent / "shared" / "reference" / "archs" / "models"))


@lru_cache(maxsize=None)
def archs_model(name: str) -> Path:
    """The cached file of one archs test model ("llama-Q4_K_M"), copied in and sha256-checked on first use.
    Missing everywhere is an error naming where it was looked for (never a skip)."""
    from weights.fetch import _sha256, cache_dir
    file = f"{name}.gguf"
    digests = dict(line.split()[::-1] for line in (ARCHS / "SHA256SUMS").read_text().splitlines() if line.strip())
    dst = cache_dir() / "archs" / file
    if dst.exists() and _sha256(dst) == digests[file]:
        return dst
    src = ARCHS_MODELS / file
    if not src.exists():
        raise FileNotFoundError(f"llama.cpp's test model {file} is in neither {dst.parent} nor {ARCHS_MODELS} "
                                "(set LLAMAFILE_ARCHS_MODELS to the folder holding shared/reference/archs/models)")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f"{file}.{os.getpid()}.partial")
    shutil.copyfile(src, tmp)
    if _sha256(tmp) != digests[file]:
        tmp.unlink()
        raise ValueError(f"{src}: sha256 differs from {ARCHS / 'SHA256SUMS'}")
    tmp.replace(dst)
    return dst


@lru_cache(maxsize=None)
def read_jsonl(name: str) -> tuple[dict, ...]:
    path = REFERENCE / name
    if not path.exists():
        raise FileNotFoundError(f"reference file {path} is missing (set LLAMAFILE_REFERENCE)")
    with open(path, encoding="utf-8") as f:
        return tuple(json.loads(line) for line in f if line.strip())


@lru_cache(maxsize=None)
def model_path(name: str) -> Path:
    """The cached file of a catalogue model, fetched on first use (no skipping: a missing model fails)."""
    from weights.fetch import fetch
    return fetch(name, progress=False)


def greedy_prefix(prompt: str, records: str = "gen_smollm2.jsonl", model: str = "smollm2") -> str:
    """The prompt and llama.cpp's greedy continuation of it up to the first step whose margin is below 0.5
    (after a near-tie either token may come): what an executable or the CLI must print."""
    import llamafile
    record = next(r for r in read_jsonl(records) if r["prompt"] == prompt)
    cut = next((k for k, m in enumerate(record["margins"]) if m < 0.5), len(record["ids"]))
    return prompt + llamafile.load(model_path(model), backend="numpy").detokenize(record["ids"][:cut])


@lru_cache(maxsize=None)
def loaded_model(name: str, backend: str = "numba"):
    import llamafile
    return llamafile.load(model_path(name), backend=backend)


@pytest.fixture(scope="session")
def smollm2():
    """The default model through the kernels."""
    return loaded_model("smollm2")


@pytest.fixture(scope="session")
def smollm2_reference():
    """The default model through the numpy reference forward pass."""
    return loaded_model("smollm2", "numpy")


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    return model_path("smollm2")
