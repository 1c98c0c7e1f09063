"""Command line, with llama.cpp's flag names and defaults:

    llamafile -m MODEL -p PROMPT [-n N] [--temp T] ...   complete text, streaming to stdout
    llamafile -m MODEL --chat                            chat in the terminal
    llamafile -m MODEL --server                          OpenAI-compatible server and web chat
    llamafile                                            what a double-click does: the server and
                                                         a browser, plus the terminal chat on a tty
    llamafile fetch NAME                                 download a catalogue model into the cache

MODEL is a GGUF path or a catalogue name (fetched on first use); the default is
SmolLM2-135M-Instruct. Errors are one line on stderr: exit 2 for usage, 1 at run time.
The kernels are imported only after the flags are read, so --cpu can still pick their level.
"""
from __future__ import annotations

import argparse
import math
import os
import re
import sys
import time
from pathlib import Path

from weights import catalogue
from weights.fetch import FetchError, fetch
from weights.gguf import GGUFError

from . import __version__
from .chat import ChatTemplateError
from .errors import ContextOverflowError


class UsageError(Exception):
    """Bad command line: exit status 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not argparse's usage block
        raise UsageError(f"{message} (see llamafile --help)")


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text}")
    return value


def ranged(kind, low=None, high=None, what=""):
    """An argparse type: a finite number of `kind` in [low, high] (either end open when None)."""
    def parse(text: str):
        value = kind(text)  # a ValueError: argparse says "invalid int value: ..."
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, not {text}")
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = (f"between {low} and {high}" if low is not None and high is not None
                      else f"at least {low}" if low is not None else f"at most {high}")
            raise argparse.ArgumentTypeError(f"must be {bounds}{what}, not {text}")
        return value
    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="llamafile", description="Run a GGUF language model locally on the CPU.",
               epilog="llamafile fetch NAME downloads a catalogue model: "
                      + ", ".join(e.catalogue for e in catalogue.entries() if e.catalogue))
    p.add_argument("--version", action="store_true", help="show version, CPU level and exit")

    g = p.add_argument_group("common")
    g.add_argument("-m", "--model", default=catalogue.DEFAULT_MODEL, metavar="FNAME",
                   help=f"GGUF file or catalogue name (default: {catalogue.DEFAULT_MODEL})")
    g.add_argument("-t", "--threads", type=positive_int, metavar="N",
                   help="threads (default: LLAMAFILE_THREADS, NUMBA_NUM_THREADS or the physical cores)")
    g.add_argument("-c", "--ctx-size", type=ranged(int, 0), default=4096, metavar="N",
                   help="context size in tokens, 0 = from the model (default: 4096)")
    g.add_argument("--cpu", metavar="LEVEL", help="force a lower CPU level: generic, avx2, avx512, "
                   "avx512vnni, avx512bf16 (x86) or generic, dotprod (ARM); also LLAMAFILE_CPU")
    g.add_argument("--verbose", action="store_true", help="print more about what happens")

    g = p.add_argument_group("completion")
    g.add_argument("-p", "--prompt", help="prompt to complete")
    g.add_argument("-f", "--file", metavar="FNAME", help="a file containing the prompt")
    g.add_argument("-n", "--n-predict", type=ranged(int, -2, what=" (-1: no limit, -2: until the context is full)"), default=-1, metavar="N",
                   help="tokens to predict (default: -1, until the end or a full context)")
    g.add_argument("-e", "--escape", action="store_true", help="process escapes (\\n, \\r, \\t, \\', \\\", \\\\)")
    g.add_argument("--no-display-prompt", action="store_true", help="don't print the prompt")
    g.add_argument("-r", "--reverse-prompt", action="append", default=[], metavar="TEXT",
                   help="stop when this text is generated (may repeat)")
    g.add_argument("--ignore-eos", action="store_true", help="keep generating past end-of-generation tokens")

    g = p.add_argument_group("sampling")
    g.add_argument("-s", "--seed", type=int, default=-1, help="RNG seed (default: -1, random)")
    g.add_argument("--temp", type=ranged(float, 0.0), default=0.8, help="temperature, 0 = greedy (default: 0.8)")
    g.add_argument("--top-k", type=ranged(int, 0), default=40, metavar="N", help="top-k sampling, 0 = off (default: 40)")
    g.add_argument("--top-p", type=ranged(float, 0.0, 1.0), default=0.95, metavar="P", help="top-p sampling, 1.0 = off (default: 0.95)")
    g.add_argument("--min-p", type=ranged(float, 0.0, 1.0), default=0.05, metavar="P", help="min-p sampling, 0.0 = off (default: 0.05)")
    g.add_argument("--repeat-penalty", type=ranged(float, 0.0), default=1.0, metavar="N",
                   help="penalise repeated tokens, 1.0 = off (default: 1.0)")
    g.add_argument("--repeat-last-n", type=ranged(int, -1), default=64, metavar="N",
                   help="last n tokens to penalise, 0 = off, -1 = context (default: 64)")
    g.add_argument("--presence-penalty", type=ranged(float), default=0.0, metavar="N", help="presence penalty (default: 0.0)")
    g.add_argument("--frequency-penalty", type=ranged(float), default=0.0, metavar="N", help="frequency penalty (default: 0.0)")

    add_server_arguments(p)
    g = p.add_argument_group("chat")
    g.add_argument("--chat", "-cnv", "--conversation", dest="chat", action="store_true",
                   help="chat in the terminal (the default when no prompt is given and stdin is a terminal)")
    g.add_argument("-sys", "--system-prompt", "--system", dest="system", metavar="TEXT", help="system prompt for the chat")
    return p


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or positive, not {text}")
    return value


POOLINGS = ("mean", "last", "cls", "none")
# llama-server flags that are accepted and change nothing here (GPU offload, batching, memory locking, ...)
IGNORED_FLAGS = {"-ngl": 1, "--n-gpu-layers": 1, "--gpu-layers": 1, "-fa": "?", "--flash-attn": "?",
                 "-cb": 0, "--cont-batching": 0, "-nocb": 0, "--no-cont-batching": 0, "--mlock": 0, "--no-mmap": 0,
                 "-b": 1, "--batch-size": 1, "-ub": 1, "--ubatch-size": 1, "--jinja": 0, "--no-jinja": 0,
                 "--log-disable": 0, "--no-webui": 0, "--threads-http": 1, "-to": 1, "--timeout": 1,
                 "--keep": 1, "--reasoning-format": 1, "-dev": 1, "--device": 1, "-sm": 1, "--split-mode": 1,
                 "--cache-reuse": 1, "--swa-full": 0, "--kv-unified": 0, "-kvu": 0, "--no-warmup": 0}


def add_server_arguments(p) -> None:
    """The "server" flags, llama-server's names and defaults where it has them."""
    g = p.add_argument_group("server")
    g.add_argument("--server", action="store_true", help="run the OpenAI-compatible HTTP server and web chat")
    g.add_argument("--host", default="127.0.0.1",
                   help="address(es) to listen on, comma-separated (default: 127.0.0.1)")
    g.add_argument("--port", type=ranged(int, 0, 65535), default=8080,
                   help="port to listen on; if taken, the next free one (default: 8080, 0 = any)")
    g.add_argument("--api-key", metavar="KEY",
                   help="require 'Authorization: Bearer KEY' or 'X-Api-Key: KEY' (all but /, /health, /v1/models)")
    g.add_argument("--api-key-file", metavar="FNAME", help="read the API key from the first line of a file")
    g.add_argument("-a", "--alias", metavar="NAME", help="the model's name in /v1/models and replies")
    g.add_argument("--parallel", "-np", type=positive_int, default=1, metavar="N",
                   help="requests generated at the same time, each in its own context; -c is split "
                        "between them (default: 1)")
    g.add_argument("--queue", type=non_negative_int, default=16, metavar="N",
                   help="requests that may wait for a free slot; more get 503 (default: 16)")
    g.add_argument("--cors-origins", metavar="LIST",
                   help="origins a browser page may call the API from, comma-separated, * for any "
                        "(default: localhost origins only)")
    g.add_argument("--no-slots", action="store_true", help="turn off GET /slots (501)")
    g.add_argument("--slots", dest="no_slots", action="store_false", help="serve GET /slots (the default)")
    g.add_argument("--metrics", action="store_true", help="serve Prometheus metrics at GET /metrics")
    g.add_argument("--embedding", "--embeddings", dest="embedding", action="store_true",
                   help="serve /v1/embeddings and /embedding")
    g.add_argument("--pooling", choices=POOLINGS, help="how embeddings pool the tokens (default: mean)")
    g.add_argument("--slot-save-path", metavar="DIR", help="where /slots/ID?action=save|restore keeps slot caches")
    g.add_argument("--chat-template", metavar="JINJA", help="a chat template instead of the model's")
    g.add_argument("--chat-template-file", metavar="FNAME", help="a chat template file instead of the model's")
    g.add_argument("--nobrowser", action="store_true", help="don't open the web chat in a browser")
    for flag, nargs in IGNORED_FLAGS.items():
        kwargs = {"nargs": nargs} if nargs != 0 else {"action": "store_true"}
        if nargs == 1:
            kwargs = {}
        g.add_argument(flag, dest="ignored_" + flag.lstrip("-").replace("-", "_"), help=argparse.SUPPRESS,
                       **kwargs)


