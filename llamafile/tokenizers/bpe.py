"""Byte-level BPE (`gpt2`; also `gemma4`), token for token what llama.cpp gives.

    fragment --pre-tokenizer regexes--> words --bytes as characters--> BPE merges --> ids

`tokenizer.ggml.pre` names the pre-tokenizer: a list of regexes applied one after the other,
each splitting every piece the previous one left (the matches and the gaps between them both
become pieces). PRE_TOKENIZERS has one entry per name, with llama.cpp's regexes (its
`llm_tokenizer_bpe`) and flags (its `load`). Python's `regex` module reads them as llama.cpp's
hand-written splitters do; `$` is written `\\Z` (Python's `$` also matches before a final newline).

Merging: the adjacent pair with the lowest merge rank is merged, leftmost first, until no pair
has a rank; a piece that is no token falls back to one token per byte.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass
from functools import lru_cache

import regex

from ..errors import TokenizerError
from .base import Tokenizer

_CONTRACTIONS = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"


def _as_llamacpp(pattern: str) -> str:
    """llama.cpp splits with hand-written code for these four patterns, where an unassigned code point
    (\\p{Cn}, no category flags) is never part of a run of punctuation and is one piece by itself."""
    return (pattern.replace(r"[^\s\p{L}\p{N}]+", r"[^\s\p{L}\p{N}\p{Cn}]+")
            .replace(r"[^\s\p{L}\p{M}\p{N}]+", r"[^\s\p{L}\p{M}\p{N}\p{Cn}]+") + r"|\p{Cn}")


GPT2 = _as_llamacpp(r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)")
LLAMA3 = _as_llamacpp(_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
                                      r"|\s+(?!\S)|\s+")
QWEN2 = _as_llamacpp(_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
                                     r"|\s+(?!\S)|\s+")
QWEN35 = _as_llamacpp(_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*"
                                      r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_CJK = r"[一-龥ࠀ-一가-퟿]+"
# written with escapes: NFC would fold some of these characters (U+1F7D, U+2126, U+212A, ...) into others
_DEEPSEEK_LETTERS = (
    "\\s?[A-Za-z\u00b5\u00c0-\u00d6\u00d8-"
    "\u00f6\u00f8-\u01ba\u01bc-\u01bf\u01c4-\u0293\u0295-\u02af\u0370-\u0373"
    "\u0376\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c\u038e-\u03a1\u03a3-"
    "\u03f5\u03f7-\u0481\u048a-\u052f\u0531-\u0556\u10a0-\u10c5\u13a0-\u13f5"
    "\u13f8-\u13fd\u1c90-\u1cba\u1cbd-\u1cbf\u1d00-\u1d2b\u1d6b-\u1d77\u1d79"
    "-\u1d9a\u1e00-\u1f15\u1f18-\u1f1d\u1f20-\u1f45\u1f48-\u1f4d\u1f50-"
    "\u1f57\u1f59\u1f5b\u1f5d\u1f5f-\u1f7d\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe\u1fc2-"
    "\u1fc4\u1fc6-\u1fcc\u1fd0-\u1fd3\u1fd6-\u1fdb\u1fe0-\u1fec\u1ff2-\u1ff4"
    "\u1ff6-\u1ffc\u2102\u2107\u210a-\u2113\u2115\u2119-\u211d\u2124\u2126\u2128\u212a"
    "-\u212d\u212f-\u2134\u2139\u213c-\u213f\u2145-\u2149\u214e\u2183\u2184\u2c00"
    "-\u2c7b\u2c7e-\u2ce4\u2ceb-\u2cee\u2cf2\u2cf3\ua640-\ua66d\ua680-\ua69b"
    "\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e\uab70-\uabbf\ufb00-\ufb06\ufb13"
    "-\ufb17\uff21-\uff3a\uff41-\uff5a\U00010400-\U0001044f\U000104b0-\U000104d3\U000104d8-"
    "\U000104fb\U00010c80-\U00010cb2\U00010cc0-\U00010cf2\U000118a0-\U000118df\U0001e900-\U0001e943]+")


@dataclass(frozen=True)
class PreTokenizer:
    regexes: tuple[str, ...]
    ignore_merges: bool = False  # a word that is itself a token is not merged (llama 3)
    clean_spaces: bool = True    # detokenize drops the space before . , ! ? and in " 's" (llama.cpp's default)
    add_bos: bool = False        # llama.cpp's default when the file has no add_bos_token
    byte_encode: bool = True     # GPT-2's bytes-as-characters; False: raw UTF-8 with ▁ for spaces (gemma4)


_DEFAULT = PreTokenizer((r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"))
_GPT2 = PreTokenizer((GPT2,))
_STARCODER = PreTokenizer((r"\p{N}", GPT2))
_LLAMA3 = PreTokenizer((LLAMA3,), ignore_merges=True, add_bos=True)
_QWEN2 = PreTokenizer((QWEN2,), clean_spaces=False)

PRE_TOKENIZERS: dict[str, PreTokenizer] = {
    "default": _DEFAULT,
    "llama3": _LLAMA3, "llama-v3": _LLAMA3, "llama-bpe": _LLAMA3, "falcon3": _LLAMA3, "pixtral": _LLAMA3,
    "dbrx": PreTokenizer((LLAMA3,)), "smaug-bpe": PreTokenizer((LLAMA3,)),
    "deepseek-llm": PreTokenizer((r"[\r\n]", _DEEPSEEK_LETTERS, r"\s?[!-/:-~！-／：-～‘-‟　-。]+", r"\s+\Z", _CJK,
                                  r"\p{N}+"), clean_spaces=False),
    "deepseek-coder": PreTokenizer((r"[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", _CJK, r"\p{N}"), clean_spaces=False),
    "falcon": PreTokenizer((r"[\p{P}\$\+<=>\^~\|`]+", GPT2, r"[0-9][0-9][0-9]")),
    "mpt": _GPT2, "gpt-2": _GPT2, "phi-2": _GPT2, "olmo": _GPT2, "jais": _GPT2, "gigachat": _GPT2,
    "starcoder": _STARCODER, "refact": _STARCODER, "codeshell": _STARCODER, "exaone": _STARCODER,
    "minerva-7b": _STARCODER,
    "command-r": PreTokenizer((r"\p{N}", GPT2), clean_spaces=False),
    "smollm": PreTokenizer((r"\p{N}", GPT2), clean_spaces=False),
    "qwen2": _QWEN2, "deepseek-r1-qwen": _QWEN2,
    "qwen35": PreTokenizer((QWEN35,), clean_spaces=False),
    "stablelm2": PreTokenizer((QWEN2,)),
    "poro-chat": PreTokenizer((r" ?[^(\s|.,!?…。，、।۔،)]+",), clean_spaces=False),
    "bloom": PreTokenizer((r" ?[^(\s|.,!?…。，、।۔،)]+",)),
    "gpt3-finnish": PreTokenizer((r" ?[^(\s|.,!?…。，、।۔،)]+",)),
    "chatglm-bpe": PreTokenizer((LLAMA3,)),
    "viking": PreTokenizer((r" ?[^(\s|.,!?…。，、।۔،)]+", r"\p{N}"), clean_spaces=False),
    "gemma4": PreTokenizer((r"[^\n]+|[\n]+",), byte_encode=False),
}


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable characters."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


@lru_cache(maxsize=1)
def unicode_to_bytes() -> dict[str, int]:
    return {c: b for b, c in bytes_to_unicode().items()}


class BPETokenizer(Tokenizer):
    model = "gpt2"
    default_ids = {"bos": 11, "eos": 11}
    clean_spaces_default = True

    def _read_flags(self, meta: dict) -> None:
        name = self._pre_name(meta)
        if name not in PRE_TOKENIZERS:
            raise TokenizerError(f"{self.path}: unknown pre-tokenizer '{name}' for tokenizer '{self.model}' "
                                 f"(known: {', '.join(sorted(PRE_TOKENIZERS))})")
        self.pre_name, self.pre = name, PRE_TOKENIZERS[name]
        self.add_bos_default = self.pre.add_bos
        super()._read_flags(meta)  # add_space_prefix: false unless the file says so (detokenize strips one)
        self.clean_spaces = self.pre.clean_spaces

    def _pre_name(self, meta: dict) -> str:
        return str(meta.get("tokenizer.ggml.pre") or "default")

    def _setup(self, meta: dict) -> None:
        merges = meta.get("tokenizer.ggml.merges")
        if merges is None:
            raise TokenizerError(f"{self.path}: missing key 'tokenizer.ggml.merges'")
        # "first second" -> rank, keyed by the file's own strings (a dict of pairs took 3x the memory: 40 MB for
        # Llama 3's 280k merges). The pair is llama.cpp's split at the first space after the first character;
        # a merge without one matches nothing. Pieces never hold a space (bytes are mapped to characters, or
        # spaces escaped as ▁), so first + " " + second finds exactly the merges of that pair.
        self.ranks = {}
        for rank, m in enumerate(merges):
            if m.find(" ", 1) >= 0:
                self.ranks.setdefault(m, rank)
        self._split_res = [regex.compile(r) for r in self.pre.regexes]
        self._word_cache: dict[str, list[int]] = {}
        self._byte_enc = bytes_to_unicode()
        self._byte_dec = unicode_to_bytes()
        self._escape = not self.pre.byte_encode

    # --- text -> ids --------------------------------------------------------------
    def encode_text(self, text: str) -> list[int]:
        if self._escape:
            text = text.replace(" ", "▁")
        ids: list[int] = []
        cache = self._word_cache
        for word in self._pre_tokenize(text):
            word_ids = cache.get(word)
            if word_ids is None:
                word_ids = self._encode_word(word)
                if len(cache) < 200_000:
                    cache[word] = word_ids
            ids.extend(word_ids)
        return ids

    def _pre_tokenize(self, text: str) -> list[str]:
        pieces = [text]
        for pattern in self._split_res:
            pieces = [p for f in pieces for p in _split_keep_gaps(pattern, f)]
        return pieces

    def _encode_word(self, word: str) -> list[int]:
        if self.pre.byte_encode:
            word = "".join([self._byte_enc[b] for b in word.encode("utf-8")])
        if (self.pre.ignore_merges or (self._escape and not word.strip("\n"))) and word in self.token_to_id:
            return [self.token_to_id[word]]
        ids = []
        for part in self._bpe(word):
            token = self.token_to_id.get(part)
            if token is not None:
                ids.append(token)
            elif self._escape:  # byte fallback as <0xXX> tokens
                ids.extend(self.token_to_id[t] for t in (f"<0x{b:02X}>" for b in part.encode("utf-8"))
                           if t in self.token_to_id)
            else:  # llama.cpp looks up each byte of the piece as a one-byte token: only ASCII can be one
                ids.extend(self.token_to_id[c] for c in part if c < "\x80" and c in self.token_to_id)
        return ids

    def _bpe(self, word: str) -> list[str]:
        """Merge the lowest-ranked adjacent pair (leftmost on a tie) until none is left."""
        if len(word) > 48:
            return self._bpe_queue(word)
        parts = list(word)
        ranks = self.ranks
        while len(parts) > 1:
            best, best_rank = -1, None
            for i in range(len(parts) - 1):
                rank = ranks.get(parts[i] + " " + parts[i + 1])
                if rank is not None and (best_rank is None or rank < best_rank):
                    best, best_rank = i, rank
            if best < 0:
                break
            first, second = parts[best], parts[best + 1]
            merged, i, n = parts[:best], best, len(parts)
            while i < n:
                if i < n - 1 and parts[i] == first and parts[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        return parts

    def _bpe_queue(self, word: str) -> list[str]:
        """The same merges for long words (Gemma 4 merges whole lines), in n log n: llama.cpp's linked
        symbols and a queue of candidate pairs by (rank, position); a stale pair is skipped."""
        ranks = self.ranks
        text = list(word)
        prev = list(range(-1, len(text) - 1))
        nxt = list(range(1, len(text) + 1))
        nxt[-1] = -1
        heap = []

        def add(left: int, right: int) -> None:
            if left >= 0 and right >= 0:
                rank = ranks.get(text[left] + " " + text[right])
                if rank is not None:
                    heapq.heappush(heap, (rank, left, right, text[left] + text[right]))

        for i in range(len(text) - 1):
            add(i, i + 1)
        while heap:
            _, left, right, merged = heapq.heappop(heap)
            if not text[left] or not text[right] or text[left] + text[right] != merged:
                continue
            text[left], text[right] = merged, ""
            nxt[left] = nxt[right]
            if nxt[right] >= 0:
                prev[nxt[right]] = left
            add(prev[left], left)
            add(left, nxt[left])
        return [t for t in text if t]

    # --- ids -> text --------------------------------------------------------------
    def normal_bytes(self, token: int) -> bytes:
        text = self.tokens[token]
        if self._escape:
            return text.replace("▁", " ").encode("utf-8")
        dec = self._byte_dec
        try:
            return bytes([dec[c] for c in text])
        except KeyError:  # a character outside GPT-2's byte map: llama.cpp's marker for it
            return b"".join(bytes([dec[c]]) if c in dec else
                            b"[UNK_BYTE_0x" + c.encode("utf-8").hex().encode() + text.encode("utf-8") + b"]"
                            for c in text)


class Gemma4Tokenizer(BPETokenizer):
    """Gemma 4: BPE over raw UTF-8 with ▁ for spaces, split only at newlines; BOS always added
    (llama.cpp overrides add_bos_token = false for it)."""
    model = "gemma4"
    default_ids: dict = {}

    def _pre_name(self, meta: dict) -> str:
        return "gemma4"

    def _read_flags(self, meta: dict) -> None:
        super()._read_flags(meta)
        self.add_bos = True


def _split_keep_gaps(pattern, text: str) -> list[str]:
    """The matches of pattern in text and the unmatched stretches between them, in order."""
    pieces, start = [], 0
    for m in pattern.finditer(text):
        s, e = m.span()
        if s > start:
            pieces.append(text[start:s])
        if e > s:
            pieces.append(m.group())
        start = e
    if start < len(text):
        pieces.append(text[start:])
    return pieces
