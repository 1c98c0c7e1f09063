"""What every tokenizer type shares, as llama.cpp's src/llama-vocab.cpp has it.

    text --special tokens (longest first)--> fragments --the type's encoder--> ids
    ids --token_bytes--> bytes --UTF-8--> text (--clean-up of spaces, for some BPE vocabularies)

A GGUF vocabulary is `tokenizer.ggml.tokens` with a `token_type` each; llama.cpp turns the
types into attribute bits, then adjusts them by the token text (end-of-generation tokens
become control tokens, `unused` control tokens are marked unused, ...). Special tokens
(control, user-defined, unknown) are cut out of the text before the type's encoder sees it:
user-defined ones always, control and unknown ones only with `parse_special`.
Each subclass sets the defaults llama.cpp uses when a key is missing and encodes one
fragment of plain text; see `bpe.py`, `spm.py`, `ugm.py`, `wpm.py`.
"""
from __future__ import annotations

import codecs
import sys
from abc import ABC, abstractmethod
from array import array
from typing import Sequence

import numpy as np
import regex

from ..errors import TokenizerError

# tokenizer.ggml.token_type values (llama.cpp's llama_token_type)
UNDEFINED, NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 0, 1, 2, 3, 4, 5, 6

# llama.cpp's llama_token_attr bits
A_UNKNOWN, A_UNUSED, A_NORMAL, A_CONTROL, A_USER_DEFINED, A_BYTE = 1, 2, 4, 8, 16, 32
A_LSTRIP, A_RSTRIP = 128, 256
_TYPE_ATTR = {UNKNOWN: A_UNKNOWN, UNUSED: A_UNUSED, NORMAL: A_NORMAL, CONTROL: A_CONTROL,
              USER_DEFINED: A_USER_DEFINED, BYTE: A_BYTE}
A_SPECIAL = A_CONTROL | A_USER_DEFINED | A_UNKNOWN  # cut out of the text before encoding

# token texts llama.cpp takes for an end-of-turn token when the file names none (in this order of keys)
_EOT_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>",
              "<EOT>", "_<EOT>", "[EOT]", "<｜end▁of▁sentence｜>", "<end_of_utterance>")
_FIM_TEXTS = {  # fill-in-the-middle tokens: pad, repo and file separator also end a generation
    "fim_pre": ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>", "▁<PRE>",
                "<|code_prefix|>", "<|prefix|>"),
    "fim_suf": ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>", "▁<SUF>",
                "<|code_suffix|>", "<|suffix|>"),
    "fim_mid": ("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>", "▁<MID>",
                "<|code_middle|>", "<|middle|>"),
    "fim_pad": ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"),
    "fim_rep": ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"),
    "fim_sep": ("<|file_sep|>",),
}
# texts that end a generation whatever their type (llama.cpp marks them control)
_EOG_TEXTS = frozenset(("<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
                        "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
                        "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
                        "<｜end▁of▁sentence｜>", "[e~["))
# special ids and their metadata keys (tokenizer.ggml.KEY), as llama.cpp reads them
_ID_KEYS = {"bos": ("bos_token_id",), "eos": ("eos_token_id",), "eot": ("eot_token_id",),
            "eom": ("eom_token_id",), "unk": ("unknown_token_id",), "sep": ("seperator_token_id",),  # sic
            "pad": ("padding_token_id",), "mask": ("mask_token_id",),
            "fim_pre": ("fim_pre_token_id", "prefix_token_id"), "fim_suf": ("fim_suf_token_id", "suffix_token_id"),
            "fim_mid": ("fim_mid_token_id", "middle_token_id"), "fim_pad": ("fim_pad_token_id",),
            "fim_rep": ("fim_rep_token_id",), "fim_sep": ("fim_sep_token_id",)}
_ASCII_SPACE = " \t\n\v\f\r"


def _int_or_none(x) -> int | None:
    return None if x is None else int(x)


