"""Tokenizers against llama.cpp: its test-tokenizer-0 vocabularies and the reference records of the real models."""
from __future__ import annotations

import random
from functools import lru_cache

import pytest

import llamacpp_vocabs
from conftest import model_path, read_jsonl
from llamafile.tokenizers import TokenizerError, from_metadata, load_tokenizer
from llamafile.tokenizers.base import A_CONTROL, A_UNKNOWN, A_USER_DEFINED
from llamafile.tokenizers.bpe import bytes_to_unicode

WITH_CASES = [n for n in llamacpp_vocabs.NAMES if n not in llamacpp_vocabs.WITHOUT_CASES]


@lru_cache(maxsize=None)
def vocab(name: str):
    return load_tokenizer(llamacpp_vocabs.vocab_path(name))


@lru_cache(maxsize=None)
def model_tokenizer(name: str):
    return load_tokenizer(model_path(name))


def test_the_sdist_has_the_vocabularies_we_expect():
    assert llamacpp_vocabs.vocab_names() == llamacpp_vocabs.NAMES
    assert [n for n in llamacpp_vocabs.NAMES if llamacpp_vocabs.cases(n) is None] == llamacpp_vocabs.WITHOUT_CASES


# --- llama.cpp's test-tokenizer-0 ------------------------------------------------------
@pytest.mark.parametrize("name", WITH_CASES)
def test_vocabulary_gives_llamacpp_ids(name):
    tok = vocab(name)
    wrong = [(text[:40], got[:12], ids[:12]) for text, ids in llamacpp_vocabs.cases(name)
             if (got := tok.tokenize(text, add_special=False, parse_special=False)) != ids]
    assert not wrong, f"{len(wrong)} of {len(llamacpp_vocabs.cases(name))} texts differ, first: {wrong[:3]}"


@pytest.mark.parametrize("name", llamacpp_vocabs.WITHOUT_CASES)
def test_vocabulary_without_cases_loads_and_round_trips(name):
    tok = vocab(name)
    text = "Hello world, this is a test of 123 tokens."
    ids = tok.tokenize(text, add_special=False)
    assert ids and all(0 <= i < tok.vocab_size for i in ids)
    assert tok.detokenize(ids) == text


def test_unigram_through_sentencepiece_equals_llamacpps_algorithm():
    """nomic-bert-moe (t5) has no .inp/.out: hold it to a transcription of llama.cpp's llm_tokenizer_ugm,
    on every test text of the suite."""
    from ugm_reference import UGMReference
    from weights.gguf import GGUFFile
    path = llamacpp_vocabs.vocab_path("nomic-bert-moe")
    tok = vocab("nomic-bert-moe")
    ref = UGMReference(tok, GGUFFile(path).get("tokenizer.ggml.precompiled_charsmap").tobytes())
    texts = [t for n in WITH_CASES for t, _ in llamacpp_vocabs.cases(n)]
    fragments = [f for t in texts for f in tok.partition(t, False) if isinstance(f, str)]
    wrong = [(f[:40], tok.encode_text(f)[:12], ref.encode(f)[:12]) for f in fragments
             if tok.encode_text(f) != ref.encode(f)]
    assert len(fragments) > 600 and not wrong, wrong[:3]


SPM_EXTRA = ["<s>", "</s>", "<unk>", "a</s>b", "<0x41>", "<start_of_turn>user", "<end_of_turn>", "<|user|>",
             "<|endoftext|>", "<mask>", "<pad>", "<unused12>", "[multimodal]", "   a  b   ", "\n\n\n", "<bos>hi<eos>"]


