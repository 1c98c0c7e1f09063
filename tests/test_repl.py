"""The terminal chat driven through a pseudo-terminal, keystroke by keystroke."""
from __future__ import annotations

import sys

import pexpect

from conftest import model_path

PROMPT = r"\x1b\[0m>"  # prompt_toolkit draws the "> " prompt after resetting attributes


def test_chat_repl_session():
    child = pexpect.spawn(sys.executable, ["-m", "llamafile", "-m", str(model_path("smollm2")), "--temp", "0",
                                           "-n", "400", "--ignore-eos"],
                          encoding="utf-8", timeout=120, dimensions=(40, 200))
    try:
        child.expect("SmolLM|Smollm2")          # the banner names the model
        child.expect(PROMPT)
        child.sendline("Write a Python function that reverses a string.")
        child.expect("def reverse_string")       # the reply streams in (llama.cpp's greedy reply)
        child.expect(PROMPT)               # and ends

        child.sendline("Write a very long story about a dragon.")
        child.expect_exact("\x1b[?2004l")         # the line is accepted (bracketed paste off)...
        child.expect(r"\w+ \w+ \w+ \w+")         # ...some of the reply has arrived...
        child.sendintr()                         # ...Ctrl-C stops it without leaving
        child.expect_exact("[stopped]")
        child.expect(PROMPT)

        child.sendline("/reset")
        child.expect_exact("conversation cleared")
        child.expect(PROMPT)
        child.sendline("Say hello.")
        child.expect(r"\w+")
        child.expect(PROMPT)

        child.sendline("/exit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0, child.before


def test_chat_reads_piped_lines(tmp_path):
    import subprocess
    r = subprocess.run([sys.executable, "-m", "llamafile", "-m", str(model_path("smollm2")), "--chat", "--temp", "0",
                        "-n", "24"], input="Write a Python function that reverses a string.\n/exit\n", capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "def reverse_string" in r.stdout


def test_bare_llamafile_on_a_terminal_serves_and_chats():
    """What a double-click does in a terminal, like llamafile: the web server in the background
    (the browser would open; --nobrowser here) and the terminal chat in the foreground."""
    import json
    import time
    import urllib.request

    child = pexpect.spawn(sys.executable, ["-m", "llamafile", "-m", str(model_path("smollm2")), "--temp", "0",
                                           "--nobrowser", "--port", "0", "-n", "30"],
                          encoding="utf-8", timeout=120, dimensions=(40, 200))
    try:
        child.expect(r"web chat at (http://\S+)")
        url = child.match.group(1)
        child.expect(PROMPT)
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=5) as r:
                    assert json.load(r)["status"] == "ok"
                    break
            except OSError:  # 503 while the server's copy of the model loads
                assert time.time() < deadline
                time.sleep(0.5)
        child.sendline("Write a Python function that reverses a string.")
        child.expect("def reverse_string")
        child.expect(PROMPT)
        child.sendline("/exit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0
