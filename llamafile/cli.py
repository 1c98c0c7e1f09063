"""Command line, with llama.cpp's flag names:

    llamafile -m MODEL -p PROMPT [-n N] [--temp T] ...   complete text, streaming to stdout
    llamafile -m MODEL --chat                            chat in the terminal
    llamafile fetch NAME                                 download a catalogue model into the cache

MODEL is a GGUF path or a catalogue name (fetched on first use); the default is
SmolLM2-135M-Instruct. Errors are one line on stderr: exit 2 for usage, 1 at run time.
"""
from __future__ import annotations

import argparse
import codecs
import sys
import time
from pathlib import Path

from weights import catalogue
from weights.fetch import FetchError, fetch
from weights.gguf import GGUFError

from . import __version__
from .chat import ChatTemplateError, render_chat
from .generate import generate
from .model import ContextOverflowError, Model, load
from .sampling import Sampler


class UsageError(Exception):
    """Bad command line: exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llamafile", description="Run a GGUF language model locally on the CPU.",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"llamafile {__version__}")
    g = p.add_argument_group("model and context")
    g.add_argument("-m", "--model", default=catalogue.DEFAULT_MODEL,
                   help=f"GGUF file or catalogue name (default: {catalogue.DEFAULT_MODEL})")
    g.add_argument("-c", "--ctx-size", type=int, default=4096, metavar="N", help="context size in tokens (default: 4096)")
    g.add_argument("--verbose", action="store_true", help="print more about what happens")
    g = p.add_argument_group("prompt")
    g.add_argument("-p", "--prompt", help="prompt to complete")
    g.add_argument("-f", "--file", help="read the prompt from a file")
    g.add_argument("-e", "--escape", action="store_true", help="process escapes (\\n, \\t, ...) in the prompt")
    g.add_argument("--no-display-prompt", action="store_true", help="do not echo the prompt")
    g.add_argument("--chat", action="store_true", help="chat in the terminal")
    g.add_argument("-sys", "--system", help="system message for the chat")
    g = p.add_argument_group("generation")
    g.add_argument("-n", "--n-predict", type=int, default=-1, metavar="N", help="tokens to generate (-1: until the end)")
    g.add_argument("-s", "--seed", type=int, default=-1, help="random seed (-1: random)")
    g.add_argument("--temp", type=float, default=0.8, help="temperature; 0 is greedy (default: 0.8)")
    g.add_argument("--ignore-eos", action="store_true", help="keep generating past end-of-generation tokens")
    return p


def resolve_model(name: str, verbose: bool = False) -> Path:
    """A path that exists, else a catalogue name fetched into the cache."""
    path = Path(name).expanduser()
    if path.exists():
        return path
    try:
        catalogue.lookup(name)
    except catalogue.UnknownModel:
        raise UsageError(f"model '{name}' is neither a file nor a catalogue name "
                         f"({', '.join(e.catalogue for e in catalogue.entries())})") from None
    return fetch(name, progress=True)


def read_prompt(args) -> str | None:
    if args.file is not None:
        try:
            return Path(args.file).read_text(encoding="utf-8")
        except OSError as e:
            raise UsageError(f"cannot read prompt file: {e}") from None
    if args.prompt is not None and args.escape:
        return codecs.decode(args.prompt.encode("latin-1", "backslashreplace"), "unicode_escape")
    return args.prompt


def stream(model: Model, ids, sampler, max_tokens: int, out, keep_cache: bool = False, ignore_eos: bool = False) -> int:
    """Write generated text as it comes (whole UTF-8 characters only); returns the tokens made."""
    decoder = model.tokenizer.decoder()
    n = 0
    for token in generate(model, ids, sampler, max_tokens, keep_cache=keep_cache):
        n += 1
        if model.is_eog(token) and not ignore_eos:
            break
        out.write(decoder.feed(token))
        out.flush()
    out.write(decoder.flush())
    out.flush()
    return n


def complete(model: Model, args, prompt: str) -> None:
    ids = model.tokenize(prompt, add_special=True, parse_special=True)
    if not ids:
        raise UsageError("the prompt is empty")
    if len(ids) >= model.n_ctx:
        raise ContextOverflowError(f"prompt is {len(ids)} tokens, too long for the context of {model.n_ctx} (use a larger -c)")
    if not args.no_display_prompt:
        sys.stdout.write(prompt)
    max_tokens = model.n_ctx - len(ids) if args.n_predict < 0 else min(args.n_predict, model.n_ctx - len(ids))
    t0 = time.perf_counter()
    n = stream(model, ids, sampler_from(args), max_tokens, sys.stdout, ignore_eos=args.ignore_eos)
    elapsed = time.perf_counter() - t0
    sys.stdout.write("\n")
    print(f"\nllamafile: {len(ids)} prompt + {n} generated tokens in {elapsed:.2f} s "
          f"({(len(ids) + n) / max(elapsed, 1e-9):.1f} tok/s)", file=sys.stderr)


def chat(model: Model, args) -> None:
    """A plain terminal chat: one line per turn, Ctrl-D or /exit to leave."""
    template = model.gguf.get("tokenizer.chat_template")
    tok = model.tokenizer
    messages = [{"role": "system", "content": args.system}] if args.system else []
    sampler = sampler_from(args)
    print(f"chatting with {model.config.name}; /exit or Ctrl-D to leave", file=sys.stderr)
    while True:
        try:
            line = input("> ")
        except EOFError:
            print(file=sys.stderr)
            return
        if line.strip() == "/exit":
            return
        messages.append({"role": "user", "content": line})
        prompt = render_chat(template, messages, bos_token=tok.token_text(tok.bos_id) if tok.bos_id is not None else "",
                             eos_token=tok.token_text(tok.eos_id) if tok.eos_id is not None else "")
        ids = model.tokenize(prompt, add_special=True, parse_special=True)
        reply = []

        class Collect:
            def write(self, s):
                reply.append(s)
                sys.stdout.write(s)

            def flush(self):
                sys.stdout.flush()

        stream(model, ids, sampler, model.n_ctx - len(ids), Collect())
        print()
        messages.append({"role": "assistant", "content": "".join(reply)})


def sampler_from(args) -> Sampler:
    return Sampler(temperature=args.temp, seed=None if args.seed < 0 else args.seed)


def fetch_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="llamafile fetch", description="Download a catalogue model into the cache.")
    p.add_argument("name", nargs="?", default=catalogue.DEFAULT_MODEL,
                   help=f"catalogue name: {', '.join(e.catalogue for e in catalogue.entries())}")
    args = p.parse_args(argv)
    print(fetch(args.name, progress=True))
    return 0


def run(argv: list[str]) -> int:
    if argv[:1] == ["fetch"]:
        return fetch_main(argv[1:])
    args = build_parser().parse_args(argv)
    if args.ctx_size <= 0:
        raise UsageError(f"--ctx-size must be positive, not {args.ctx_size}")
    prompt = read_prompt(args)
    model = load(resolve_model(args.model, args.verbose), n_ctx=args.ctx_size)
    if args.verbose:
        print(f"llamafile: {model.config}", file=sys.stderr)
    if prompt is None or args.chat:
        chat(model, args)
    else:
        complete(model, args, prompt)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        return run(argv)
    except UsageError as e:
        print(f"llamafile: error: {e}", file=sys.stderr)
        return 2
    except (GGUFError, FetchError, ContextOverflowError, ChatTemplateError, catalogue.UnknownModel, OSError) as e:
        print(f"llamafile: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
