"""GPT-2 style byte-level BPE read from a GGUF, token for token what llama.cpp gives.

    text --special tokens--> fragments --pre-tokenizer regexes--> words --bytes as unicode--> BPE merges --> ids

llama.cpp's `pre` value names the pre-tokenizer: a list of regexes applied one after the
other, each splitting every fragment the previous one left (matches and the gaps between
them both become fragments). The table below is that list for each `pre` we know.
"""
from __future__ import annotations

import codecs
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable, Sequence

import regex

# token_type values in tokenizer.ggml.token_type (llama.cpp's llama_token_type)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
           r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
          r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


@dataclass(frozen=True)
class PreTokenizer:
    regexes: tuple[str, ...]
    ignore_merges: bool = False  # a word that is itself a token is not merged (llama 3)
    clean_spaces: bool = True    # detokenize drops the space before . , ! ? and in " 's"


_SMOLLM = PreTokenizer((r"\p{N}", _GPT2), clean_spaces=False)
PRE_TOKENIZERS = {
    "default": PreTokenizer((r"[\p{P}\$\+<=>\^~\|`]+", _GPT2, r"[0-9][0-9][0-9]")),
    "gpt-2": PreTokenizer((_GPT2,)),
    "gpt2": PreTokenizer((_GPT2,)),
    "smollm": _SMOLLM,
    "starcoder": _SMOLLM,
    "refact": _SMOLLM,
    "qwen2": PreTokenizer((_QWEN2,), clean_spaces=False),
    "llama3": PreTokenizer((_LLAMA3,), ignore_merges=True, clean_spaces=False),
    "llama-bpe": PreTokenizer((_LLAMA3,), ignore_merges=True, clean_spaces=False),
}

# Texts llama.cpp treats as end-of-generation whenever they are control tokens.
_EOG_TEXTS = {"<|eot_id|>", "<|im_end|>", "<|end|>", "<|endoftext|>", "<end_of_turn>", "<|eom_id|>",
              "<EOT>", "_<EOT>", "<|end_of_text|>", "<|return|>", "<|call|>", "<｜end▁of▁sentence｜>"}


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


