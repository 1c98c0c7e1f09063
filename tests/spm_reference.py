"""llama.cpp's SentencePiece tokenizer (llm_tokenizer_spm) transcribed into plain Python: the slow twin
that tests hold llamafile/tokenizers/spm.py (the sentencepiece library) to.

    characters --merge the adjacent pair whose concatenation is a vocabulary token with the highest
    score (leftmost on a tie), again and again--> symbols --token, or its merge history, or bytes--> ids

Any token counts for a merge, whatever its type (llama.cpp: "Do we need to support is_unused?").
"""
from __future__ import annotations

import heapq


class SPMReference:
    def __init__(self, tok):
        self.tok = tok

    def encode(self, text: str) -> list[int]:
        """One fragment, spaces already escaped to ▁."""
        tok = self.tok
        sym = [[c, i - 1, i + 1] for i, c in enumerate(text)]  # text, prev, next
        if not sym:
            return []
        sym[-1][2] = -1
        heap = []

        def add(left, right):
            if left < 0 or right < 0:
                return
            t = sym[left][0] + sym[right][0]
            tid = tok.token_to_id.get(t)
            if tid is None:
                return
            heapq.heappush(heap, (-tok.scores[tid], left, right, len(t)))

        for i in range(1, len(sym)):
            add(i - 1, i)
        while heap:
            _, left, right, size = heapq.heappop(heap)
            ls, rs = sym[left], sym[right]
            if not ls[0] or not rs[0] or len(ls[0]) + len(rs[0]) != size:
                continue
            rsn = rs[2]
            ls[0], rs[0] = ls[0] + rs[0], ""
            ls[2] = rsn
            if rsn >= 0:
                sym[rsn][1] = left
            add(ls[1], left)
            add(left, ls[2])
        # llama.cpp's resegment: a symbol is a token, or its bytes (its rev_merge only holds texts that are
        # tokens, so it never splits a symbol back)
        out: list[int] = []
        i = 0
        while i != -1:
            text = sym[i][0]
            tid = tok.token_to_id.get(text)
            if tid is not None:
                out.append(tid)
            else:
                for b in text.encode("utf-8"):
                    t = tok.token_to_id.get(f"<0x{b:02X}>")
                    out.append(t if t is not None else tok.token_to_id[chr(b)])
            i = sym[i][2]
        return out