@pytest.mark.parametrize("name", ["llama-spm", "phi-3", "baichuan", "gemma3"])
def test_sentencepiece_through_the_library_equals_llamacpps_algorithm(name):
    """SentencePiece through the library against a transcription of llama.cpp's llm_tokenizer_spm: the suite's
    texts, special-token texts left as plain text, and random strings."""
    from spm_reference import SPMReference
    tok = model_tokenizer(name) if name == "gemma3" else vocab(name)
    ref = SPMReference(tok)
    rng = random.Random(name)
    alphabet = "ab </s>\n<>|_▁éü中😀0x41"
    texts = [t for n in WITH_CASES for t, _ in llamacpp_vocabs.cases(n)] + SPM_EXTRA
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 20))) for _ in range(300)]
    wrong = []
    for text in texts:
        prev_special = True
        for f in tok.partition(text, False):
            if isinstance(f, int):
                prev_special = True
                continue
            f, prev_special = (" " + f if tok.add_space_prefix and prev_special else f), False
            if tok.encode_text(f) != ref.encode(f.replace(" ", "▁")):
                wrong.append((f[:40], tok.encode_text(f)[:10], ref.encode(f.replace(" ", "▁"))[:10]))
    assert not wrong, f"{len(wrong)} fragments differ, first: {wrong[:3]}"


# what llama.cpp adds with add_special: (first ids, last ids)
ADDED = {"llama-bpe": ([128000], []), "llama-spm": ([1], []), "phi-3": ([1], []), "gemma-4": ([2], []),
         "bert-bge": ([101], [102]), "command-r": ([5], []), "deepseek-coder": ([32013], []),
         "deepseek-llm": ([100000], []), "falcon": ([], []), "gpt-2": ([], []), "mpt": ([], []),
         "qwen2": ([], []), "qwen35": ([], []), "refact": ([], []), "starcoder": ([], []),
         "aquila": ([], []), "baichuan": ([1], []), "gpt-neox": ([], []), "nomic-bert-moe": ([0], [2])}


@pytest.mark.parametrize("name", llamacpp_vocabs.NAMES)
def test_add_special_and_parse_special(name):
    """BOS/EOS/SEP as llama.cpp adds them; special-token texts become their ids only with parse_special."""
    tok = vocab(name)
    first, last = ADDED[name]
    texts = [t for t, _ in llamacpp_vocabs.cases(name) or []] or ["Hello world", " two  spaces", ""]
    specials = [t for i, t in enumerate(tok.tokens) if tok.attrs[i] & (A_CONTROL | A_UNKNOWN | A_USER_DEFINED)]
    for text in texts:
        if any(s in text for s in specials):
            continue
        plain = tok.tokenize(text, add_special=False, parse_special=False)
        assert tok.tokenize(text, add_special=True, parse_special=True) == first + plain + last, text
    control = [i for i, t in enumerate(tok.tokens) if tok.attrs[i] & A_CONTROL and not tok.attrs[i] & A_USER_DEFINED
               and tok.token_to_id[t] == i]
    for i in control[:50]:
        text = "a" + tok.tokens[i] + "b"
        assert i in tok.tokenize(text, add_special=False, parse_special=True), tok.tokens[i]
        assert i not in tok.tokenize(text, add_special=False, parse_special=False), tok.tokens[i]


def test_llama3_special_tokens():
    tok = vocab("llama-bpe")
    assert tok.tokenize("Hello", add_special=True) == [128000, 9906]
    ids = tok.tokenize("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>",
                       add_special=False, parse_special=True)
    assert ids[:2] == [128000, 128006] and ids[-1] == 128009
    assert tok.eos_id == 128001 and {128001, 128009} <= tok.eog_ids
    assert tok.detokenize(ids) == "user\n\nHi" and tok.detokenize(ids[-1:], render_special=True) == "<|eot_id|>"


def test_spm_space_prefix_after_special_tokens():
    """llama.cpp adds the space prefix before the first text and before text that follows a special token."""
    tok = vocab("llama-spm")
    assert tok.tokenize("Hello", add_special=True) == [1, 15043]
    assert tok.tokenize("Hello</s>Hello", add_special=False, parse_special=True) == [15043, 2, 15043]
    assert tok.detokenize([1, 15043]) == " Hello"  # llama_detokenize strips one space from the first token only
    assert tok.detokenize([15043, 15043]) == "Hello Hello"


def test_phi3_special_tokens_strip_the_space_after_them():
    tok = vocab("phi-3")
    ids = tok.tokenize("<|user|>\nHi<|end|>\n<|assistant|>", add_special=False, parse_special=True)
    assert ids[0] == tok.token_to_id["<|user|>"] and ids[-1] == tok.token_to_id["<|assistant|>"]
    assert tok.token_to_id["<|end|>"] in tok.eog_ids


