"""Constrained decoding with llguidance (the grammar engine llama.cpp can build with):
JSON schemas (response_format, llama.cpp's json_schema), GBNF grammars (llama.cpp's grammar field).

    grammar = request_grammar(body)                 # llguidance's grammar text, or None; 400 when invalid
    matcher = compile_grammar(model.tokenizer, grammar, n_vocab)
    sampler = Constrained(Sampler(params), matcher, n_vocab)   # masks every draw, then consumes it

The token table llguidance needs is built once per tokenizer (about a second for a 150k vocabulary).
"""
from __future__ import annotations

import json
import threading

import numpy as np

from .errors import invalid

CONTROL, USER_DEFINED = 3, 4  # GGUF token types
# Compact JSON: small models given free whitespace may write newlines until the token limit.
JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}

_tokenizers: dict[int, object] = {}
_lock = threading.Lock()


def request_grammar(body: dict) -> str | None:
    """The request's constraint as an llguidance grammar: response_format (json_object, json_schema),
    json_schema, or grammar (GBNF or Lark). A bad value is a 400."""
    import llguidance

    rf = body.get("response_format")
    schema = None
    if rf is not None:
        if not isinstance(rf, dict) or not isinstance(rf.get("type"), str):
            raise invalid("'response_format' must be {\"type\": \"text\" | \"json_object\" | \"json_schema\"}",
                          "response_format", "invalid_type")
        kind = rf["type"]
        if kind == "json_schema":
            js = rf.get("json_schema")
            schema = js.get("schema") if isinstance(js, dict) and "schema" in js else js
            if schema is None and isinstance(rf.get("schema"), dict):  # llama.cpp accepts it one level up
                schema = rf["schema"]
            if not isinstance(schema, dict):
                raise invalid("'response_format.json_schema.schema' must be a JSON schema object",
                              "response_format", "invalid_type")
        elif kind == "json_object":
            schema = rf.get("schema") if isinstance(rf.get("schema"), dict) else {"type": "object"}
        elif kind != "text":
            raise invalid(f"'response_format.type' '{kind[:40]}' is not text, json_object or json_schema",
                          "response_format")
    if body.get("json_schema") is not None:
        schema = body["json_schema"]
        if not isinstance(schema, dict):
            raise invalid("'json_schema' must be a JSON schema object", "json_schema", "invalid_type")
    grammar = body.get("grammar")
    if grammar is not None and not isinstance(grammar, str):
        raise invalid("'grammar' must be a string (GBNF)", "grammar", "invalid_type")
    if grammar:
        if schema is not None:
            raise invalid("give either 'grammar' or a JSON schema, not both", "grammar")
        try:
            return llguidance.grammar_from("gbnf", grammar)
        except Exception as e:  # llguidance's converter raises more than ValueError on odd input
            raise invalid(f"'grammar' is not a valid GBNF grammar: {e}", "grammar", "invalid_grammar") from None
    if schema is None:
        return None
    try:
        return llguidance.LLMatcher.grammar_from_json_schema(json.dumps(schema), overrides=JSON_OPTIONS)
    except Exception as e:
        raise invalid(f"the JSON schema is not valid: {e}", "response_format" if rf else "json_schema",
                      "invalid_schema") from None


def grammar_tokenizer(tokenizer, n_vocab: int):
    """llguidance's view of our vocabulary: every token's bytes, the special ones marked."""
    import llguidance

    key = id(tokenizer)
    with _lock:
        if key in _tokenizers:
            return _tokenizers[key]
        types = list(tokenizer.token_types)
        special = [i for i in range(n_vocab) if i < len(types) and types[i] in (CONTROL, USER_DEFINED)]
        specials = set(special)
        tokens = [tokenizer.token_bytes(i, render_special=True) if i in specials else tokenizer.token_bytes(i)
                  for i in range(n_vocab)]
        eog = sorted(tokenizer.eog_ids)

        class Wrapped:
            def __init__(self):
                self.eos_token_id = tokenizer.eos_id if tokenizer.eos_id is not None else eog[0]
                self.bos_token_id = tokenizer.bos_id
                self.tokens = tokens
                self.special_token_ids = special

            def __call__(self, s):
                text = s.decode("utf-8", "replace") if isinstance(s, bytes) else s
                return tokenizer.tokenize(text, add_special=False, parse_special=False)

        result = llguidance.LLTokenizer(llguidance.TokenizerWrapper(Wrapped()), n_vocab=n_vocab,
                                        eos_token=eog or None)
        _tokenizers[key] = result
        return result


def compile_grammar(tokenizer, grammar: str, n_vocab: int):
    """A matcher for one reply; a grammar llguidance rejects is a 400."""
    import llguidance

    try:
        matcher = llguidance.LLMatcher(grammar_tokenizer(tokenizer, n_vocab), grammar, log_level=0)
    except Exception as e:
        raise invalid(f"the grammar or schema is not valid: {e}", "grammar", "invalid_grammar") from None
    if matcher.is_error():
        raise invalid(f"the grammar or schema is not valid: {matcher.get_error()}", "grammar", "invalid_grammar")
    return matcher


class Constrained:
    """A sampler whose draws the grammar allows, as llama.cpp samples with a grammar: the inner
    sampler draws from the whole distribution and, when the grammar takes that token (the common
    case, one cheap check), it stands; otherwise every token the grammar rejects gets -inf and the
    inner sampler draws again. Greedy decoding gives what masking first would. The buffers are
    allocated once."""

    def __init__(self, inner, matcher, n_vocab: int):
        self.inner, self.matcher, self.n_vocab = inner, matcher, n_vocab
        self.accept = getattr(inner, "accept", None) and inner.accept
        self.reset = getattr(inner, "reset", None) and inner.reset
        self._words = np.zeros((n_vocab + 31) // 32, dtype=np.int32)
        self._allowed = np.zeros(len(self._words) * 32, dtype=bool)
        self._logits = np.empty(n_vocab, dtype=np.float32)

    def allowed(self) -> np.ndarray:
        self.matcher.unsafe_compute_mask_ptr(self._words.ctypes.data, self._words.nbytes)
        bits = np.unpackbits(self._words.view(np.uint8), bitorder="little")
        np.copyto(self._allowed, bits.view(bool))
        return self._allowed[: self.n_vocab]

    def __call__(self, logits: np.ndarray) -> int:
        token = int(self.inner(logits))
        if self.matcher.is_error() or self.matcher.try_consume_tokens([token]) == 1:
            return token
        records = getattr(self.inner, "records", None)
        if records:
            records.pop()  # that draw does not count (Probe)
        allowed = self.allowed()
        if not allowed.any():  # nothing allowed: let the reply end as it would
            return token
        out = self._logits
        out.fill(-np.inf)
        np.copyto(out, logits, where=allowed)
        token = int(self.inner(out))
        self.matcher.consume_token(token)
        return token
