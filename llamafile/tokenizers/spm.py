"""SentencePiece (`llama`: Llama 2, Mistral, TinyLlama, Phi-3, Gemma 1-3) through the `sentencepiece` library.

The GGUF holds the pieces, their scores and types, not the original `.model` file, so
`model_proto` writes a ModelProto from them (a BPE model with byte fallback when the vocabulary
has byte pieces) and `sentencepiece` does the merging. Written here by hand, because the
library cannot do it the way llama.cpp does:
- the special tokens are cut out of the text first (base.Tokenizer.partition), and the space
  prefix (`add_space_prefix`) goes before each fragment of text that follows a special token or
  starts the text, not once per call: so the library's normaliser is the identity and the
  spaces are escaped to ▁ here;
- a piece text that appears twice: llama.cpp uses the last id, the library refuses the file,
  so earlier copies are renamed in the proto (they can never be produced);
- detokenisation is base.Tokenizer's: llama.cpp's rules for control, user-defined and byte
  tokens and its one-space strip at the start, which the library's decoder does differently.
"""
from __future__ import annotations

import struct

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
                escape_whitespaces=False) -> bytes:
    """A serialised sentencepiece ModelProto for these pieces (no protobuf package needed)."""
    seen: set[str] = set()
    pieces = []
    for i in range(len(tokens) - 1, -1, -1):  # a repeated text keeps its last id, as llama.cpp
        text, kind = tokens[i], types[i]
        if text in seen:
            text, kind = f"\x00duplicate {i}", CONTROL
        seen.add(text)
        if kind not in (NORMAL, UNKNOWN, CONTROL, USER_DEFINED, BYTE, 5):
            kind = CONTROL  # undefined types: never produced
        if kind == UNKNOWN and i != unk_id:
            kind = CONTROL  # the library allows one unknown piece
        if kind == BYTE and not byte_fallback:
            kind = CONTROL
        pieces.append(_field(1, _field(1, text) + _field(2, float(scores[i])) + _field(3, kind)))
    pieces.reverse()
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
        unk = self.unk_id
        if unk is None or self.token_types[unk] != UNKNOWN:
            unk = next((i for i, t in enumerate(self.token_types) if t == UNKNOWN), None)
        if unk is None:  # the library needs one; a piece no text can produce
            raise TokenizerError(f"{self.path}: SentencePiece vocabulary without an unknown token")
        has_bytes = any(t == BYTE for t in self.token_types)
        self.sp = processor(model_proto(self.tokens, self.scores, self.token_types, model_type=_BPE,
                                        unk_id=unk, byte_fallback=has_bytes), self.path)

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
        return self.sp.encode(text.replace(" ", "▁"))