# --- ids -> text ---------------------------------------------------------------------
def _id_sequences(tok, name, rng):
    seqs = [ids for _, ids in llamacpp_vocabs.cases(name) or []]
    short = [i for i, t in enumerate(tok.tokens) if len(t) <= 3]
    for probe in (" ", "'", "s", "re", "ve", "m", ".", "?", ",", "Ġ", "Ġ'", "▁", "▁'"):
        if probe in tok.token_to_id:
            short += [tok.token_to_id[probe]] * 40
    for _ in range(200):
        seqs.append([rng.choice(short) for _ in range(rng.randint(1, 12))])
        seqs.append([rng.randrange(tok.vocab_size) for _ in range(rng.randint(1, 8))])
    return seqs


@pytest.mark.parametrize("name", llamacpp_vocabs.NAMES)
def test_streaming_equals_whole_detokenize(name):
    tok = vocab(name)
    for ids in _id_sequences(tok, name, random.Random(name)):
        for render_special in (False, True):
            d = tok.decoder(render_special)
            pieces = [d.feed(i) for i in ids] + [d.flush()]
            assert "".join(pieces) == tok.detokenize(ids, render_special), ids


def test_stream_decoder_holds_back_partial_characters():
    t = model_tokenizer("smollm2")
    text = "naïve café 😀 中文 🇫🇷 done"
    ids = t.tokenize(text, add_special=False)
    decoder = t.decoder()
    pieces = [decoder.feed(i) for i in ids] + [decoder.flush()]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
    assert any(p == "" for p in pieces)  # the emoji spans several byte tokens


def test_clean_spaces_stream_holds_back_what_the_next_token_can_change():
    tok = vocab("gpt-2")
    ids = tok.tokenize("Hello , it 's me .", add_special=False)
    assert tok.detokenize(ids) == "Hello, it's me."
    d = tok.decoder()
    assert "".join(d.feed(i) for i in ids) + d.flush() == "Hello, it's me."


def test_continuation_keeps_the_first_space():
    tok = vocab("llama-spm")
    ids = tok.tokenize("Hello world", add_special=False)
    d = tok.decoder(continuation=True)
    assert "".join(d.feed(i) for i in ids) + d.flush() == " Hello world"


# --- the real models' reference records ----------------------------------------------------------
def check_records(tokenizer, name):
    wrong = []
    for rec in read_jsonl(name):
        ids = tokenizer.tokenize(rec["text"], add_special=rec["add_special"], parse_special=rec["parse_special"])
        if ids != rec["ids"]:
            wrong.append((rec["text"][:60], rec["add_special"], ids[:12], rec["ids"][:12]))
        if "detok" in rec and tokenizer.detokenize(rec["ids"]) != rec["detok"]:
            wrong.append(("detok", rec["text"][:60], tokenizer.detokenize(rec["ids"])[:60]))
    assert not wrong, f"{len(wrong)} records differ, first: {wrong[:3]}"


@pytest.mark.parametrize("name", ["smollm2", "qwen05", "gemma3"])
def test_reference_records_match_llamacpp(name):
    check_records(model_tokenizer(name), f"tok_{name}.jsonl")


def test_special_tokens_parse_only_when_asked():
    t = model_tokenizer("smollm2")
    assert t.tokenize("<|im_start|>", add_special=False, parse_special=True) == [1]
    assert 1 not in t.tokenize("<|im_start|>", add_special=False, parse_special=False)
    assert t.eos_id == 2 and 2 in t.eog_ids
    assert t.detokenize([1]) == "" and t.detokenize([1], render_special=True) == "<|im_start|>"


def test_byte_map_is_a_bijection():
    table = bytes_to_unicode()
    assert len(set(table.values())) == 256 and all(c.isprintable() for c in table.values())