def version_text() -> str:
    import numba

    from kernels import cpu
    return (f"llamafile {__version__} (python {sys.version.split()[0]}, numba {numba.__version__}, "
            f"cpu {cpu.LEVEL} of {cpu.detect()}, {cpu.default_threads()} threads)")


def resolve_model(name: str) -> Path:
    """A path that exists, else a catalogue name fetched into the cache."""
    path = Path(name).expanduser()
    if path.exists():
        return path
    try:
        catalogue.lookup(name)
    except catalogue.UnknownModel:
        raise UsageError(f"model '{name}' is neither a file nor a catalogue name "
                         f"({', '.join(e.catalogue for e in catalogue.entries() if e.catalogue)})") from None
    return fetch(name, progress=True)


_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "'": "'", '"': '"', "\\": "\\", "a": "\a", "b": "\b",
            "f": "\f", "v": "\v", "0": "\0", "?": "?"}


def process_escapes(text: str) -> str:
    """llama.cpp's -e: \\n, \\t, ... and \\xHH; anything else stays as written."""
    def one(m: re.Match) -> str:
        s = m.group(1)
        if s[0] == "x":
            return chr(int(s[1:], 16)) if len(s) == 3 else m.group(0)
        return _ESCAPES.get(s, m.group(0))
    return re.sub(r"\\(x[0-9a-fA-F]{2}|.)", one, text, flags=re.S)


