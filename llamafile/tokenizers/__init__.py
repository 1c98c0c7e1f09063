"""Tokenizers read from a GGUF, one module per `tokenizer.ggml.model`, token for token llama.cpp's.

    load_tokenizer(path) -> Tokenizer      # any GGUF, vocabulary-only ones (no tensors) included
    tok.tokenize(text, add_special=True, parse_special=False) -> list[int]
    tok.detokenize(ids, render_special=False) -> str
    tok.decoder(render_special=False, continuation=False)   # .feed(id) -> str, .flush() -> str

| model    | module   | what                                                        |
|----------|----------|-------------------------------------------------------------|
| `gpt2`   | bpe.py   | byte-level BPE, pre-tokenizer by `tokenizer.ggml.pre`       |
| `gemma4` | bpe.py   | BPE on raw UTF-8 with ▁ for spaces                          |
| `llama`  | spm.py   | SentencePiece BPE, through the sentencepiece library        |
| `t5`     | ugm.py   | SentencePiece Unigram, through the sentencepiece library    |
| `bert`   | wpm.py   | WordPiece                                                   |
"""
from __future__ import annotations

import os

from ..errors import TokenizerError
from .base import Tokenizer, StreamDecoder, clean_spaces

__all__ = ["TOKENIZERS", "Tokenizer", "StreamDecoder", "TokenizerError", "UnsupportedTokenizer",
           "from_metadata", "load_tokenizer", "clean_spaces"]


def _bpe():
    from .bpe import BPETokenizer
    return BPETokenizer


def _gemma4():
    from .bpe import Gemma4Tokenizer
    return Gemma4Tokenizer


def _spm():
    from .spm import SPMTokenizer
    return SPMTokenizer


def _ugm():
    from .ugm import UGMTokenizer
    return UGMTokenizer


def _wpm():
    from .wpm import WPMTokenizer
    return WPMTokenizer


# tokenizer.ggml.model -> the class (imported on first use)
TOKENIZERS = {"gpt2": _bpe, "gemma4": _gemma4, "llama": _spm, "t5": _ugm, "bert": _wpm}


def from_metadata(meta: dict, path=None) -> Tokenizer:
    """The tokenizer a GGUF's metadata describes; TokenizerError names a type we cannot read."""
    kind = meta.get("tokenizer.ggml.model")
    if kind is None:
        raise TokenizerError(f"{path}: missing key 'tokenizer.ggml.model'")
    make = TOKENIZERS.get(str(kind))
    if make is None:
        raise TokenizerError(f"{path}: tokenizer '{kind}' is not supported "
                             f"(supported: {', '.join(sorted(TOKENIZERS))})")
    return make()(meta, path)


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """The tokenizer of the GGUF at path (tensors, if any, are not needed)."""
    from weights.gguf import GGUFFile
    gguf = GGUFFile(path)
    return from_metadata(gguf.metadata, gguf.path)


class UnsupportedTokenizer:
    """Stands in for a vocabulary the project cannot read (e.g. llama.cpp's dummy `test` one) inside a
    model: the model still runs on token ids; text to ids or back raises the TokenizerError."""

    def __init__(self, error: TokenizerError, meta: dict):
        self.error = error
        self.kind = str(meta.get("tokenizer.ggml.model"))
        tokens = meta.get("tokenizer.ggml.tokens") or []
        self.tokens = list(tokens)
        eos, bos = meta.get("tokenizer.ggml.eos_token_id"), meta.get("tokenizer.ggml.bos_token_id")
        self.eos_id = int(eos) if eos is not None else None
        self.bos_id = int(bos) if bos is not None else None
        self.eog_ids = frozenset([self.eos_id] if self.eos_id is not None else [])
        self.token_to_id = {t: i for i, t in enumerate(self.tokens)}

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    def token_text(self, token: int) -> str:
        return self.tokens[token]

    def _fail(self, *args, **kwargs):
        raise self.error

    tokenize = detokenize = decoder = token_bytes = _fail


def for_model(gguf) -> Tokenizer | UnsupportedTokenizer:
    """A model's tokenizer; an unsupported type still lets the model load for use with ids."""
    try:
        return from_metadata(gguf.metadata, gguf.path)
    except TokenizerError as e:
        if str(gguf.get("tokenizer.ggml.model")) in TOKENIZERS:
            raise  # a supported type with a broken vocabulary: say so at load
        return UnsupportedTokenizer(e, gguf.metadata)
