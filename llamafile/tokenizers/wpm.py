"""WordPiece (`bert`: BERT, BGE, nomic-embed), as llama.cpp's llm_tokenizer_wpm.

    text --NFD, drop accents and control characters, lower case--> words (split at spaces,
    punctuation, ASCII symbols and CJK characters each their own word) --"▁" + word, longest
    vocabulary match from the left--> ids (a word with no full match is one [UNK])

The GGUF keeps WordPiece's vocabulary as llama.cpp's converter wrote it: a word-initial piece
starts with ▁, a continuation has no `##`. No library does this split the same way; it is short.
"""
from __future__ import annotations

import unicodedata

from .base import Tokenizer


def _is_chinese(cp: int) -> bool:
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
            or 0x2A700 <= cp <= 0x2B73F or 0x2B740 <= cp <= 0x2B81F or 0x2B920 <= cp <= 0x2CEAF
            or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)


_WHITESPACE = frozenset("\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009"
                        "\u200a\u2028\u2029\u202f\u205f\u3000")


class WPMTokenizer(Tokenizer):
    model = "bert"
    default_ids = {"bos": 101, "unk": 100, "sep": 102, "pad": 0, "mask": 103}
    add_bos_default = True
    add_sep_default = True
    clean_spaces_default = True

    def _setup(self, meta: dict) -> None:
        lower = meta.get("tokenizer.ggml.normalizer.lowercase")
        self.lowercase = True if lower is None else bool(lower)
        strip = meta.get("tokenizer.ggml.normalizer.strip_accents")
        self.strip_accents = self.lowercase if strip is None else bool(strip)
        self.max_token_len = max(len(t.encode("utf-8")) for t in self.tokens)
        self._max_chars = max(len(t) for t in self.tokens)

    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = False) -> list[int]:
        # llama.cpp: with add_special a WordPiece text is always [CLS] ... [SEP], whatever add_bos says
        ids = [self.bos_id] if add_special and self.bos_id is not None else []
        self._encode_fragments(self.partition(text, parse_special), ids)
        if add_special and self.sep_id is not None:
            ids.append(self.sep_id)
        return ids

    def _words(self, text: str) -> list[str]:
        if self.strip_accents:
            text = unicodedata.normalize("NFD", text)
        words, cur = [], []
        for ch in text:
            if ch in _WHITESPACE:
                if cur:
                    words.append("".join(cur))
                    cur = []
                continue
            cp = ord(ch)
            cat = unicodedata.category(ch)
            if cp == 0 or cp == 0xFFFD or (cat[0] == "C" and cat != "Cn"):
                continue
            if self.strip_accents and cat.startswith("M"):
                continue
            if self.lowercase:
                low = ch.lower()
                ch = low if len(low) == 1 else ch
            if cat.startswith("P") or (cp < 0x7F and cat.startswith("S")) or _is_chinese(cp):
                if cur:
                    words.append("".join(cur))
                    cur = []
                words.append(ch)
            else:
                cur.append(ch)
        if cur:
            words.append("".join(cur))
        return words

    def encode_text(self, text: str) -> list[int]:
        out: list[int] = []
        lookup = self.token_to_id.get
        for word in self._words(text):
            w = "▁" + word
            n, i, ids = len(w), 0, []
            while i < n:
                for j in range(min(n, i + self._max_chars), i, -1):
                    tid = lookup(w[i:j])
                    if tid is not None:
                        ids.append(tid)
                        i = j
                        break
                else:
                    ids = []
                    break
            out.extend(ids if ids else [self.unk_id])
        return out