def read_prompt(args) -> str | None:
    if args.file is not None:
        try:
            prompt = Path(args.file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"cannot read prompt file {args.file}: {getattr(e, 'strerror', None) or e}") from None
    else:
        prompt = args.prompt
        if prompt is not None:  # argv bytes that are not UTF-8 arrive as lone surrogates
            try:
                prompt.encode("utf-8")
            except UnicodeEncodeError as e:
                raise UsageError(f"the prompt (-p) is not valid UTF-8 (at character {e.start + 1})") from None
    if prompt is not None and args.escape:
        prompt = process_escapes(prompt)
    return prompt


def sampler_from(args):
    from .sampling import Sampler, SamplingParams
    return Sampler(SamplingParams(
        temperature=args.temp, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
        repeat_penalty=args.repeat_penalty, repeat_last_n=args.repeat_last_n,
        presence_penalty=args.presence_penalty, frequency_penalty=args.frequency_penalty,
        seed=None if args.seed < 0 else args.seed))


def banner(model, threads: int) -> str:
    from kernels import cpu
    c = model.config
    return (f"llamafile {__version__}: {c.name} ({c.arch}, {model.n_params / 1e6:.0f}M parameters, "
            f"{model.weight_format}), context {model.n_ctx}, {threads} thread{'s' * (threads != 1)}, cpu {cpu.LEVEL}")


