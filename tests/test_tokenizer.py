"""The BPE tokenizer against llama.cpp's token ids and detokenisation."""
from __future__ import annotations

import pytest

from conftest import read_jsonl
from llamafile.tokenizer import BPETokenizer, bytes_to_unicode
from weights.gguf import GGUFFile


@pytest.fixture(scope="module")
def smollm2_tokenizer(smollm2_path):
    return BPETokenizer.from_metadata(GGUFFile(smollm2_path).metadata)


@pytest.fixture(scope="module")
def qwen05_tokenizer():
    from conftest import model_path
    return BPETokenizer.from_metadata(GGUFFile(model_path("qwen05")).metadata)


def check_records(tokenizer, name):
    wrong = []
    for rec in read_jsonl(name):
        ids = tokenizer.tokenize(rec["text"], add_special=rec["add_special"], parse_special=rec["parse_special"])
        if ids != rec["ids"]:
            wrong.append((rec["text"][:60], rec["add_special"], ids[:12], rec["ids"][:12]))
        if "detok" in rec and tokenizer.detokenize(rec["ids"]) != rec["detok"]:
            wrong.append(("detok", rec["text"][:60], tokenizer.detokenize(rec["ids"])[:60]))
    assert not wrong, f"{len(wrong)} records differ, first: {wrong[:3]}"


def test_smollm2_ids_and_detok_match_llamacpp(smollm2_tokenizer):
    check_records(smollm2_tokenizer, "tok_smollm2.jsonl")


def test_qwen2_pre_tokenizer_matches_llamacpp(qwen05_tokenizer):
    check_records(qwen05_tokenizer, "tok_qwen05.jsonl")


def test_special_tokens_parse_only_when_asked(smollm2_tokenizer):
    t = smollm2_tokenizer
    assert t.tokenize("<|im_start|>", add_special=False, parse_special=True) == [1]
    assert 1 not in t.tokenize("<|im_start|>", add_special=False, parse_special=False)
    assert t.eos_id == 2 and 2 in t.eog_ids
    assert t.detokenize([1]) == "" and t.detokenize([1], render_special=True) == "<|im_start|>"


def test_stream_decoder_holds_back_partial_characters(smollm2_tokenizer):
    t = smollm2_tokenizer
    text = "naïve café 😀 中文 🇫🇷 done"
    ids = t.tokenize(text, add_special=False)
    decoder = t.decoder()
    pieces = [decoder.feed(i) for i in ids] + [decoder.flush()]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
    assert any(p == "" for p in pieces)  # the emoji spans several byte tokens


def test_byte_map_is_a_bijection():
    table = bytes_to_unicode()
    assert len(set(table.values())) == 256 and all(c.isprintable() for c in table.values())