class BPETokenizer:
    def __init__(self, tokens: Sequence[str], merges: Sequence[str], token_types: Sequence[int],
                 pre: str = "default", bos_id: int | None = None, eos_id: int | None = None,
                 add_bos: bool = False, add_eos: bool = False, eog_ids: Iterable[int] = ()):
        if pre not in PRE_TOKENIZERS:
            raise ValueError(f"unknown pre-tokenizer '{pre}' (known: {', '.join(sorted(PRE_TOKENIZERS))})")
        self.pre = PRE_TOKENIZERS[pre]
        self._split_res = [regex.compile(r) for r in self.pre.regexes]
        self.tokens = list(tokens)
        self.token_types = [int(t) for t in token_types] or [NORMAL] * len(self.tokens)
        self.token_to_id = {t: i for i, t in enumerate(self.tokens)}
        self.ranks = {}
        for rank, m in enumerate(merges):
            pos = m.find(" ", 1)
            self.ranks[(m[:pos], m[pos + 1:])] = rank
        self.bos_id, self.eos_id = bos_id, eos_id
        self.add_bos, self.add_eos = add_bos, add_eos
        self.eog_ids = frozenset(self._find_eog(eog_ids))
        # special tokens matched in the raw text, longest first (llama.cpp's cache_special_tokens)
        special = [i for i, t in enumerate(self.token_types) if t in (CONTROL, USER_DEFINED, UNKNOWN)]
        special.sort(key=lambda i: -len(self.tokens[i]))
        self._special_all = self._special_regex(special)
        self._special_user = self._special_regex([i for i in special if self.token_types[i] == USER_DEFINED])
        self._word_cache: dict[str, list[int]] = {}
        self._byte_enc = bytes_to_unicode()

    @classmethod
    def from_metadata(cls, meta: dict) -> "BPETokenizer":
        model = meta.get("tokenizer.ggml.model")
        if model != "gpt2":
            raise ValueError(f"unsupported tokenizer '{model}' (only gpt2 byte-level BPE)")
        for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges"):
            if key not in meta:
                raise ValueError(f"missing metadata key '{key}'")
        ids = {k: meta.get(f"tokenizer.ggml.{k}_token_id") for k in ("bos", "eos", "eot", "eom")}
        return cls(meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.merges"],
                   list(meta.get("tokenizer.ggml.token_type", [])),
                   pre=meta.get("tokenizer.ggml.pre", "default"),
                   bos_id=_int_or_none(ids["bos"]), eos_id=_int_or_none(ids["eos"]),
                   add_bos=bool(meta.get("tokenizer.ggml.add_bos_token", False)),
                   add_eos=bool(meta.get("tokenizer.ggml.add_eos_token", False)),
                   eog_ids=[int(i) for i in (ids["eot"], ids["eom"]) if i is not None])

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    def token_text(self, token: int) -> str:
        return self.tokens[token]

    # --- text -> ids --------------------------------------------------------------
    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = False) -> list[int]:
        ids: list[int] = []
        if add_special and self.add_bos and self.bos_id is not None:
            ids.append(self.bos_id)
        for fragment, special_id in self._partition(text, parse_special):
            if special_id is not None:
                ids.append(special_id)
            else:
                for word in self._pre_tokenize(fragment):
                    ids.extend(self._encode_word(word))
        if add_special and self.add_eos and self.eos_id is not None:
            ids.append(self.eos_id)
        return ids

    def _partition(self, text: str, parse_special: bool):
        """(text, None) for plain text and ("", id) for each special token found in it.
        Control tokens count only with parse_special; user-defined ones always do."""
        pattern = self._special_all if parse_special else self._special_user
        if pattern is None:
            if text:
                yield text, None
            return
        start = 0
        for m in pattern.finditer(text):
            if m.start() > start:
                yield text[start:m.start()], None
            yield "", self.token_to_id[m.group()]
            start = m.end()
        if start < len(text):
            yield text[start:], None

    def _pre_tokenize(self, text: str) -> list[str]:
        fragments = [text]
        for pattern in self._split_res:
            fragments = [piece for f in fragments for piece in _split_keep_gaps(pattern, f)]
        return fragments

    def _encode_word(self, word: str) -> list[int]:
        ids = self._word_cache.get(word)
        if ids is None:
            ids = self._bpe("".join(self._byte_enc[b] for b in word.encode("utf-8")))
            if len(self._word_cache) < 100_000:
                self._word_cache[word] = ids
        return ids

    def _bpe(self, word: str) -> list[int]:
        """Merge the lowest-ranked adjacent pair (leftmost on a tie) until none is left."""
        if self.pre.ignore_merges and word in self.token_to_id:
            return [self.token_to_id[word]]
        parts = list(word)
        while len(parts) > 1:
            best, best_rank = -1, None
            for i in range(len(parts) - 1):
                rank = self.ranks.get((parts[i], parts[i + 1]))
                if rank is not None and (best_rank is None or rank < best_rank):
                    best, best_rank = i, rank
            if best < 0:
                break
            first, second = parts[best], parts[best + 1]
            merged, i = [], 0
            while i < len(parts):
                if i < len(parts) - 1 and parts[i] == first and parts[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        ids = []
        for part in parts:
            token = self.token_to_id.get(part)
            if token is not None:
                ids.append(token)
            else:  # not in the vocabulary: one token per byte character, where those exist
                ids.extend(self.token_to_id[c] for c in part if c in self.token_to_id)
        return ids

    # --- ids -> text --------------------------------------------------------------
    def token_bytes(self, token: int, render_special: bool = False) -> bytes:
        """The bytes one token stands for (llama.cpp's token_to_piece)."""
        kind = self.token_types[token] if token < len(self.token_types) else NORMAL
        text = self.tokens[token]
        if kind == NORMAL:
            dec = unicode_to_bytes()
            return bytes(dec[c] for c in text if c in dec)
        if kind == USER_DEFINED or (render_special and kind == CONTROL):
            return text.encode("utf-8")
        return b""

    def detokenize(self, ids: Sequence[int], render_special: bool = False) -> str:
        text = b"".join(self.token_bytes(int(t), render_special) for t in ids).decode("utf-8", errors="replace")
        return _clean_spaces(text) if self.pre.clean_spaces else text

    def decoder(self, render_special: bool = False) -> "StreamDecoder":
        return StreamDecoder(self, render_special)

    # --- helpers ------------------------------------------------------------------
    def _special_regex(self, ids: list[int]):
        texts = [self.tokens[i] for i in ids if self.tokens[i]]
        return regex.compile("|".join(regex.escape(t) for t in texts)) if texts else None

    def _find_eog(self, extra: Iterable[int]) -> set[int]:
        eog = set(extra)
        if self.eos_id is not None:
            eog.add(self.eos_id)
        eog.update(i for i, t in enumerate(self.tokens)
                   if t in _EOG_TEXTS and self.token_types[i] in (CONTROL, USER_DEFINED))
        return eog


class StreamDecoder:
    """Turns ids into text one at a time, holding back the bytes of a partial UTF-8 character."""

    def __init__(self, tokenizer: BPETokenizer, render_special: bool = False):
        self.tokenizer, self.render_special = tokenizer, render_special
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, token: int) -> str:
        return self._utf8.decode(self.tokenizer.token_bytes(int(token), self.render_special))

    def flush(self) -> str:
        return self._utf8.decode(b"", final=True)


def _split_keep_gaps(pattern, text: str) -> list[str]:
    """The matches of pattern in text and the unmatched stretches between them, in order."""
    pieces, start = [], 0
    for m in pattern.finditer(text):
        if m.start() > start:
            pieces.append(text[start:m.start()])
        if m.end() > m.start():
            pieces.append(m.group())
        start = m.end()
    if start < len(text):
        pieces.append(text[start:])
    return pieces


def _clean_spaces(text: str) -> str:
    """llama.cpp's clean-up for GPT-2 style vocabularies: " ." -> ".", " 's" -> "'s"."""
    text = regex.sub(r" ([?!.,])", r"\1", text)
    text = text.replace(" ' ", "'")
    return regex.sub(r" '(s|m|re|ve)\b", r"'\1", text)


def _int_or_none(x) -> int | None:
    return None if x is None else int(x)