class Timer:
    """Prompt and generation timings, printed the way llama.cpp prints them. Loading (the model and
    the warm-up that compiles or loads the kernels) is its own line, never part of prompt evaluation."""

    def __init__(self, load_ms: float = 0.0):
        self.start = time.perf_counter()
        self.first = None
        self.n_prompt = self.n_gen = 0
        self.load_ms = load_ms

    def token(self):
        if self.first is None:
            self.first = time.perf_counter()
        self.n_gen += 1

    def report(self) -> str:
        end = time.perf_counter()
        first = self.first or end
        lines = [f"llamafile: {'load time':>16} = {self.load_ms:10.2f} ms"]
        for label, ms, n, unit in (("prompt eval time", (first - self.start) * 1e3, self.n_prompt, "tokens"),
                                   ("eval time", (end - first) * 1e3, max(self.n_gen - 1, 0), "runs")):
            per = ms / n if n else 0.0
            rate = 1e3 * n / ms if ms > 0 else 0.0
            lines.append(f"llamafile: {label:>16} = {ms:10.2f} ms / {n:5d} {unit:6} "
                         f"({per:8.2f} ms per token, {rate:8.2f} tokens per second)")
        return "\n".join(lines)


def complete(model, args, prompt: str, started: float | None = None) -> None:
    """Complete the prompt to stdout, timings to stderr; started: when loading began (perf_counter)."""
    from .generate import TextGeneration
    from .progress import compile_notice

    ids = model.tokenize(prompt, add_special=True, parse_special=True)
    if not ids:
        raise UsageError("the prompt is empty")
    if len(ids) >= model.n_ctx:
        raise ContextOverflowError(f"the prompt is {len(ids)} tokens, too long for the context of "
                                   f"{model.n_ctx} (use a larger -c)")
    sampler = sampler_from(args)
    with compile_notice():  # the kernels this prompt's length takes: a first run compiles them here, said so
        model.warmup(len(ids), sampler.params)
    out = sys.stdout
    if not args.no_display_prompt:
        out.write(prompt)
        out.flush()
    room = model.n_ctx - len(ids)
    max_tokens = room if args.n_predict < 0 else min(args.n_predict, room)
    timer = Timer(load_ms=(time.perf_counter() - started) * 1e3 if started is not None else 0.0)
    timer.n_prompt = len(ids)
    reply = TextGeneration(model, ids, sampler, max_tokens, stops=args.reverse_prompt,
                           ignore_eos=args.ignore_eos)
    while not reply.done:
        piece = reply.step()
        if reply.last_token is not None:
            timer.token()
        out.write(piece)
        out.flush()
    out.write(reply.stopping_word + "\n")  # llama.cpp prints the reverse prompt that stopped it
    out.flush()
    print(timer.report(), file=sys.stderr)


def load_model(args):
    from kernels import cpu

    from .model import load
    threads = cpu.set_threads(args.threads)
    model = load(resolve_model(args.model), n_ctx=args.ctx_size or None)
    return model, threads