class Tokenizer(ABC):
    """One GGUF vocabulary; subclasses encode plain text and say how a normal token reads."""

    model = ""                    # tokenizer.ggml.model
    default_ids: dict = {}        # special ids when the file names none (llama.cpp's per-type defaults)
    add_bos_default = False
    add_eos_default = False
    add_sep_default = False
    add_space_prefix_default = False
    clean_spaces_default = False

    def __init__(self, meta: dict, path=None):
        self.path = path
        tokens = meta.get("tokenizer.ggml.tokens")
        if tokens is None:
            raise TokenizerError(f"{path}: missing key 'tokenizer.ggml.tokens'")
        self.tokens = [t if t else f"[EMPTY_{i}]" for i, t in enumerate(tokens)]
        n = len(self.tokens)
        # per-token numbers in arrays, 4 bytes each (a list of Python floats took 32: 8 MB for Gemma's 262k)
        types = meta.get("tokenizer.ggml.token_type")
        self.token_types = array("i", np.asarray(types[:n] if types is not None else np.full(n, NORMAL), "i").tobytes())
        if len(self.token_types) < n:
            raise TokenizerError(f"{path}: {len(self.token_types)} token types for {n} tokens")
        scores = meta.get("tokenizer.ggml.scores")
        self.scores = array("f", np.asarray(scores[:n] if scores is not None else np.zeros(n), "f").tobytes())
        self.token_to_id = {t: i for i, t in enumerate(self.tokens)}  # a repeated text: the last id, as llama.cpp
        self.attrs = array("i", [_TYPE_ATTR.get(t, 0) for t in self.token_types])
        self._read_flags(meta)
        self._read_special_ids(meta)
        self._mark_by_text(meta)
        self._special = sorted((i for i in range(n) if self.attrs[i] & A_SPECIAL), key=lambda i: -len(self.tokens[i]))
        self._special_re = {}   # parse_special -> (compiled alternation, candidate prefixes)
        self._setup(meta)

    # --- reading the file ---------------------------------------------------------
    def _read_flags(self, meta: dict) -> None:
        def flag(key, default):
            v = meta.get(f"tokenizer.ggml.{key}")
            return default if v is None else bool(v)
        self.add_space_prefix = flag("add_space_prefix", self.add_space_prefix_default)
        self.remove_extra_whitespaces = flag("remove_extra_whitespaces", False)
        self.add_bos = flag("add_bos_token", self.add_bos_default)
        self.add_eos = flag("add_eos_token", self.add_eos_default)
        self.add_sep = flag("add_sep_token", self.add_sep_default)
        self.clean_spaces = self.clean_spaces_default

    def _read_special_ids(self, meta: dict) -> None:
        n = len(self.tokens)
        ids = {k: self.default_ids.get(k) for k in _ID_KEYS}
        for k, keys in _ID_KEYS.items():
            if ids[k] is not None and ids[k] >= n:
                ids[k] = None
            for key in keys:
                v = _int_or_none(meta.get(f"tokenizer.ggml.{key}"))
                if v is not None and 0 <= v < n:
                    ids[k] = v
        self.special_ids = ids
        self.bos_id, self.eos_id = ids["bos"], ids["eos"]
        self.unk_id, self.sep_id, self.pad_id = ids["unk"], ids["sep"], ids["pad"]

    def _mark_by_text(self, meta: dict) -> None:
        """llama.cpp's fix-ups by token text: end-of-turn, fill-in-the-middle, unused and end-of-generation
        tokens, and the per-model strip attributes."""
        attrs, ids = self.attrs, self.special_ids
        found = {}
        for key, texts in (("eot", _EOT_TEXTS), ("eom", ("<|eom_id|>",)), *_FIM_TEXTS.items()):
            if ids.get(key) is None:
                for t in texts:
                    i = self.token_to_id.get(t)
                    if i is not None:
                        found[key] = i
                        attrs[i] |= A_CONTROL
                        break
            else:
                found[key] = ids[key]
        for i, t in enumerate(self.tokens):
            if attrs[i] & A_CONTROL and "unused" in t:
                attrs[i] |= A_UNUSED
        eog = {found[k] for k in ("fim_pad", "fim_rep", "fim_sep") if k in found}
        for t, i in self.token_to_id.items():
            if t in _EOG_TEXTS:
                eog.add(i)
                attrs[i] |= A_CONTROL
        for t in ("<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"):  # gpt-oss: always rendered
            if t in self.token_to_id:
                attrs[self.token_to_id[t]] = A_USER_DEFINED
        for k in ("eos", "eot", "eom"):
            i = ids.get(k) if k == "eos" else found.get(k)
            if i is not None:
                eog.add(i)
        texts = {self.tokens[i]: i for i in eog}
        if "<|end|>" in texts and (("<|return|>" in texts and "<|call|>" in texts)
                                   or ("<|calls|>" in texts and "<|flush|>" in texts)):
            eog.discard(texts["<|end|>"])
            attrs[texts["<|end|>"]] = A_USER_DEFINED
        if "</s>" in texts and ("<|tool_response>" in texts or "<|plamo:eos|>" in texts):
            eog.discard(texts["</s>"])
            attrs[texts["</s>"]] = A_NORMAL
        self.eot_id = found.get("eot")
        self.eog_ids = frozenset(eog)
        # per-model attributes (llama.cpp sets them by name: the GGUF has no field for them)
        name = str(meta.get("general.name", "")).lower()
        pre = str(meta.get("tokenizer.ggml.pre", ""))
        arch = str(meta.get("general.architecture", ""))
        if any(s in pre for s in ("jina-v2-de", "jina-v2-es", "jina-v2-code")) or \
                any(s in arch for s in ("nomic-bert-moe", "jina-bert-v3")):
            if "<mask>" in self.token_to_id:
                attrs[self.token_to_id["<mask>"]] |= A_LSTRIP
        elif "phi-3" in name or "phi3" in name:
            for i, a in enumerate(attrs):
                if a & A_SPECIAL:
                    attrs[i] |= A_RSTRIP
            for t, on in (("</s>", True), ("<unk>", False), ("<s>", False), ("<|endoftext|>", False)):
                if t in self.token_to_id:
                    i = self.token_to_id[t]
                    attrs[i] = attrs[i] | A_RSTRIP if on else attrs[i] & ~A_RSTRIP
        elif "modern-bert" in name and "[MASK]" in self.token_to_id:
            attrs[self.token_to_id["[MASK]"]] |= A_LSTRIP

    def _setup(self, meta: dict) -> None:
        """Build what the type's encoder needs (subclasses)."""

    # --- the interface ------------------------------------------------------------
    def __repr__(self) -> str:
        pre = f"/{self.pre_name}" if hasattr(self, "pre_name") else ""
        return f"<{type(self).__name__} {self.model}{pre}, {self.vocab_size} tokens, {self.path}>"

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    def token_text(self, token: int) -> str:
        return self.tokens[token]

    def is_eog(self, token: int) -> bool:
        return token in self.eog_ids

    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = False) -> list[int]:
        """llama.cpp's llama_tokenize: BOS/EOS as the vocabulary says when add_special, special-token
        texts become their ids (user-defined ones always, control ones only with parse_special)."""
        ids: list[int] = []
        if add_special and self.add_bos:
            if self.bos_id is None:
                raise TokenizerError(f"{self.path}: add_bos_token is set but the vocabulary has no BOS token")
            ids.append(self.bos_id)
        self._encode_fragments(self.partition(text, parse_special), ids)
        if add_special and self.add_eos:
            if self.eos_id is None:
                raise TokenizerError(f"{self.path}: add_eos_token is set but the vocabulary has no EOS token")
            ids.append(self.eos_id)
        return ids

    def _encode_fragments(self, fragments: list, ids: list[int]) -> None:
        for f in fragments:
            if isinstance(f, int):
                ids.append(f)
            else:
                ids.extend(self.encode_text(f))

    @abstractmethod
    def encode_text(self, text: str) -> list[int]:
        """Ids of one fragment of plain text: what each tokenizer type's file implements."""

    # --- special tokens -----------------------------------------------------------
    def partition(self, text: str, parse_special: bool) -> list:
        """The text cut into plain strings and special-token ids, as llama.cpp's tokenizer_st_partition:
        each special token in turn, longest first, is cut out of every fragment still plain text."""
        if not text:
            return []
        pattern, prefixes = self._special_pattern(parse_special)
        if pattern is None:
            return [text]
        # only tokens that occur matter: every token matching at a position is a prefix of the longest one there
        present = set()
        for m in pattern.finditer(text, overlapped=True):
            present.update(prefixes[m.group()])
        if not present:
            return [text]
        fragments: list = [text]
        for i in self._special:
            if i not in present:
                continue
            tok, attr = self.tokens[i], self.attrs[i]
            out = []
            for f in fragments:
                if isinstance(f, int) or tok not in f:
                    out.append(f)
                    continue
                pos = 0
                while True:
                    m = f.find(tok, pos)
                    if m < 0:
                        break
                    left = f[pos:m]
                    if attr & A_LSTRIP:
                        left = left.rstrip(_ASCII_SPACE)
                    if left:
                        out.append(left)
                    out.append(i)
                    pos = m + len(tok)
                    if attr & A_RSTRIP:
                        while pos < len(f) and f[pos] in _ASCII_SPACE:
                            pos += 1
                if pos < len(f):
                    out.append(f[pos:])
            fragments = out
        return fragments

    def _special_pattern(self, parse_special: bool):
        """An alternation of the special texts that count (longest first), and for each text the
        ids of the special tokens that are prefixes of it."""
        if parse_special not in self._special_re:
            skip = 0 if parse_special else (A_CONTROL | A_UNKNOWN)
            ids = [i for i in self._special if not self.attrs[i] & skip]
            texts = {self.tokens[i]: i for i in reversed(ids)}
            prefixes = {t: [texts[t[:k]] for k in range(1, len(t) + 1) if t[:k] in texts] for t in texts}
            pattern = regex.compile(_trie_pattern(texts)) if texts else None
            self._special_re[parse_special] = (pattern, prefixes)
        return self._special_re[parse_special]

    # --- ids -> text --------------------------------------------------------------
    def token_bytes(self, token: int, render_special: bool = False) -> bytes:
        """The bytes one token stands for (llama.cpp's token_to_piece)."""
        attr = self.attrs[token]
        if attr & (A_CONTROL | A_UNKNOWN):
            return self.tokens[token].encode("utf-8") if render_special else b""
        if attr & A_USER_DEFINED:
            return self.tokens[token].encode("utf-8")
        if attr & A_NORMAL:
            return self.normal_bytes(token)
        if attr & A_BYTE:
            return bytes([int(self.tokens[token][3:5], 16)])
        return b""

    def normal_bytes(self, token: int) -> bytes:
        """A normal token's bytes (subclasses: byte-level BPE maps characters back to bytes)."""
        return self.tokens[token].replace("▁", " ").encode("utf-8")

    def detokenize(self, ids: Sequence[int], render_special: bool = False) -> str:
        """llama.cpp's llama_detokenize (remove_special = false): the first token loses one leading
        space where the vocabulary adds one, then the clean-up of spaces where the vocabulary asks."""
        d = self.decoder(render_special)
        return "".join([d.feed(t) for t in ids]) + d.flush()

    def decoder(self, render_special: bool = False, continuation: bool = False) -> "StreamDecoder":
        """Streaming detokenisation; `continuation=True` for tokens that follow earlier ones (a reply after
        a prompt): then the first token keeps its leading space."""
        return StreamDecoder(self, render_special, continuation)


