"""The terminal chat driven through a pseudo-terminal, keystroke by keystroke."""
from __future__ import annotations

import sys

import pexpect

from conftest import model_path

PROMPT = r"\x1b\[0m>"  # prompt_toolkit draws the "> " prompt after resetting attributes
# Each expect below waits for something the chat will print, whose cost the test bounds (-n 2000), not for a
# clock: this is only how long a stuck chat may take to fail. A loaded 2-core machine decodes SmolLM2 at
# a few tokens a second, and a fresh clone compiles the kernels first.
WAIT = 600


def test_chat_repl_session():
    # no --ignore-eos: the first reply ends by itself (~80 tokens); the story runs to the -n limit, so a
    # Ctrl-C sent once it streams lands in the middle of it: 2000 tokens, 10 s or more, since 400 (2 s
    # here) once ran out before a test process on a busy machine got to send it
    child = pexpect.spawn(sys.executable, ["-m", "llamafile", "-m", str(model_path("smollm2")), "--temp", "0",
                                           "-n", "2000"],
                          encoding="utf-8", timeout=WAIT, dimensions=(40, 200))
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
        stopped = child.expect_exact(["[stopped]", "\x1b[0m>"])
        assert stopped == 0, "the reply ended before the Ctrl-C stopped it: " + child.before[-300:]
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
                          encoding="utf-8", timeout=WAIT, dimensions=(40, 200))
    try:
        child.expect(r"web chat at (http://\S+)")
        url = child.match.group(1)
        child.expect(PROMPT)
        deadline = time.time() + WAIT
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
