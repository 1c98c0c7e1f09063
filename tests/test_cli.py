"""The command line, run as a user would: a real subprocess on the real model."""
from __future__ import annotations

import subprocess
import time
import sys

import pytest

from conftest import model_path, read_jsonl


def run(*args, timeout=300, **kwargs):
    return subprocess.run([sys.executable, "-m", "llamafile", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, **kwargs)


def margin_cut(record, tau=0.5) -> int:
    """Steps before the first one whose reference margin is below tau."""
    return next((k for k, m in enumerate(record["margins"]) if m < tau), len(record["ids"]))


@pytest.mark.parametrize("record", read_jsonl("gen_smollm2.jsonl"), ids=lambda r: r["prompt"][:24])
def test_greedy_completion_matches_llamacpp(smollm2, record):
    cut = margin_cut(record)
    r = run("-m", str(model_path("smollm2")), "-p", record["prompt"], "-n", str(len(record["ids"])), "--temp", "0")
    assert r.returncode == 0, r.stderr
    expected = smollm2.detokenize(record["ids"][:cut])
    assert r.stdout.startswith(record["prompt"] + expected), (r.stdout, expected)
    assert "tokens per second" in r.stderr


def test_capital_of_france_without_prompt_echo():
    r = run("-m", str(model_path("smollm2")), "-p", "The capital of France is", "-n", "8", "--temp", "0",
            "--no-display-prompt")
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout and "capital" not in r.stdout


def test_reverse_prompt_stops_generation():
    r = run("-m", str(model_path("smollm2")), "-p", "The capital of France is", "-n", "32", "--temp", "0",
            "--no-display-prompt", "-r", "Paris")
    assert r.returncode == 0, r.stderr
    assert r.stdout.rstrip().endswith("Paris"), r.stdout


def test_prompt_from_file_with_escapes(tmp_path):
    f = tmp_path / "prompt.txt"
    f.write_text("The capital of France is", encoding="utf-8")
    from_file = run("-m", str(model_path("smollm2")), "-f", str(f), "-n", "6", "--temp", "0")
    escaped = run("-m", str(model_path("smollm2")), "-e", "-p", "The capital\\x20of France is", "-n", "6", "--temp", "0")
    assert from_file.returncode == escaped.returncode == 0
    assert from_file.stdout == escaped.stdout and "Paris" in from_file.stdout


def test_seeds_at_temperature():
    args = ("-m", str(model_path("smollm2")), "-p", "Once upon a time", "-n", "24", "--temp", "0.8",
            "--no-display-prompt")
    a, b, c = run(*args, "-s", "1"), run(*args, "-s", "1"), run(*args, "-s", "2")
    assert a.returncode == b.returncode == c.returncode == 0
    assert a.stdout == b.stdout
    assert a.stdout != c.stdout


def test_version_and_help():
    v = run("--version")
    assert v.returncode == 0 and v.stdout.startswith("llamafile ") and "cpu " in v.stdout
    h = run("--help")
    assert h.returncode == 0
    for flag in ("--top-k", "--min-p", "--repeat-penalty", "--threads", "--ctx-size", "sampling:", "chat:"):
        assert flag in h.stdout
    assert "cpu generic" in run("--version", "--cpu", "generic").stdout


@pytest.mark.parametrize("args,status,message", [
    (["--no-such-flag"], 2, "unrecognized arguments"),
    (["-m", "/nonexistent/model.gguf", "-p", "hi"], 2, "neither a file nor a catalogue name"),
    (["-n", "many", "-p", "hi"], 2, "invalid int value"),
    (["--temp", "hot", "-p", "hi"], 2, "invalid float value"),
    (["-t", "0", "-p", "hi"], 2, "positive integer"),
    (["-f", "/nonexistent/prompt.txt"], 2, "cannot read prompt file"),
    (["--cpu", "quantum", "--version"], 2, "unknown CPU level"),
    (["-n", "-5", "-p", "hi"], 2, "must be at least -2"),
    (["--top-p", "7", "-p", "hi"], 2, "between 0.0 and 1.0"),
    (["--min-p", "-1", "-p", "hi"], 2, "between 0.0 and 1.0"),
    (["--temp", "-2", "-p", "hi"], 2, "at least 0.0"),
    (["--temp", "nan", "-p", "hi"], 2, "finite"),
    (["--top-k", "-3", "-p", "hi"], 2, "at least 0"),
    (["--port", "99999", "--server"], 2, "between 0 and 65535"),
    (["-p", "caf\udce9"], 2, "not valid UTF-8"),
])
def test_usage_errors(args, status, message):
    args = [a.encode("utf-8", "surrogatepass").decode("unicode_escape") if "\\u" in a else a for a in args]
    r = run(*args)
    assert r.returncode == status, r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_not_a_gguf(tmp_path):
    bogus = tmp_path / "model.gguf"
    bogus.write_bytes(b"this is not a model" * 10)
    r = run("-m", str(bogus), "-p", "hi")
    assert r.returncode == 1
    assert "not a GGUF file" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_prompt_longer_than_context():
    r = run("-m", str(model_path("smollm2")), "-c", "16", "-p", "word " * 40, "-n", "4")
    assert r.returncode == 1
    assert "too long for the context" in r.stderr and "Traceback" not in r.stderr


def test_no_prompt_without_terminal_serves(tmp_path):
    """What a double-click does without a terminal: the server comes up and says where."""
    import json
    import re
    import urllib.request
    err = open(tmp_path / "stderr", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "llamafile", "-m", str(model_path("smollm2")), "--port", "0",
                             "--nobrowser", "-c", "256"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=err, text=True)
    try:
        deadline = time.time() + 90
        while not (m := re.search(r"listening on (http://\S+)", (tmp_path / "stderr").read_text())):
            assert proc.poll() is None and time.time() < deadline, (tmp_path / "stderr").read_text()
            time.sleep(0.2)
        with urllib.request.urlopen(m.group(1) + "/health", timeout=10) as r:
            assert json.load(r)["status"] == "ok"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.parametrize("record", [r for r in read_jsonl("gen_gemma3.jsonl") if margin_cut(r) >= 4],
                         ids=lambda r: r["prompt"][:30])
def test_gemma3_completion_matches_llamacpp(record):
    """Gemma 3 270M end to end from the command line (SentencePiece, the gemma3 architecture): llama.cpp's
    greedy continuation up to its first near-tie (the records whose first 4 steps are clear)."""
    import llamafile
    path = model_path("gemma3-270m")
    model = llamafile.load(path, n_ctx=256)
    assert model.tokenize(record["prompt"], add_special=True) == record["prompt_ids"]
    cut = margin_cut(record)
    r = run("-m", str(path), "-p", record["prompt"], "-n", str(len(record["ids"])), "--temp", "0", "-c", "256")
    assert r.returncode == 0, r.stderr
    decoder = model.tokenizer.decoder(continuation=True)
    expected = "".join(decoder.feed(t) for t in record["ids"][:cut]) + decoder.flush()
    assert r.stdout.startswith(record["prompt"] + expected), (r.stdout, expected)
