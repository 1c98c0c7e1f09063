"""The terminal chat: type a message, watch the reply stream in.

Enter sends; a line ending in a backslash (or Alt-Enter) continues on the next line.
Ctrl-C stops a reply (and clears a half-typed line); Ctrl-D or /exit leaves; /reset
starts a new conversation. Up and down walk through what you typed before.
"""
from __future__ import annotations

import sys

from .chat import ChatSession
from .errors import ContextOverflowError

HELP = "/exit or Ctrl-D to leave, /reset to start over, Ctrl-C stops a reply, end a line with \\ for more lines"


def terminal_reader():
    """Read one message with prompt_toolkit: history and multi-line editing."""
    from prompt_toolkit import PromptSession
    from prompt_toolkit.history import InMemoryHistory
    from prompt_toolkit.key_binding import KeyBindings

    keys = KeyBindings()

    @keys.add("enter")
    def _(event):
        buffer = event.current_buffer
        if buffer.text.endswith("\\"):
            buffer.delete_before_cursor(1)
            buffer.insert_text("\n")
        else:
            buffer.validate_and_handle()

    @keys.add("escape", "enter")
    def _(event):
        event.current_buffer.insert_text("\n")

    session = PromptSession(history=InMemoryHistory(), key_bindings=keys, multiline=True,
                            prompt_continuation=lambda width, line, wrap: "." * (width - 1) + " ")
    return lambda: session.prompt("> ")


def line_reader():
    """Without a terminal (piped input): one message per line."""
    def read():
        line = sys.stdin.readline()
        if not line:
            raise EOFError
        return line.rstrip("\n")
    return read


def chat(model, sampler, *, system: str | None = None, max_reply: int = -1, out=None) -> None:
    out = out or sys.stdout
    session = ChatSession(model, sampler, system=system, max_reply=max_reply,
                          notice=lambda message: print(f"({message})", file=sys.stderr))
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    read = terminal_reader() if interactive else line_reader()
    if interactive:
        print(HELP, file=sys.stderr)
    while True:
        try:
            text = read()
        except KeyboardInterrupt:
            continue
        except EOFError:
            break
        command = text.strip()
        if command in ("/exit", "/quit", "/bye"):
            break
        if command == "/reset":
            session.reset()
            print("(conversation cleared)", file=sys.stderr)
            continue
        if not command:
            continue
        stream_reply(session, text, out)


def stream_reply(session: ChatSession, text: str, out) -> None:
    reply = session.reply(text)
    try:
        for piece in reply:
            out.write(piece)
            out.flush()
    except KeyboardInterrupt:
        reply.close()
        out.write(" [stopped]")
    except ContextOverflowError as e:
        print(f"llamafile: {e}", file=sys.stderr)
    out.write("\n")
    out.flush()
