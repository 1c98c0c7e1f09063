"""GGUF files, memory-mapped and validated before use.

A GGUF file is a header (magic, version, counts), key/value metadata, tensor descriptions
(name, dims, type, offset) and, aligned, the tensor data. `GGUFFile` maps a file — or a region
of one, such as a GGUF appended to an executable — checks every length, type and offset
against the bytes actually there, and exposes each tensor as a read-only view of its
quantised rows. Anything wrong raises `GGUFError` naming the file and the problem.

    f = GGUFFile("model.gguf")                       # or GGUFFile(exe, offset=..., size=...)
    f.require("general.architecture")                # 'llama'
    f.tensor("blk.0.attn_q.weight").data             # uint8 (rows, row_bytes), mmapped
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

MAGIC = b"GGUF"
VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4

# GGUF value type id -> (name, struct format) for the fixed-size scalars
SCALARS = {
    0: ("uint8", "<B"), 1: ("int8", "<b"), 2: ("uint16", "<H"), 3: ("int16", "<h"),
    4: ("uint32", "<I"), 5: ("int32", "<i"), 6: ("float32", "<f"), 7: ("bool", "<?"),
    10: ("uint64", "<Q"), 11: ("int64", "<q"), 12: ("float64", "<d"),
}
STRING, ARRAY = 8, 9
NUMPY_DTYPES = {code: np.dtype(fmt) for code, (_, fmt) in SCALARS.items()}


class GGUFError(ValueError):
    """A file that is not a usable GGUF: the message names the file and what is wrong."""


@dataclass(frozen=True, eq=False)
class Tensor:
    name: str
    type: GGMLQuantizationType
    shape: tuple[int, ...]  # numpy order: (rows..., n_per_row)
    offset: int             # from the start of the data section
    nbytes: int
    data: np.ndarray        # uint8 (rows, row_bytes) for 2-D and up; (row_bytes,) for 1-D; a view of the map

    @property
    def n_per_row(self) -> int:
        return self.shape[-1]


class _Reader:
    """A bounds-checked cursor over the header bytes."""

    def __init__(self, buf: np.ndarray, fail):
        self.buf, self.pos, self.fail = buf, 0, fail
        self.view = memoryview(buf)

    def remaining(self) -> int:
        return len(self.buf) - self.pos

    def take(self, n: int, what: str) -> memoryview:
        if n < 0 or n > self.remaining():
            self.fail(f"truncated: {what} needs {n} bytes at offset {self.pos}, {max(self.remaining(), 0)} left")
        chunk = self.view[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def scalar(self, fmt: str, what: str):
        size = struct.calcsize(fmt)
        if size > self.remaining():
            self.fail(f"truncated: {what} at offset {self.pos}")
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return value

    def u32(self, what: str) -> int:
        return self.scalar("<I", what)

    def u64(self, what: str) -> int:
        return self.scalar("<Q", what)

    def string(self, what: str) -> str:
        n = self.u64(f"length of {what}")
        raw = self.take(n, what)
        try:
            return str(raw, "utf-8")
        except UnicodeDecodeError:
            self.fail(f"{what} is not valid UTF-8")

    def strings(self, count: int, what: str) -> list[str]:
        """`count` length-prefixed strings; the hot loop for vocabularies of 150k tokens."""
        buf, pos, end, unpack = self.buf, self.pos, len(self.buf), struct.Struct("<Q").unpack_from
        view, out = self.view, []
        try:
            for i in range(count):
                if pos + 8 > end:
                    self.fail(f"truncated: {what}[{i}] at offset {pos}")
                (n,) = unpack(buf, pos)
                pos += 8
                if n > end - pos:
                    self.fail(f"truncated: {what}[{i}] needs {n} bytes at offset {pos}, {end - pos} left")
                out.append(str(view[pos : pos + n], "utf-8"))
                pos += n
        except UnicodeDecodeError:
            self.fail(f"{what}[{len(out)}] is not valid UTF-8")
        self.pos = pos
        return out

    def value(self, vtype: int, what: str):
        if vtype in SCALARS:
            return self.scalar(SCALARS[vtype][1], what)
        if vtype == STRING:
            return self.string(what)
        if vtype == ARRAY:
            return self.array(what)
        self.fail(f"{what} has unknown value type {vtype}")

    def array(self, what: str):
        etype = self.u32(f"element type of {what}")
        count = self.u64(f"length of {what}")
        if etype in SCALARS:
            dtype = NUMPY_DTYPES[etype]
            raw = self.take(count * dtype.itemsize, f"{what} ({count} x {SCALARS[etype][0]})")
            return np.frombuffer(raw, dtype=dtype).copy()  # metadata is small; keep it off the map
        if etype == STRING:
            if count * 8 > self.remaining():
                self.fail(f"{what} claims {count} strings, more than the file holds")
            return self.strings(count, what)
        if etype == ARRAY:
            if count * 12 > self.remaining():
                self.fail(f"{what} claims {count} arrays, more than the file holds")
            return [self.array(f"{what}[{i}]") for i in range(count)]
        self.fail(f"{what} has unknown element type {etype}")


class GGUFFile:
    """A GGUF file (or a region of a file) mapped read-only and checked."""

    def __init__(self, path: str | os.PathLike, offset: int = 0, size: int | None = None):
        self.path = Path(path)
        if offset == 0 and size is None:  # an executable that carries a GGUF (packaging/build.py): its region
            from .embedded import gguf_region
            offset, size = gguf_region(self.path) or (0, None)
        self.offset = offset
        self.map = self._map(offset, size)
        r = _Reader(self.map, self._fail)
        self.version = self._read_header(r)
        n_tensors, n_kv = r.u64("tensor count"), r.u64("metadata count")
        if n_kv * 13 > r.remaining():  # key length, value type and at least one byte each
            self._fail(f"absurd metadata count {n_kv} for a file of {len(self.map)} bytes")
        if n_tensors * 32 > r.remaining():  # name length, n_dims, one dim, type, offset
            self._fail(f"absurd tensor count {n_tensors} for a file of {len(self.map)} bytes")
        self.metadata = self._read_metadata(r, n_kv)
        self.alignment = self._alignment()
        infos = [self._read_tensor_info(r, i) for i in range(n_tensors)]
        self.data_offset = -(-r.pos // self.alignment) * self.alignment
        self.tensors = self._place_tensors(infos)

    # --- lookups ------------------------------------------------------------------
    def get(self, key: str, default=None):
        return self.metadata.get(key, default)

    def require(self, key: str):
        if key not in self.metadata:
            self._fail(f"missing metadata key '{key}'")
        return self.metadata[key]

    def tensor(self, name: str) -> Tensor:
        if name not in self.tensors:
            self._fail(f"missing tensor '{name}'")
        return self.tensors[name]

    def __repr__(self) -> str:
        return f"GGUFFile({str(self.path)!r}, v{self.version}, {len(self.metadata)} keys, {len(self.tensors)} tensors)"

    # --- parsing ------------------------------------------------------------------
    def _fail(self, problem: str):
        raise GGUFError(f"{self.path}: {problem}")

    def _map(self, offset: int, size: int | None) -> np.ndarray:
        try:
            file_size = self.path.stat().st_size
        except OSError as e:
            self._fail(f"cannot open ({e.strerror})")
        if self.path.is_dir():
            self._fail("is a directory, not a GGUF file")
        if size is None:
            size = file_size - offset
        if offset < 0 or size < 0 or offset + size > file_size:
            self._fail(f"region at offset {offset} of {size} bytes lies outside the file ({file_size} bytes)")
        if size < 24:
            self._fail(f"too small to be a GGUF file ({size} bytes)")
        try:
            return np.memmap(self.path, dtype=np.uint8, mode="r", offset=offset, shape=(size,))
        except (OSError, ValueError) as e:
            self._fail(f"cannot map ({e})")

    def _read_header(self, r: _Reader) -> int:
        magic = bytes(r.take(4, "magic"))
        if magic != MAGIC:
            self._fail(f"not a GGUF file (magic {magic!r}, expected {MAGIC!r})")
        version = r.u32("version")
        if version not in VERSIONS:
            if version & 0xFFFF == 0 and (version >> 24) in VERSIONS:
                self._fail("big-endian GGUF files are not supported")
            self._fail(f"unsupported GGUF version {version} (supported: {', '.join(map(str, VERSIONS))})")
        return version

    def _read_metadata(self, r: _Reader, n_kv: int) -> dict:
        metadata = {}
        for i in range(n_kv):
            key = r.string(f"key of metadata entry {i}")
            vtype = r.u32(f"value type of '{key}'")
            if key in metadata:
                self._fail(f"duplicate metadata key '{key}'")
            metadata[key] = r.value(vtype, f"value of '{key}'")
        return metadata

    def _alignment(self) -> int:
        alignment = self.metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if not isinstance(alignment, int) or isinstance(alignment, bool) or alignment <= 0 \
                or alignment & (alignment - 1):
            self._fail(f"general.alignment {alignment!r} is not a power of two")
        return alignment

    def _read_tensor_info(self, r: _Reader, i: int) -> tuple:
        name = r.string(f"name of tensor {i}")
        n_dims = r.u32(f"dimension count of '{name}'")
        if not 1 <= n_dims <= MAX_DIMS:
            self._fail(f"tensor '{name}' has {n_dims} dimensions (expected 1..{MAX_DIMS})")
        dims = [r.u64(f"dimension {d} of '{name}'") for d in range(n_dims)]
        type_id = r.u32(f"type of '{name}'")
        offset = r.u64(f"data offset of '{name}'")
        return name, dims, type_id, offset

    def _place_tensors(self, infos: list[tuple]) -> dict[str, Tensor]:
        data_size = len(self.map) - self.data_offset
        tensors = {}
        for name, dims, type_id, offset in infos:
            if name in tensors:
                self._fail(f"duplicate tensor '{name}'")
            qtype = self._tensor_type(name, type_id)
            if any(d <= 0 for d in dims) or any(d >= 2**40 for d in dims):
                self._fail(f"tensor '{name}' has bad dimensions {dims}")
            block, type_size = GGML_QUANT_SIZES[qtype]
            if dims[0] % block:
                self._fail(f"tensor '{name}': row of {dims[0]} is not a multiple of the {qtype.name} block ({block})")
            row_bytes = dims[0] // block * type_size
            rows = int(np.prod(dims[1:], dtype=object))
            nbytes = rows * row_bytes
            if offset % self.alignment:
                self._fail(f"tensor '{name}': data offset {offset} is not aligned to {self.alignment}")
            if offset + nbytes > data_size:
                self._fail(f"tensor '{name}': data ({nbytes} bytes at {offset}) lies past the end of the file "
                           f"(data section holds {max(data_size, 0)} bytes)")
            start = self.data_offset + offset
            data = self.map[start : start + nbytes]
            data = data.reshape(rows, row_bytes) if len(dims) > 1 else data
            tensors[name] = Tensor(name, qtype, tuple(reversed(dims)), offset, nbytes, data)
        return tensors

    def _tensor_type(self, name: str, type_id: int) -> GGMLQuantizationType:
        try:
            qtype = GGMLQuantizationType(type_id)
        except ValueError:
            self._fail(f"tensor '{name}' has unknown type id {type_id}")
        if qtype not in GGML_QUANT_SIZES:
            self._fail(f"tensor '{name}' has unsupported type {qtype.name}")
        return qtype


def open_gguf(path: str | os.PathLike, offset: int = 0, size: int | None = None) -> GGUFFile:
    return GGUFFile(path, offset, size)
