"""SentencePiece (`llama`: Llama 2, Mistral, TinyLlama, Phi-3, Gemma 1-3) through the `sentencepiece` library.

The GGUF holds the pieces, their scores and types, not the original `.model` file, so
`model_proto` writes a ModelProto from them (a BPE model with byte fallback when the vocabulary
has byte pieces) and `sentencepiece` does the merging. Written here by hand, because the
library cannot do it the way llama.cpp does:
- the special tokens are cut out of the text first (base.Tokenizer.partition), and the space
  prefix (`add_space_prefix`) goes before each fragment of text that follows a special token or
  starts the text, not once per call: so the library's normaliser is the identity and the
  spaces are escaped to ▁ here;
- llama.cpp merges into any token, control, unused and user-defined ones included: every piece is
  written NORMAL (but the unknown and byte pieces);
- a piece text that appears twice: llama.cpp uses the last id, the library refuses the file,
  so earlier copies are renamed in the proto (they can never be produced);
- detokenisation is base.Tokenizer's: llama.cpp's rules for control, user-defined and byte
  tokens and its one-space strip at the start, which the library's decoder does differently.
"""
from __future__ import annotations

import struct

import numpy as np

from ..errors import TokenizerError
from .base import BYTE, CONTROL, NORMAL, UNKNOWN, USER_DEFINED, Tokenizer

# ModelProto field numbers (sentencepiece_model.proto)
_UNIGRAM, _BPE = 1, 2


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field(num: int, value) -> bytes:
    if isinstance(value, bool) or isinstance(value, int):
        return _varint(num << 3) + _varint(int(value))
    if isinstance(value, float):
        return _varint(num << 3 | 5) + struct.pack("<f", value)
    if isinstance(value, str):
        value = value.encode("utf-8")
    return _varint(num << 3 | 2) + _varint(len(value)) + bytes(value)


def model_proto(tokens, scores, types, *, model_type: int, unk_id: int | None, byte_fallback: bool,
                charsmap: bytes = b"", add_dummy_prefix=False, remove_extra_whitespaces=False,
                escape_whitespaces=False, all_normal=False) -> bytes:
    """A serialised sentencepiece ModelProto for these pieces (no protobuf package needed).

    all_normal: every piece but the unknown and the byte pieces is written NORMAL, because llama.cpp's
    SentencePiece merges into any token whatever its type, where the library would skip control and
    unused pieces and match user-defined ones greedily (e.g. Phi-3's "</s>" in plain text)."""
    # the hot loop for 262k pieces: each is ModelProto.pieces (field 1) holding piece (1), score (2), type (3)
    last = {t: i for i, t in enumerate(tokens)}  # a repeated text keeps its last id, as llama.cpp
    allowed = {NORMAL, CONTROL, USER_DEFINED, 5} | ({BYTE} if byte_fallback else set())
    kinds = [int(k) if k in allowed else CONTROL for k in (types.tolist() if hasattr(types, "tolist") else types)]
    if all_normal:
        kinds = [k if k == BYTE else NORMAL for k in kinds]
    if unk_id is not None:
        kinds[unk_id] = UNKNOWN  # the library needs exactly one unknown piece (Gemma types its <unk> control)
    f32 = np.asarray(scores, dtype="<f4").tobytes()
    small = [_varint(n) for n in range(1 << 14)]
    kind_tail = [b"\x18" + _varint(k) for k in range(8)]
    pieces = []
    for i, text in enumerate(tokens):
        if last[text] != i:
            text = f"\x00duplicate {i}"
        raw = text.encode("utf-8")
        n = len(raw)
        body = b"".join((b"\x0a", small[n] if n < 16384 else _varint(n), raw, b"\x15", f32[4 * i:4 * i + 4],
                         kind_tail[kinds[i]]))
        m = len(body)
        pieces.append(b"\x0a" + (small[m] if m < 16384 else _varint(m)) + body)
    if unk_id is None:  # no unknown token: one more piece, past the vocabulary (encode drops its id)
        unk_id = len(tokens)
        pieces.append(_field(1, _field(1, "\x00unknown") + _field(2, 0.0) + _field(3, UNKNOWN)))
    trainer = (_field(3, model_type) + _field(35, byte_fallback) + _field(40, -1 if unk_id is None else unk_id)
               + _field(41, -1) + _field(42, -1) + _field(43, -1))
    normalizer = (_field(1, "identity" if not charsmap else "nmt_nfkc") + (_field(2, charsmap) if charsmap else b"")
                  + _field(3, add_dummy_prefix) + _field(4, remove_extra_whitespaces) + _field(5, escape_whitespaces))
    return b"".join(pieces) + _field(2, trainer) + _field(3, normalizer)


def processor(proto: bytes, path=None):
    try:
        import sentencepiece
    except ImportError:
        raise TokenizerError(f"{path}: SentencePiece vocabularies need the 'sentencepiece' package "
                             "(pip install sentencepiece)") from None
    sp = sentencepiece.SentencePieceProcessor()
    try:
        sp.LoadFromSerializedProto(proto)
    except (RuntimeError, OSError) as e:
        raise TokenizerError(f"{path}: sentencepiece cannot read this vocabulary: {e}") from None
    return sp


class SPMTokenizer(Tokenizer):
    model = "llama"
    default_ids = {"bos": 1, "eos": 2, "unk": 0}
    add_bos_default = True
    add_space_prefix_default = True

    def _setup(self, meta: dict) -> None:
        has_bytes = BYTE in self.token_types
        self.sp = processor(model_proto(self.tokens, self.scores, self.token_types, model_type=_BPE,
                                        unk_id=self.unk_id, byte_fallback=has_bytes, all_normal=True), self.path)

    def _encode_fragments(self, fragments: list, ids: list[int]) -> None:
        prev_special = True  # llama.cpp: a space before the first text and after every special token
        for f in fragments:
            if isinstance(f, int):
                ids.append(f)
                prev_special = True
            else:
                if self.add_space_prefix and prev_special:
                    f = " " + f
                ids.extend(self.encode_text(f))
                prev_special = False

    def encode_text(self, text: str) -> list[int]:
        ids = self.sp.encode(text.replace(" ", "▁"))
        n = len(self.tokens)
        return ids if all(i < n for i in ids) else [i for i in ids if i < n]