class StreamDecoder:
    """Ids to text one at a time, equal in the end to detokenize of the whole: the bytes of a partial
    UTF-8 character are held back, and with the clean-up of spaces so is a tail that the next token
    could still change (" ", " '", " 'r", ...)."""

    def __init__(self, tokenizer: Tokenizer, render_special: bool = False, continuation: bool = False):
        self.tokenizer, self.render_special = tokenizer, render_special
        self._strip_space = tokenizer.add_space_prefix and not continuation
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._clean = tokenizer.clean_spaces
        self._held = ""

    def feed(self, token: int) -> str:
        piece = self.tokenizer.token_bytes(int(token), self.render_special)
        if self._strip_space:
            self._strip_space = False
            if piece.startswith(b" "):
                piece = piece[1:]
        text = self._utf8.decode(piece)
        if not self._clean:
            return text
        text = self._held + text
        cut = _clean_cut(text)
        self._held = text[cut:]
        return clean_spaces(text[:cut])

    def flush(self) -> str:
        text = self._utf8.decode(b"", final=True)
        if not self._clean:
            return text
        text, self._held = self._held + text, ""
        return clean_spaces(text)


def _trie_pattern(texts) -> str:
    """One regex matching the longest of `texts` at a position, written as a trie: thousands of Gemma's
    control tokens as a plain alternation make the regex engine try each one at every character."""
    trie: dict = {}
    for t in texts:
        node = trie
        for c in t:
            node = node.setdefault(c, {})
        node[""] = True

    def emit(node: dict) -> str:
        alts = [regex.escape(c) + emit(child) for c, child in sorted(node.items()) if c]
        if not alts:
            return ""
        body = alts[0] if len(alts) == 1 else "(?:" + "|".join(alts) + ")"
        return f"(?:{body})?" if "" in node else body

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 2 * max(map(len, texts)) + 100))
    try:
        return emit(trie)
    finally:
        sys.setrecursionlimit(limit)