# --- errors ----------------------------------------------------------------------------------
def test_unsupported_tokenizer_type_is_one_error_naming_it():
    with pytest.raises(TokenizerError, match="tokenizer 'rwkv' is not supported"):
        from_metadata({"tokenizer.ggml.model": "rwkv", "tokenizer.ggml.tokens": ["a"]}, "x.gguf")


def test_unknown_pre_tokenizer_is_one_error_naming_it():
    meta = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "nonesuch", "tokenizer.ggml.tokens": ["a"],
            "tokenizer.ggml.merges": []}
    with pytest.raises(TokenizerError, match="pre-tokenizer 'nonesuch'"):
        from_metadata(meta, "x.gguf")


def test_special_tokens_are_cut_longest_first_over_the_whole_text():
    """llama.cpp cuts each special token out of the whole text in turn, longest first, not leftmost first."""
    tokens = ["a", "b", "c", "d", "e", "f", "g", "cdefg", "abcd", "ab"]
    types = [1] * 7 + [4, 4, 4]  # user-defined: always cut out
    meta = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt-2", "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.token_type": types, "tokenizer.ggml.merges": []}
    tok = from_metadata(meta, "tiny.gguf")
    assert tok.tokenize("abcdefg", add_special=False) == [9, 7]  # ab, cdefg (leftmost first would give abcd e f g)
    assert tok.tokenize("xabcdx", add_special=False) == [8]      # abcd; x is no token, no byte token either
    assert tok.tokenize("abab", add_special=False) == [9, 9]


@pytest.mark.parametrize("name", ["gemma-4", "llama-bpe"])
def test_bpe_merges_of_long_words_equal_the_short_word_loop(name):
    tok = vocab(name)
    rng = random.Random(name)
    words = ["".join(rng.choice("ab▁ cdeéĠ") for _ in range(rng.randint(2, 47))) for _ in range(500)]
    assert all(tok._bpe(w) == tok._bpe_queue(w) for w in words)


def test_a_long_line_is_fast_enough():
    import time
    tok = vocab("gemma-4")
    text = "The quick brown fox jumps over the lazy dog. " * 2000  # 90 kB in one line: merged as one word
    t0 = time.perf_counter()
    ids = tok.tokenize(text, add_special=False)
    assert time.perf_counter() - t0 < 20 and tok.detokenize(ids) == text


def test_special_ids_read_from_their_keys():
    nomic = vocab("nomic-bert-moe")  # t5 defaults would be eos 1, unk 2, pad 0
    assert (nomic.bos_id, nomic.eos_id, nomic.unk_id, nomic.sep_id, nomic.pad_id) == (0, 2, 3, 2, 1)
    bert = vocab("bert-bge")
    assert (bert.bos_id, bert.unk_id, bert.sep_id, bert.pad_id) == (101, 100, 102, 0)
    falcon = vocab("falcon")
    assert (falcon.bos_id, falcon.eos_id) == (11, 11) and 11 in falcon.eog_ids


def test_unassigned_code_points_split_as_llamacpps_hand_written_splitters():
    """U+0378 is unassigned: llama.cpp's gpt2/llama3 splitters give it no category, so it is never part of
    a punctuation run and stands alone (or leads the letters after it, in llama3's `[^\\r\\n\\p{L}\\p{N}]?\\p{L}+`)."""
    text = "a\u0378\u0378 .\u0378 \u0378x!!"
    assert vocab("llama-bpe")._pre_tokenize(text) == ["a", "\u0378", "\u0378", " .", "\u0378", " ", "\u0378x", "!!"]
    assert vocab("gpt-2")._pre_tokenize(text) == ["a", "\u0378", "\u0378", " .", "\u0378", " ", "\u0378", "x", "!!"]


def test_package_interface():
    import llamafile
    assert issubclass(llamafile.TokenizerError, llamafile.GGUFError)
    tok = llamafile.load_tokenizer(llamacpp_vocabs.vocab_path("qwen2"))  # a vocabulary-only GGUF: no tensors
    assert tok.vocab_size == len(tok.tokens) == len(tok.token_types) == 151936
    assert tok.token_text(tok.token_to_id["Hello"]) == "Hello" and tok.token_bytes(tok.token_to_id["ĠHello"]) == b" Hello"
