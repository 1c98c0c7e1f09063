"""llama.cpp's Unigram tokenizer (llm_tokenizer_ugm) transcribed into plain Python: the slow twin that
tests hold llamafile/tokenizers/ugm.py (the sentencepiece library) to.

    normalise (the precompiled character map, a XOR-compressed double array; spaces as ▁, a space
    prefix, runs of spaces merged) --> Viterbi over the vocabulary's pieces, best sum of scores
    (an unknown character costs min score - 10) --> ids, runs of unknowns as one
"""
from __future__ import annotations

import struct

from llamafile.tokenizers.base import A_NORMAL, A_UNUSED, A_USER_DEFINED


class UGMReference:
    def __init__(self, tok, charsmap: bytes):
        self.tok = tok
        self.xcda, self.replacements = [], b""
        if charsmap:
            (size,) = struct.unpack_from("<I", charsmap, 0)
            self.xcda = list(struct.unpack_from(f"<{size // 4}I", charsmap, 4))
            self.replacements = charsmap[4 + size:]
        self.pieces, self.user = {}, set()
        normal_scores = []
        for i, t in enumerate(tok.tokens):
            a = tok.attrs[i]
            if a & A_NORMAL:
                normal_scores.append(tok.scores[i])
            if a & (A_NORMAL | A_USER_DEFINED | A_UNUSED):
                self.pieces[t.encode("utf-8")] = i
            if a & A_USER_DEFINED:
                self.user.add(t.encode("utf-8"))
        self.max_len = max(map(len, self.pieces))
        self.unk_score = min(normal_scores) - 10.0

    # --- normalisation ------------------------------------------------------------
    def _node(self, i: int) -> int:
        if i >= len(self.xcda):
            raise IndexError("XCDA index out of range")
        return self.xcda[i]

    def _base(self, i):
        p = self._node(i)
        return (p >> 10) << ((p & (1 << 9)) >> 6)

    def _prefix(self, s: bytes, off: int) -> tuple[bytes, int]:
        """(replacement, bytes consumed) for the input at off."""
        best_user = max((len(u) for u in self.user if s.startswith(u, off)), default=0)
        if best_user:
            return s[off:off + best_user], best_user
        longest, value = 0, 0
        if self.xcda:
            node = self._base(0)
            for p in range(off, len(s)):
                c = s[p]
                if c == 0:
                    break
                node ^= c
                packed = self._node(node)
                if packed & ((1 << 31) | 0xFF) != c:
                    break
                leaf = (packed >> 8) & 1
                node ^= self._base(node)
                if leaf:
                    longest, value = p - off + 1, self._node(node) & ((1 << 31) - 1)
        if longest:
            end = self.replacements.index(b"\0", value)
            return self.replacements[value:end], longest
        n = _utf8_len(s[off])
        try:
            s[off:off + n].decode("utf-8")
            return s[off:off + n], n
        except UnicodeDecodeError:
            return "\ufffd".encode(), 1

    def normalize(self, text: str) -> bytes:
        tok, s = self.tok, text.encode("utf-8")
        space = "▁".encode()
        prepend, merge = tok.add_space_prefix, tok.remove_extra_whitespaces
        out, prepended, in_word, off = bytearray(), False, False, 0
        while off < len(s):
            rep, used = self._prefix(s, off)
            for c in rep:
                if c != 0x20:
                    if not in_word:
                        in_word = True
                        if (prepend and not prepended) or merge:
                            out += space
                            prepended = True
                    out.append(c)
                else:
                    in_word = False
                    if not merge:
                        out += space
            off += used
        return bytes(out)

    # --- Viterbi --------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        s = self.normalize(text)
        n, unk = len(s), self.tok.unk_id
        if not n:
            return []
        best = [(unk, 0, -1e300)] * (n + 1)
        best[0] = (unk, 0, 0.0)
        off = 0
        while off < n:
            cp = min(_utf8_len(s[off]), n - off)
            cur, single = best[off][2], False
            for L in range(1, min(self.max_len, n - off) + 1):
                tid = self.pieces.get(s[off:off + L])
                if tid is None:
                    continue
                if L == cp:
                    single = True
                score = cur + (0.0 if self.tok.attrs[tid] & A_USER_DEFINED else self.tok.scores[tid])
                if score > best[off + L][2]:
                    best[off + L] = (tid, off, score)
            if not single and cur + self.unk_score > best[off + cp][2]:
                best[off + cp] = (unk, off, cur + self.unk_score)
            off += cp
        ids, prev_unk, pos = [], False, n
        while True:
            tid, start, _ = best[pos]
            is_unk = tid == unk
            if not (prev_unk and is_unk):
                ids.append(tid)
            if start == 0:
                break
            prev_unk, pos = is_unk, start
        return ids[::-1]


def _utf8_len(b: int) -> int:
    return (1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4)[b >> 4]