def run(argv: list[str]) -> int:
    if argv[:1] == ["fetch"]:
        return fetch_main(argv[1:])
    args = build_parser().parse_args(argv)
    if args.ctx_size < 0:
        raise UsageError(f"--ctx-size must be 0 or positive, not {args.ctx_size}")
    if args.cpu:
        os.environ["LLAMAFILE_CPU"] = args.cpu
    configure_cpu()
    if args.version:
        print(version_text())
        return 0
    prompt = read_prompt(args)
    if args.server or (prompt is None and not args.chat and not sys.stdin.isatty()):
        return run_server(args)
    if prompt is None and not args.chat:
        return chat_with_server(args)
    started = time.perf_counter()
    model, threads = load_model(args)
    if prompt is None:
        return chat_in_terminal(model, threads, args)
    if args.verbose:
        print(banner(model, threads), file=sys.stderr)
    complete(model, args, prompt, started)
    return 0


def chat_in_terminal(model, threads: int, args) -> int:
    from .progress import compile_notice
    from .repl import chat
    print(banner(model, threads), file=sys.stderr)
    sampler = sampler_from(args)
    with compile_notice():  # every prompt path, before the first message: Ctrl-C must never land in a first compile
        model.warmup(sampling=sampler.params)
    chat(model, sampler, system=args.system, max_reply=args.n_predict)
    return 0


def check_server_args(args) -> None:
    """The server's flags that need more than argparse's checks."""
    if getattr(args, "api_key_file", None):
        try:
            args.api_key = Path(args.api_key_file).read_text(encoding="utf-8").splitlines()[0].strip()
        except (OSError, UnicodeDecodeError, IndexError) as e:
            raise UsageError(f"cannot read the API key from {args.api_key_file}: {e}") from None
    if getattr(args, "chat_template_file", None):
        try:
            args.chat_template = Path(args.chat_template_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"cannot read the chat template {args.chat_template_file}: {e}") from None


def run_server(args) -> int:
    """--server, or no prompt and no terminal (a double-click): the server in the foreground."""
    from kernels import cpu

    from . import server
    check_server_args(args)
    cpu.set_threads(args.threads)
    return server.serve(args, resolve_model(args.model))


def chat_with_server(args) -> int:
    """No prompt on a terminal, like llamafile: the server (and browser) in the background, the
    terminal chat in the foreground; leaving the chat stops both."""
    from . import server
    check_server_args(args)
    path = resolve_model(args.model)
    url, stop = server.start_in_thread(args, path)
    print(f"llamafile: web chat at {url} (the terminal chat below works too)", file=sys.stderr)
    try:
        model, threads = load_model(args)
        return chat_in_terminal(model, threads, args)
    finally:
        stop()


def configure_cpu() -> None:
    try:
        import kernels  # noqa: F401  (fixes the level before numba compiles anything)
    except ValueError as e:  # kernels.cpu.CPULevelError, raised while the package imports
        raise UsageError(str(e)) from None


def fetch_main(argv: list[str]) -> int:
    p = Parser(prog="llamafile fetch", description="Download a catalogue model into the cache.")
    p.add_argument("name", nargs="?", default=catalogue.DEFAULT_MODEL,
                   help=f"catalogue name: {', '.join(e.catalogue for e in catalogue.entries() if e.catalogue)}")
    args = p.parse_args(argv)
    print(fetch(args.name, progress=True))
    return 0


def embedded_defaults(argv: list[str]) -> list[str]:
    """In the one-file executable (packaging/build.py): its built-in default arguments (llamafile's
    .args: the user's arguments go in place of `...`, else after them) and its built-in model as
    the default -m (a later -m still wins). Anywhere else, argv unchanged."""
    from weights import embedded
    if not embedded.frozen() or argv[:1] == ["fetch"]:
        return argv
    defaults = embedded.embedded_args()
    if defaults is not None:
        argv = embedded.merge_args(defaults, argv)
    model = embedded.embedded_model()
    return ["-m", model[0], *argv] if model is not None else argv


def main(argv: list[str] | None = None) -> int:
    argv = embedded_defaults(sys.argv[1:] if argv is None else argv)
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
