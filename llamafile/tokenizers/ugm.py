"""Unigram (`t5`: T5, mT5, nomic-bert-moe) through the `sentencepiece` library.

The GGUF carries the pieces, their scores and the normaliser's precompiled character map
(`tokenizer.ggml.precompiled_charsmap`), which is what the library needs for a Unigram model:
its Viterbi search and normaliser then do what llama.cpp's llm_tokenizer_ugm reimplements.
Special tokens are cut out first (base.Tokenizer.partition), as llama.cpp does.
"""
from __future__ import annotations

from .base import BYTE, Tokenizer
from .spm import _UNIGRAM, model_proto, processor


class UGMTokenizer(Tokenizer):
    model = "t5"
    default_ids = {"eos": 1, "unk": 2, "pad": 0}
    add_eos_default = True

    def _setup(self, meta: dict) -> None:
        charsmap = meta.get("tokenizer.ggml.precompiled_charsmap")
        charsmap = bytes(charsmap.astype("uint8").tobytes()) if charsmap is not None else b""
        self.sp = processor(model_proto(self.tokens, self.scores, self.token_types, model_type=_UNIGRAM,
                                        unk_id=self.unk_id, byte_fallback=BYTE in self.token_types,
                                        charsmap=charsmap, add_dummy_prefix=self.add_space_prefix,
                                        remove_extra_whitespaces=self.remove_extra_whitespaces,
                                        escape_whitespaces=True), self.path)

    def encode_text(self, text: str) -> list[int]:
        ids = self.sp.encode(text)
        n = len(self.tokens)
        return ids if all(i < n for i in ids) else [i for i in ids if i < n]
