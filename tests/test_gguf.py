"""GGUF mapping: what `gguf` writes we read, at any offset; every broken file gives GGUFError."""
import random
import struct

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T, GGUFWriter

import llamafile
from weights.gguf import GGUFError, GGUFFile

U32, I32, F32, BOOL, STRING, ARRAY = 4, 5, 6, 7, 8, 9


def string(s: str | bytes) -> bytes:
    raw = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(raw)) + raw


def tiny_gguf(*, magic=b"GGUF", version=3, n_tensors=None, n_kv=None, arch="llama", alignment=32,
              key=b"general.architecture", dims=(64, 2), n_dims=None, type_id=int(T.F32), offset=0,
              extra_kv=b"", extra_kv_count=0) -> bytes:
    """A small GGUF built byte by byte, so each field can be broken on purpose."""
    kv = [string(key) + struct.pack("<I", STRING) + string(arch),
          string("general.alignment") + struct.pack("<II", U32, alignment),
          string("tokenizer.ggml.tokens") + struct.pack("<IIQ", ARRAY, STRING, 2) + string("a") + string("b")]
    tensor = (string("w") + struct.pack("<I", len(dims) if n_dims is None else n_dims)
              + b"".join(struct.pack("<Q", d) for d in dims) + struct.pack("<IQ", type_id, offset))
    head = (magic + struct.pack("<I", version)
            + struct.pack("<QQ", 1 if n_tensors is None else n_tensors, len(kv) + extra_kv_count if n_kv is None else n_kv)
            + b"".join(kv) + extra_kv + tensor)
    head += b"\0" * (-len(head) % 32)
    data = np.arange(64 * 2, dtype=np.float32).tobytes()
    return head + data


@pytest.fixture
def write(tmp_path):
    def write(blob: bytes, name="model.gguf"):
        path = tmp_path / name
        path.write_bytes(blob)
        return path
    return write


def test_reads_tiny_file(write):
    f = GGUFFile(write(tiny_gguf()))
    assert f.version == 3 and f.alignment == 32
    assert f.require("general.architecture") == "llama"
    assert f.get("tokenizer.ggml.tokens") == ["a", "b"]
    w = f.tensor("w")
    assert w.shape == (2, 64) and w.n_per_row == 64 and w.type == T.F32
    np.testing.assert_array_equal(w.data.view(np.float32), np.arange(128, dtype=np.float32).reshape(2, 64))


def test_round_trip_with_gguf_writer(tmp_path):
    path = tmp_path / "written.gguf"
    w = GGUFWriter(path, "llama")
    w.add_uint32("llama.block_count", 3)
    w.add_float32("llama.rope.freq_base", 10000.0)
    w.add_bool("tokenizer.ggml.add_bos_token", True)
    w.add_array("tokenizer.ggml.token_type", [1, 3, 6])
    w.add_array("tokenizer.ggml.tokens", ["<s>", "héllo", "🙂"])
    w.add_string("general.name", "tiny")
    x = np.linspace(-1, 1, 96 * 3, dtype=np.float32).reshape(3, 96)
    w.add_tensor("a", x)
    w.add_tensor("b", x.astype(np.float16))
    w.add_tensor("n", x[0])
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()

    f = GGUFFile(path)
    assert f.get("llama.block_count") == 3 and f.get("llama.rope.freq_base") == 10000.0
    assert f.get("tokenizer.ggml.add_bos_token") is True
    assert list(f.get("tokenizer.ggml.token_type")) == [1, 3, 6]
    assert f.get("tokenizer.ggml.tokens") == ["<s>", "héllo", "🙂"]
    np.testing.assert_array_equal(f.tensor("a").data.view(np.float32), x)
    np.testing.assert_array_equal(f.tensor("b").data.view(np.float16), x.astype(np.float16))
    np.testing.assert_array_equal(f.tensor("n").data.view(np.float32), x[0])
    assert f.tensor("a").data.base is not None  # a view of the map, not a copy


def test_embedded_at_offset(write, tmp_path):
    blob = tiny_gguf()
    prefix, suffix = b"\x7fELF" + b"\xaa" * (65536 - 4), b"TRAILER" * 10
    path = write(prefix + blob + suffix, "exe")
    f = GGUFFile(path, offset=len(prefix), size=len(blob))
    np.testing.assert_array_equal(f.tensor("w").data.view(np.float32).ravel(), np.arange(128, dtype=np.float32))
    with pytest.raises(GGUFError, match="outside the file"):
        GGUFFile(path, offset=len(prefix), size=len(blob) + len(suffix) + 1)


