"""Shared test fixtures: llama.cpp's reference data and the real model files (fetched into the cache)."""
from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path

import pytest

import kernels  # noqa: F401  (fixes the CPU level before anything imports numba)

REPO = Path(__file__).resolve().parents[1]
# llama.cpp's output for the real models (tests/reference/README.md: where each file comes from); a
# copy in the repository, so that a fresh clone tests. LLAMAFILE_REFERENCE points elsewhere.
REFERENCE = Path(os.environ.get("LLAMAFILE_REFERENCE", REPO / "tests" / "reference"))
# llama.cpp's tiny random-weight architecture and format models: their descriptions, digests and llama.cpp's
# logits (tests/reference/archs/README.md); LLAMAFILE_ARCHS points elsewhere.
ARCHS = Path(os.environ.get("LLAMAFILE_ARCHS", REFERENCE / "archs"))


@lru_cache(maxsize=None)
def archs_model(name: str) -> Path:
    """The cached file of one archs test model ("llama-Q4_K_M"): generated from its description on first use
    (tests/archs_models.py, about 0.05 s), sha256-checked against ARCHS/SHA256SUMS."""
    import archs_models
    from weights.fetch import cache_dir
    return archs_models.build(name, cache_dir() / "archs", ARCHS)


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