_CLEAN_1 = regex.compile(r" ([?!.,])")
_CLEAN_3 = regex.compile(r" '(?=[sm]|re|ve)")


def clean_spaces(text: str) -> str:
    """llama.cpp's three passes for vocabularies with clean_spaces: " ?" -> "?" (also ! . ,),
    " ' " -> "'", then " 's" -> "'s" (also 'm 're 've)."""
    if " " not in text:
        return text
    text = _CLEAN_1.sub(r"\1", text)
    text = text.replace(" ' ", "'")
    return _CLEAN_3.sub("'", text)


def _clean_cut(text: str) -> int:
    """Where text can be cut so that cleaning the two halves apart gives what cleaning it whole does
    whatever comes next: before the longest tail that could start a pattern."""
    for k in (6, 5, 4, 3, 2, 1):
        tail = text[-k:]
        if len(tail) == k and tail[0] == " " and _could_grow(tail):
            return len(text) - k
    return len(text)


# raw stretches whose clean-up depends on all of them (the three passes run one after the other, so
# "  ' s" becomes " 's" in the second and "'s" in the third); " ' x" stands for " ' " and any character
_PATTERNS = (" ?", " !", " .", " ,", " ' .", " ' ?", " ' !", " ' ,", " ' x", " 's", " 'm", " 're", " 've",
             "  ' s", "  ' m", "  ' re", "  ' ve", "  ' .")


def _could_grow(tail: str) -> bool:
    return any(len(p) > len(tail) and p.startswith(tail) for p in _PATTERNS)