def test_real_model_maps_quickly(smollm2_path):
    f = GGUFFile(smollm2_path)
    assert len(f.get("tokenizer.ggml.tokens")) == 49152
    q = f.tensor("blk.0.attn_q.weight")
    assert q.type == T.Q4_1 and q.shape == (576, 576) and q.data.shape == (576, 576 // 32 * 20)  # Q4_1: f16 d, f16 m, 16 bytes of nibbles


def test_every_truncation_fails_cleanly(write):
    blob = tiny_gguf()
    for n in range(len(blob)):
        with pytest.raises(GGUFError):
            GGUFFile(write(blob[:n]))


BROKEN = [
    (dict(magic=b"GGML"), "not a GGUF file"),
    (dict(version=1), "unsupported GGUF version 1"),
    (dict(version=4), "unsupported GGUF version 4"),
    (dict(version=3 << 24), "big-endian"),
    (dict(n_tensors=2**60), "absurd tensor count"),
    (dict(n_kv=2**40), "absurd metadata count"),
    (dict(dims=(64, 0)), "bad dimensions"),
    (dict(dims=(64, 2**50)), "bad dimensions"),
    (dict(dims=(64, 2**20)), "past the end"),
    (dict(dims=(64, 2, 1, 1, 1)), "5 dimensions"),
    (dict(n_dims=0, dims=()), "0 dimensions"),
    (dict(type_id=99), "unknown type id 99"),
    (dict(type_id=int(T.Q8_0), dims=(48, 2)), "not a multiple of the Q8_0 block"),
    (dict(offset=1 << 20), "past the end"),
    (dict(offset=8), "not aligned"),
    (dict(alignment=24), "not a power of two"),
    (dict(alignment=0), "not a power of two"),
    (dict(key=b"general.\xffarch"), "not valid UTF-8"),
    (dict(extra_kv=string("x") + struct.pack("<I", 77), extra_kv_count=1), "unknown value type 77"),
    (dict(extra_kv=string("x") + struct.pack("<IIQ", ARRAY, 66, 1), extra_kv_count=1), "unknown element type 66"),
    (dict(extra_kv=string("x") + struct.pack("<IIQ", ARRAY, STRING, 2**50), extra_kv_count=1), "more than the file holds"),
    (dict(extra_kv=string("general.alignment") + struct.pack("<II", U32, 32), extra_kv_count=1), "duplicate metadata key"),
]


@pytest.mark.parametrize("broken, message", BROKEN, ids=[m for _, m in BROKEN])
def test_broken_file_names_the_problem(write, broken, message):
    path = write(tiny_gguf(**broken))
    with pytest.raises(GGUFError, match=message) as e:
        GGUFFile(path)
    assert str(path) in str(e.value)


def test_not_a_file(tmp_path):
    with pytest.raises(GGUFError, match="cannot open"):
        GGUFFile(tmp_path / "missing.gguf")
    with pytest.raises(GGUFError, match="directory"):
        GGUFFile(tmp_path)
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(GGUFError, match="too small"):
        GGUFFile(tmp_path / "empty")


def test_random_corruption_never_escapes(write):
    """Flipped bytes in the header either still parse or give GGUFError, never another exception."""
    blob = tiny_gguf()
    header_end = len(blob) - 64 * 2 * 4
    rng = random.Random(0)
    for _ in range(400):
        b = bytearray(blob)
        for _ in range(rng.randint(1, 3)):
            b[rng.randrange(header_end)] = rng.randrange(256)
        try:
            GGUFFile(write(bytes(b)))
        except GGUFError:
            pass


def test_load_rejects_unknown_architecture(write):
    with pytest.raises(GGUFError, match="unknown architecture 'mamba9'"):
        llamafile.load(write(tiny_gguf(arch="mamba9")))


def test_load_rejects_missing_hyperparameters(write):
    with pytest.raises(GGUFError, match="missing key 'llama."):
        llamafile.load(write(tiny_gguf()))


def test_load_rejects_text_file(write):
    with pytest.raises(GGUFError, match="not a GGUF file"):
        llamafile.load(write(b"hello, this is not a model\n" * 4, "notes.txt"))
