"""The archs test models (tests/reference/archs/README.md), made from their committed descriptions.

tests/reference/archs/models.json describes each of the 40 tiny models: every GGUF key/value (the 128-token
dummy `test` vocabulary included) and every tensor's name, shape (ggml order: row length first) and type.
The values are not stored: each tensor is drawn from a RandomState seeded by the model whose values it
holds and its name, N(0, 0.1) like llama.cpp's test-llama-archs models (norms and rope factors too), as
float32; an F16 tensor is that rounded to half, a quantised one its quantisation (tests/archs_quants.py).
The F16 and quantised llama/qwen3 models hold the values of their F32 model (`values` in the description),
so their difference from it is rounding alone. The file is written with gguf.GGUFWriter and must have the
sha256 of tests/reference/archs/SHA256SUMS, the file llama.cpp's logits there were computed on.

build(name, folder) writes one model, checked; python tests/archs_models.py FOLDER [NAME...] writes them all
(or those named) unchecked and prints their digests.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import GGUFValueType as V
from gguf import GGUFWriter

if __name__ == "__main__":  # run as a script: the repository's packages, and archs_quants beside this file
    sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from archs_quants import quantize  # noqa: E402

# the folder with models.json (the descriptions) and SHA256SUMS (what they must give); every function
# takes another as `archs`
ARCHS = Path(__file__).resolve().parent / "reference" / "archs"
STD = 0.1  # every tensor ~ N(0, STD)


@lru_cache(maxsize=None)
def descriptions(archs: Path = ARCHS) -> dict:
    return json.loads((archs / "models.json").read_text())


def names(archs: Path = ARCHS) -> list[str]:
    return list(descriptions(archs)["models"])


def digests(archs: Path = ARCHS) -> dict[str, str]:
    """file name -> sha256, from SHA256SUMS."""
    lines = (archs / "SHA256SUMS").read_text().splitlines()
    return dict(line.split()[::-1] for line in lines if line.strip())


def key_values(name: str, archs: Path = ARCHS) -> dict[str, list]:
    """Every key of a model -> [type, value] or ["ARRAY", item type, [values]]: the description's common
    keys (its own value where it has one) and its own, sorted (the order in which they are written, whatever
    keys the other models share)."""
    d = descriptions(archs)
    kv = {**d["common"], **d["models"][name]["kv"]}
    arch = kv["general.architecture"][1]
    return dict(sorted((k.replace("{arch}.", f"{arch}.", 1), v) for k, v in kv.items()))


def values(source: str, tensor: str, n: int) -> np.ndarray:
    """n float32 values ~ N(0, STD), from a RandomState seeded by the model and the tensor name (legacy
    RandomState streams are the same on every numpy version)."""
    seed = int.from_bytes(hashlib.sha256(f"{source}/{tensor}".encode()).digest()[:4], "little")
    return (np.random.RandomState(seed).standard_normal(n) * STD).astype(np.float32)


def tensor_data(source: str, tensor: str, ne: list[int], qtype: T) -> np.ndarray:
    """A tensor's bytes (or float array) in numpy order: rows of ne[0]."""
    w = values(source, tensor, int(np.prod(ne))).reshape(tuple(reversed(ne)))
    if qtype == T.F32:
        return w
    if qtype == T.F16:
        return w.astype(np.float16)
    return quantize(w.reshape(-1, ne[0]), qtype).reshape(*reversed(ne[1:]), -1)


def write(name: str, path: Path, archs: Path = ARCHS) -> None:
    """Write model `name` to `path` (no check)."""
    model = descriptions(archs)["models"][name]
    kv = key_values(name, archs)
    writer = GGUFWriter(path, kv["general.architecture"][1])
    for key, (vtype, *rest) in kv.items():
        if key == "general.architecture":  # GGUFWriter writes it first
            continue
        if vtype == "ARRAY":
            writer.add_key_value(key, rest[1], V.ARRAY, sub_type=V[rest[0]])
        else:
            writer.add_key_value(key, rest[0], V[vtype])
    for tensor, ne, type_name in model["tensors"]:
        qtype = T[type_name]
        data = tensor_data(model["values"], tensor, ne, qtype)
        writer.add_tensor(tensor, data, raw_dtype=None if qtype in (T.F32, T.F16) else qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


class DigestMismatch(ValueError):
    """A generated model is not the file the committed logits were computed on."""


def build(name: str, folder: Path, archs: Path = ARCHS, check: bool = True) -> Path:
    """folder/NAME.gguf made from its description: written to a temporary name, sha256-checked against
    SHA256SUMS, then renamed into place; an existing file with that digest is kept. Unchecked (check=False),
    the file is always written."""
    folder.mkdir(parents=True, exist_ok=True)
    file = f"{name}.gguf"
    dst = folder / file
    want = digests(archs).get(file) if check else None
    if check and want is None:
        raise KeyError(f"{file} is not in {archs / 'SHA256SUMS'}")
    if check and dst.exists() and sha256(dst) == want:
        return dst
    tmp = folder / f".{file}.{os.getpid()}.partial"
    try:
        write(name, tmp, archs)
        got = sha256(tmp)
        if check and got != want:
            raise DigestMismatch(
                f"generated {file} has sha256 {got}, not {want} ({archs / 'SHA256SUMS'}): the generator "
                "(tests/archs_models.py, archs_quants.py), numpy or gguf's writer give other bytes than when the "
                "references were made")
        tmp.replace(dst)
    finally:
        tmp.unlink(missing_ok=True)
    return dst


if __name__ == "__main__":
    import time
    out = Path(sys.argv[1])
    for name in sys.argv[2:] or names():
        t0 = time.perf_counter()
        path = build(name, out, check=False)
        print(f"{sha256(path)}  {path.name}  ({time.perf_counter() - t0:.2f} s)")
