"""`llamafile --server`: an OpenAI-compatible HTTP server and a web chat, on FastAPI + uvicorn.

    GET  /                      the web chat (llamafile/web/index.html)
    GET  /health                503 {"status": "loading model"} while loading, then 200 {"status": "ok"}
    GET  /v1/models             the one model this server runs
    POST /v1/chat/completions   OpenAI chat completion, streamed (server-sent events) or not
    POST /v1/completions        OpenAI text completion, streamed or not
    POST /completion            llama.cpp's native completion, streamed or not
    POST /tokenize, /detokenize text <-> token ids
    GET  /slots                 what each slot is doing

One worker thread owns the model: it loads it, then runs all generation. `--parallel N` gives N
slots, N contexts sharing the memory-mapped weights; each turn of the worker advances every
busy slot by one token, so N replies stream together. Requests beyond the slots wait in a
queue of `--queue` places; past it they get 503. The HTTP handlers (asyncio) hand the worker a
Job and receive its Events through an asyncio queue; a client that goes away cancels its job,
which frees the slot at the worker's next turn.
"""
import asyncio
import hmac
import json
import os
import secrets
import socket
import sys
import threading
import time
import webbrowser
from collections import deque
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import AsyncIterator, Callable

from .chat import ChatTemplateError, render_chat
from .sampling import Sampler, SamplingParams

MAX_BODY = 1 << 20          # bytes of a request body; more is 413
PORT_ATTEMPTS = 100         # ports tried after a taken one
PUBLIC_PATHS = frozenset({"/", "/index.html", "/health", "/favicon.ico"})  # no API key needed
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


# --- command line -----------------------------------------------------------------------

def add_arguments(parser) -> None:
    """The "server" argument group; the common and sampling flags come from llamafile.cli."""
    g = parser.add_argument_group("server")
    g.add_argument("--server", action="store_true", help="run the OpenAI-compatible HTTP server and web chat")
    g.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    g.add_argument("--port", type=int, default=8080,
                   help="port to listen on; if taken, the next free one (default: 8080, 0 = any)")
    g.add_argument("--api-key", metavar="KEY", help="require 'Authorization: Bearer KEY' (all but /health and /)")
    g.add_argument("--parallel", "-np", type=_positive, default=1, metavar="N",
                   help="requests generated at the same time, each in its own context (default: 1)")
    g.add_argument("--queue", type=_non_negative, default=16, metavar="N",
                   help="requests that may wait for a free slot; more get 503 (default: 16)")
    g.add_argument("--nobrowser", action="store_true", help="don't open the web chat in a browser")


def _positive(text: str) -> int:
    import argparse
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text}")
    return value


def _non_negative(text: str) -> int:
    import argparse
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or positive, not {text}")
    return value


def default_sampling(args) -> SamplingParams:
    """The CLI's sampling flags, which requests override field by field."""
    seed = getattr(args, "seed", -1)
    return SamplingParams(
        temperature=getattr(args, "temp", 0.8), top_k=getattr(args, "top_k", 40),
        top_p=getattr(args, "top_p", 0.95), min_p=getattr(args, "min_p", 0.05),
        repeat_penalty=getattr(args, "repeat_penalty", 1.0), repeat_last_n=getattr(args, "repeat_last_n", 64),
        presence_penalty=getattr(args, "presence_penalty", 0.0),
        frequency_penalty=getattr(args, "frequency_penalty", 0.0),
        seed=None if seed is None or seed < 0 else seed)


def model_file_name(path: str | os.PathLike) -> str:
    """The model's file name; for an executable that carries one, the name it was built with."""
    from weights.embedded import read_trailer
    trailer = read_trailer(path)
    return trailer.name if trailer is not None and trailer.name else Path(path).name


def model_id(path: str | os.PathLike) -> str:
    """The name /v1/models reports: the catalogue name, else the file name without .gguf."""
    from weights import catalogue
    name = model_file_name(path)
    try:
        return catalogue.lookup(name).catalogue or Path(name).stem
    except catalogue.UnknownModel:
        return Path(name).stem


def model_aliases(path: str | os.PathLike) -> set[str]:
    """Every name a request's "model" may give for this model (lower case)."""
    from weights import catalogue
    p = Path(model_file_name(path))
    names = {model_id(path), p.name, p.stem, Path(path).name}
    try:
        e = catalogue.lookup(p.name)
        names |= {e.name, e.file, e.catalogue or e.name}
    except catalogue.UnknownModel:
        pass
    return {n.lower() for n in names}


# --- errors -------------------------------------------------------------------------------

class APIError(Exception):
    """An error answered as OpenAI does: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, code: str | None = None,
                 type: str = "invalid_request_error", param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.type, self.param = status, message, code, type, param

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def invalid(message: str, param: str | None = None, code: str = "invalid_value") -> APIError:
    return APIError(400, message, code=code, param=param)


# --- request fields -------------------------------------------------------------------------

def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_integer(v) -> bool:
    return (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer())


def _typed(body: dict, name: str, is_kind, kind: str):
    """body[name], None when absent or null; a 400 when it is not of the kind asked for."""
    v = body.get(name)
    if v is not None and not is_kind(v):
        raise invalid(f"'{name}' must be {kind}, not {json.dumps(v)[:40]}", name, "invalid_type")
    return v


def get_number(body: dict, name: str, default, lo: float | None = None, hi: float | None = None):
    """body[name] as a float in [lo, hi]; default when absent or null."""
    v = _typed(body, name, _is_number, "a number")
    if v is None:
        return default
    if not ((lo is None or v >= lo) and (hi is None or v <= hi)):  # also rejects NaN
        raise invalid(f"'{name}' must be between {lo} and {hi}, not {v}", name)
    return float(v)


def get_integer(body: dict, name: str, default, lo: int | None = None, hi: int | None = None):
    """body[name] as an int in [lo, hi]; default when absent or null."""
    v = _typed(body, name, _is_integer, "an integer")
    if v is None:
        return default
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        bound = f"at least {lo}" if hi is None else f"between {lo} and {hi}"
        raise invalid(f"'{name}' must be {bound}, not {int(v)}", name)
    return int(v)


def get_bool(body: dict, name: str, default: bool) -> bool:
    v = _typed(body, name, lambda x: isinstance(x, bool), "true or false")
    return default if v is None else v


def get_stops(body: dict) -> list[str]:
    """"stop": a string or a list of strings (llama.cpp's native "stop" is a list too)."""
    v = body.get("stop")
    if v is None:
        return []
    if isinstance(v, str):
        return [v] if v else []
    if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
        raise invalid("'stop' must be a string or a list of strings", "stop", "invalid_type")
    if len(v) > 16:
        raise invalid("'stop' holds at most 16 strings", "stop")
    return [s for s in v if s]


def get_max_tokens(body: dict) -> int | None:
    """The reply's token limit; None = as many as the context holds.

    OpenAI's max_tokens / max_completion_tokens must be >= 1; llama.cpp's n_predict may be 0,
    and -1 means no limit."""
    for name in ("max_completion_tokens", "max_tokens"):
        if body.get(name) is not None:
            return get_integer(body, name, None, lo=1)
    if body.get("n_predict") is not None:
        n = get_integer(body, "n_predict", None, lo=-1)
        return None if n < 0 else n
    return None


def get_sampling(body: dict, defaults: SamplingParams, n_ctx: int, n_vocab: int,
                 max_temperature: float) -> SamplingParams:
    """The request's sampling fields over the server's defaults."""
    d = defaults
    seed = get_integer(body, "seed", d.seed)
    repeat_last_n = get_integer(body, "repeat_last_n", d.repeat_last_n, lo=-1)
    return SamplingParams(
        temperature=get_number(body, "temperature", d.temperature, 0.0, max_temperature),
        top_k=get_integer(body, "top_k", d.top_k, lo=0),
        top_p=get_number(body, "top_p", d.top_p, 0.0, 1.0),
        min_p=get_number(body, "min_p", d.min_p, 0.0, 1.0),
        repeat_penalty=get_number(body, "repeat_penalty", d.repeat_penalty, 0.0, None),
        repeat_last_n=n_ctx if repeat_last_n < 0 else repeat_last_n,
        presence_penalty=get_number(body, "presence_penalty", d.presence_penalty, -2.0, 2.0),
        frequency_penalty=get_number(body, "frequency_penalty", d.frequency_penalty, -2.0, 2.0),
        seed=None if seed is None or seed < 0 else seed,
        logit_bias=get_logit_bias(body, n_vocab))


def get_logit_bias(body: dict, n_vocab: int) -> dict[int, float]:
    """OpenAI's {"token id": bias}, bias in [-100, 100]; -100 bans the token."""
    v = body.get("logit_bias")
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise invalid("'logit_bias' must be an object mapping token ids to numbers", "logit_bias", "invalid_type")
    out = {}
    for key, bias in v.items():
        if not (key.isdigit() and int(key) < n_vocab) or not _is_number(bias) or not -100 <= bias <= 100:
            raise invalid(f"'logit_bias' entry {key!r}: {bias!r} must map a token id below {n_vocab} "
                          "to a number in [-100, 100]", "logit_bias")
        out[int(key)] = -float("inf") if bias <= -100 else float(bias)
    return out


def get_messages(body: dict) -> list[dict]:
    """"messages" checked and reduced to [{"role", "content": str}] for the chat template."""
    v = body.get("messages")
    if v is None:
        raise invalid("'messages' is required", "messages", "missing_required_parameter")
    if not isinstance(v, list):
        raise invalid("'messages' must be an array of messages", "messages", "invalid_type")
    if not v:
        raise invalid("'messages' must not be empty", "messages")
    return [get_message(m, i) for i, m in enumerate(v)]


def get_message(m, i: int) -> dict:
    where = f"messages[{i}]"
    if not isinstance(m, dict):
        raise invalid(f"{where} must be an object with 'role' and 'content'", where, "invalid_type")
    role = m.get("role")
    if not isinstance(role, str):
        raise invalid(f"{where}.role must be a string", f"{where}.role", "invalid_type")
    if role not in ROLES:
        raise invalid(f"{where}.role '{role[:40]}' is not one of {', '.join(ROLES)}", f"{where}.role")
    content = m.get("content")
    if content is None and role == "assistant":
        content = ""
    return {"role": ROLES[role], "content": message_text(content, f"{where}.content")}


def message_text(content, where: str) -> str:
    """A message's content: a string, or OpenAI's list of {"type": "text", "text": ...} parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise invalid(f"{where}: only parts of the form {{\"type\": \"text\", \"text\": \"...\"}} "
                              "are supported", where, "invalid_type")
            texts.append(part["text"])
        return "".join(texts)
    if content is None:
        raise invalid(f"{where} is required", where, "missing_required_parameter")
    raise invalid(f"{where} must be a string or a list of text parts", where, "invalid_type")


# --- generation: jobs, stop strings, the worker ----------------------------------------------

@dataclass
class Result:
    """How a job ended."""
    finish_reason: str                 # "stop" (end of generation or a stop string) or "length"
    n_prompt: int
    n_generated: int
    stopping_word: str = ""
    eog: bool = False                  # ended by an end-of-generation token
    n_cached: int = 0                  # prompt tokens the slot already held
    prompt_ms: float = 0.0
    predicted_ms: float = 0.0
    slot: int = 0


@dataclass
class Event:
    kind: str                          # "text", "done" or "error"
    text: str = ""
    result: Result | None = None
    error: Exception | None = None


@dataclass
class Job:
    """One request for the worker: what to generate and where its events go."""
    prompt_ids: list[int]
    params: SamplingParams
    max_tokens: int
    stops: list[str] = field(default_factory=list)
    ignore_eos: bool = False
    reuse_prefix: bool = True
    emit: Callable[[Event], None] = lambda event: None   # called on the worker thread
    cancelled: threading.Event = field(default_factory=threading.Event)


class StopText:
    """The reply's text, held back while its end could be the start of a stop string.

    add(piece) -> (text that is safe to send now, the stop string found or None); the text
    from a stop string on is dropped.
    """

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.text, self.sent = "", 0

    def add(self, piece: str) -> tuple[str, str | None]:
        before = len(self.text)
        self.text += piece
        found, at = None, len(self.text)
        for s in self.stops:
            i = self.text.find(s, max(0, before - len(s) + 1))
            if 0 <= i < at:
                found, at = s, i
        if found is not None:
            self.text = self.text[:at]
            return self._send(len(self.text)), found
        return self._send(len(self.text) - self._held()), None

    def flush(self) -> str:
        return self._send(len(self.text))

    def _held(self) -> int:
        """Length of the longest end of the text that begins some stop string."""
        held = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(self.text)), held, -1):
                if self.text.endswith(s[:k]):
                    held = k
                    break
        return held

    def _send(self, upto: int) -> str:
        out = self.text[self.sent:upto]
        self.sent = max(self.sent, upto)
        return out


class Slot:
    """One context and the job it runs, with that job's decoding state."""

    def __init__(self, index: int, model):
        self.index, self.model = index, model
        self.job: Job | None = None

    def start(self, job: Job) -> None:
        from .generate import generate
        self.job = job
        reused = _common_prefix(self.model.tokens, job.prompt_ids) if job.reuse_prefix else 0
        self.n_cached = min(reused, len(job.prompt_ids) - 1)  # the last prompt token is always evaluated
        self.gen = generate(self.model, job.prompt_ids, Sampler(job.params), job.max_tokens,
                            stop_at_eog=not job.ignore_eos, reuse_prefix=job.reuse_prefix)
        self.decoder = self.model.tokenizer.decoder(continuation=True)
        self.stop_text = StopText(job.stops)
        self.n_generated = 0
        self.t_start, self.t_first = time.perf_counter(), None

    def step(self) -> None:
        """Sample one token and send what it adds; ends the job when it is complete."""
        job = self.job
        try:
            token = next(self.gen)
        except StopIteration:  # the context is full
            return self.finish("length")
        if self.t_first is None:
            self.t_first = time.perf_counter()
        if self.model.is_eog(token) and not job.ignore_eos:
            return self.finish("stop", eog=True)
        self.n_generated += 1
        text, stop = self.stop_text.add(self.decoder.feed(token))
        if text:
            job.emit(Event("text", text))
        if stop is not None:
            return self.finish("stop", stopping_word=stop, flush=False)
        if self.n_generated >= job.max_tokens or self.model.n_past >= self.model.n_ctx:
            return self.finish("length")

    def finish(self, reason: str, stopping_word: str = "", eog: bool = False, flush: bool = True) -> None:
        job, now = self.job, time.perf_counter()
        if flush:
            text, stop = self.stop_text.add(self.decoder.flush())
            text += "" if stop else self.stop_text.flush()
            if text:
                job.emit(Event("text", text))
            if stop:
                reason, stopping_word = "stop", stop
        first = self.t_first or now
        job.emit(Event("done", result=Result(
            finish_reason=reason, n_prompt=len(job.prompt_ids), n_generated=self.n_generated,
            stopping_word=stopping_word, eog=eog, n_cached=self.n_cached, slot=self.index,
            prompt_ms=(first - self.t_start) * 1e3, predicted_ms=(now - first) * 1e3)))
        self.release()

    def release(self) -> None:
        self.gen.close()
        self.job = None


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class QueueFull(APIError):
    def __init__(self, waiting: int):
        super().__init__(503, f"the server is busy: {waiting} requests are waiting (see --queue)",
                         code="server_busy", type="server_error")


class Scheduler:
    """The worker thread: loads the model into N slots, then generates for every busy slot in turn."""

    def __init__(self, load_slots: Callable[[], list], max_queue: int,
                 on_ready: Callable[[], None] = lambda: None,
                 on_error: Callable[[BaseException], None] = lambda e: None):
        self.load_slots, self.max_queue = load_slots, max_queue
        self.on_ready, self.on_error = on_ready, on_error
        self.slots: list[Slot] = []
        self.waiting: deque[Job] = deque()
        self.cond = threading.Condition()
        self.stopping = False
        self.thread = threading.Thread(target=self._run, name="llamafile-worker", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify_all()

    def submit(self, job: Job) -> None:
        """Queue a job, or raise QueueFull (503) when the slots and the queue are taken."""
        with self.cond:
            if self.stopping:
                raise APIError(503, "the server is shutting down", code="shutting_down", type="server_error")
            free = sum(s.job is None for s in self.slots)
            if len(self.waiting) >= free + self.max_queue:
                raise QueueFull(len(self.waiting))
            self.waiting.append(job)
            self.cond.notify_all()

    def cancel(self, job: Job) -> None:
        """The client went away: drop the job if it waits, else stop it at the worker's next turn."""
        job.cancelled.set()
        with self.cond:
            if job in self.waiting:
                self.waiting.remove(job)
            self.cond.notify_all()

    def busy(self) -> int:
        return sum(s.job is not None for s in self.slots)

    # --- on the worker thread ---
    def _run(self) -> None:
        try:
            self.slots = [Slot(i, m) for i, m in enumerate(self.load_slots())]
        except BaseException as e:  # a bad file, no memory, ...: the server says so and stops
            self.on_error(e)
            return
        self.on_ready()
        while True:
            with self.cond:
                while not self.stopping and not self._assign():
                    self.cond.wait()
                if self.stopping:
                    break
                busy = [s for s in self.slots if s.job is not None]
            for slot in busy:
                self._step(slot)
        self._end_all()

    def _end_all(self) -> None:
        """The server stops: every job still running or waiting ends with an error event."""
        closing = APIError(503, "the server is shutting down", code="shutting_down", type="server_error")
        with self.cond:
            jobs, self.waiting = list(self.waiting), deque()
        for slot in self.slots:
            if slot.job is not None:
                jobs.append(slot.job)
                slot.release()
        for job in jobs:
            job.emit(Event("error", error=closing))

    def _assign(self) -> bool:
        """Move waiting jobs into free slots (the one already holding the longest part of the
        prompt first); whether any slot is busy. Called with the lock held."""
        free = [s for s in self.slots if s.job is None]
        while self.waiting and free:
            job = self.waiting.popleft()
            best = max(free, key=lambda s: _common_prefix(s.model.tokens, job.prompt_ids))
            free.remove(best)
            try:
                best.start(job)
            except Exception as e:  # that job fails; the slot stays free
                best.job = None
                free.append(best)
                job.emit(Event("error", error=e))
        return any(s.job is not None for s in self.slots)

    def _step(self, slot: Slot) -> None:
        job = slot.job
        if job.cancelled.is_set():
            slot.release()
            return
        try:
            slot.step()
        except Exception as e:  # reported to that one client; the slot starts clean
            job.emit(Event("error", error=e))
            slot.release()
            slot.model.reset()


# --- the server's state ---------------------------------------------------------------------

class State:
    """What the handlers share: the arguments, the loading status, the model and the worker."""

    def __init__(self, args, model_path: str | os.PathLike):
        self.args, self.model_path = args, Path(model_path)
        self.model_id = model_id(model_path)
        self.aliases = model_aliases(model_path)
        self.defaults = default_sampling(args)
        self.status, self.error = "loading", None
        self.created = int(time.time())
        self.model = None
        self.ready = threading.Event()
        self.on_ready: Callable[[], None] = lambda: None
        self.on_error: Callable[[BaseException], None] = lambda e: None
        self.scheduler = Scheduler(self._load_slots, getattr(args, "queue", 16),
                                   on_ready=self._ready, on_error=self._failed)

    def _load_slots(self) -> list:
        """On the worker thread: the model, more contexts on the same mapping, and a warm-up
        evaluation (the kernels compile or load from numba's cache before the first request)."""
        from kernels import cpu

        from .model import Model, load
        cpu.set_threads(getattr(self.args, "threads", None))  # numba's thread count is per thread
        first = load(self.model_path, n_ctx=getattr(self.args, "ctx_size", 0) or None)
        models = [first] + [Model(first.gguf, n_ctx=first.n_ctx, backend=first.backend.name)
                            for _ in range(getattr(self.args, "parallel", 1) - 1)]
        first.warmup()
        self.model = first
        tok = first.tokenizer
        self.template = first.gguf.get("tokenizer.chat_template")
        self.bos = tok.token_text(tok.bos_id) if tok.bos_id is not None else ""
        self.eos = tok.token_text(tok.eos_id) if tok.eos_id is not None else ""
        return models

    def _ready(self) -> None:
        self.status = "ok"
        self.ready.set()
        self.on_ready()

    def _failed(self, e: BaseException) -> None:
        self.status, self.error = "error", f"{type(e).__name__}: {e}" if not str(e) else str(e)
        self.ready.set()
        self.on_error(e)

    def require_model(self) -> None:
        if self.status == "loading":
            raise APIError(503, "Loading model", code="model_loading", type="unavailable_error")
        if self.status != "ok":
            raise APIError(500, f"the model failed to load: {self.error}", code="model_error", type="server_error")

    def check_model_name(self, body: dict) -> None:
        name = body.get("model")
        if name is None or name == "":
            return
        if not isinstance(name, str):
            raise invalid("'model' must be a string", "model", "invalid_type")
        if name.lower() not in self.aliases:
            raise APIError(404, f"The model '{name[:100]}' does not exist (this server runs '{self.model_id}')",
                           code="model_not_found", param="model")

    @property
    def n_ctx(self) -> int:
        return self.model.n_ctx


# --- prompts ----------------------------------------------------------------------------------

def chat_prompt_ids(state: State, messages: list[dict]) -> list[int]:
    try:
        prompt = render_chat(state.template, messages, bos_token=state.bos, eos_token=state.eos)
    except ChatTemplateError as e:
        raise invalid(f"the chat template cannot render these messages: {e}", "messages", "invalid_chat") from None
    return state.model.tokenize(prompt, add_special=True, parse_special=True)


def completion_prompt_ids(state: State, body: dict, name: str = "prompt") -> list[int]:
    """"prompt": a string, a list of token ids, or a list holding one of those."""
    v = body.get(name)
    if v is None:
        raise invalid(f"'{name}' is required", name, "missing_required_parameter")
    if isinstance(v, list) and len(v) == 1 and isinstance(v[0], (str, list)):
        v = v[0]
    if isinstance(v, str):
        ids = state.model.tokenize(v, add_special=True, parse_special=True)
    elif isinstance(v, list) and all(_is_integer(t) for t in v):
        ids = [int(t) for t in v]
        check_token_ids(state, ids, name)
    elif isinstance(v, list):
        raise invalid(f"'{name}' must be one string or one list of token ids (one prompt per request)", name,
                      "invalid_type")
    else:
        raise invalid(f"'{name}' must be a string or a list of token ids", name, "invalid_type")
    if not ids:
        raise invalid(f"'{name}' is empty", name)
    return ids


def check_token_ids(state: State, ids: list[int], name: str) -> None:
    n_vocab = state.model.config.n_vocab
    bad = next((t for t in ids if not 0 <= t < n_vocab), None)
    if bad is not None:
        raise invalid(f"'{name}': token id {bad} is out of range 0..{n_vocab - 1}", name)


def make_job(state: State, ids: list[int], body: dict, native: bool) -> Job:
    """A job for these prompt ids, or 400 when the prompt leaves no room in the context."""
    n_ctx = state.n_ctx
    if len(ids) >= n_ctx:
        raise invalid(f"This model's maximum context length is {n_ctx} tokens. However, your request has "
                      f"{len(ids)} prompt tokens, which leaves no room for a reply. Please shorten the prompt.",
                      "messages" if "messages" in body else "prompt", "context_length_exceeded")
    limit = get_max_tokens(body)
    room = n_ctx - len(ids)
    params = get_sampling(body, state.defaults, n_ctx, state.model.config.n_vocab,
                          max_temperature=float("inf") if native else 2.0)
    return Job(prompt_ids=ids, params=params, max_tokens=room if limit is None else min(limit, room),
               stops=get_stops(body), ignore_eos=get_bool(body, "ignore_eos", False),
               reuse_prefix=get_bool(body, "cache_prompt", True))


def check_n(body: dict) -> None:
    if get_integer(body, "n", 1) != 1:
        raise invalid("only n = 1 is supported", "n", "unsupported_value")


# --- the HTTP application ------------------------------------------------------------------

def create_app(state: State):
    from fastapi import FastAPI, Request
    from fastapi.responses import HTMLResponse, JSONResponse
    from starlette.exceptions import HTTPException

    app = FastAPI(title="llamafile", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.llamafile = state

    @app.exception_handler(APIError)
    async def api_error(request: Request, e: APIError):
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException):
        codes = {404: "not_found", 405: "method_not_allowed"}
        where = f"{request.method} {request.url.path}"
        message = {404: f"no such endpoint: {where}",
                   405: f"method not allowed: {where}"}.get(e.status_code, str(e.detail))
        return JSONResponse(APIError(e.status_code, message, code=codes.get(e.status_code)).body(),
                            status_code=e.status_code, headers=getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, e: Exception):
        return JSONResponse(APIError(500, f"internal error: {type(e).__name__}: {e}", code="internal_error",
                                     type="server_error").body(), status_code=500)

    @app.get("/", response_class=HTMLResponse)
    @app.get("/index.html", response_class=HTMLResponse)
    async def index():
        return HTMLResponse(web_page(), headers={"Cache-Control": "no-cache"})

    @app.get("/web/{path:path}")
    async def web(path: str):
        return web_file(path)

    @app.get("/health")
    async def health():
        if state.status == "loading":
            return JSONResponse({"status": "loading model"}, status_code=503)
        if state.status != "ok":
            return JSONResponse({"status": "error", "error": state.error}, status_code=500)
        busy = state.scheduler.busy()
        return {"status": "ok", "slots_idle": len(state.scheduler.slots) - busy, "slots_processing": busy}

    @app.get("/v1/models")
    @app.get("/models")
    async def models():
        entry = {"id": state.model_id, "object": "model", "created": state.created, "owned_by": "llamafile"}
        if state.model is not None:
            m = state.model
            entry["meta"] = {"n_ctx": m.n_ctx, "n_ctx_train": m.config.n_ctx_train, "n_vocab": m.config.n_vocab,
                             "n_params": m.n_params, "arch": m.config.arch}
        return {"object": "list", "data": [entry]}

    @app.get("/slots")
    async def slots():
        state.require_model()
        return [{"id": s.index, "n_ctx": s.model.n_ctx, "n_past": s.model.n_past, "is_processing": s.job is not None}
                for s in state.scheduler.slots]

    @app.post("/v1/chat/completions")
    @app.post("/chat/completions")
    async def chat_completions(request: Request):
        body = await read_json(request)
        state.require_model()
        state.check_model_name(body)
        check_n(body)
        messages = get_messages(body)
        ids = await asyncio.to_thread(chat_prompt_ids, state, messages)
        return await run_openai(state, request, body, ids, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await read_json(request)
        state.require_model()
        state.check_model_name(body)
        check_n(body)
        ids = await asyncio.to_thread(completion_prompt_ids, state, body)
        return await run_openai(state, request, body, ids, chat=False)

    @app.post("/completion")
    @app.post("/completions")
    async def completion(request: Request):
        body = await read_json(request)
        state.require_model()
        ids = await asyncio.to_thread(completion_prompt_ids, state, body)
        return await run_native(state, request, body, ids)

    @app.post("/tokenize")
    async def tokenize(request: Request):
        body = await read_json(request)
        state.require_model()
        content = body.get("content")
        if not isinstance(content, str):
            raise invalid("'content' must be a string", "content", "invalid_type" if content is not None
                          else "missing_required_parameter")
        add_special = get_bool(body, "add_special", False)
        parse_special = get_bool(body, "parse_special", True)
        ids = await asyncio.to_thread(state.model.tokenize, content, add_special, parse_special)
        if get_bool(body, "with_pieces", False):
            tok = state.model.tokenizer
            return {"tokens": [{"id": t, "piece": tok.token_bytes(t).decode("utf-8", "replace")} for t in ids]}
        return {"tokens": ids}

    @app.post("/detokenize")
    async def detokenize(request: Request):
        body = await read_json(request)
        state.require_model()
        tokens = body.get("tokens")
        if not isinstance(tokens, list) or not all(_is_integer(t) for t in tokens):
            raise invalid("'tokens' must be a list of token ids", "tokens",
                          "missing_required_parameter" if tokens is None else "invalid_type")
        ids = [int(t) for t in tokens]
        check_token_ids(state, ids, "tokens")
        return {"content": await asyncio.to_thread(state.model.detokenize, ids)}

    api_key = getattr(state.args, "api_key", None)
    return ApiKeyMiddleware(app, api_key) if api_key else app


class ApiKeyMiddleware:
    """401 unless the request carries 'Authorization: Bearer KEY' (or 'X-Api-Key: KEY'); the page
    and /health stay open so the page can ask for the key."""

    def __init__(self, app, key: str):
        self.app, self.key = app, key.encode()
        self.state = app.state  # tests and tools find the State here as on the app

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "")
        if (scope["type"] == "http" and path not in PUBLIC_PATHS and not path.startswith("/web/")
                and scope["method"] != "OPTIONS"):
            headers = dict(scope.get("headers") or [])
            given = headers.get(b"x-api-key", b"")
            auth = headers.get(b"authorization", b"")
            if auth[:7].lower() == b"bearer ":
                given = auth[7:].strip()
            if not hmac.compare_digest(given, self.key):
                from fastapi.responses import JSONResponse
                error = APIError(401, "Invalid API key: send 'Authorization: Bearer KEY'", code="invalid_api_key")
                await JSONResponse(error.body(), status_code=401,
                                   headers={"WWW-Authenticate": "Bearer"})(scope, receive, send)
                return
        await self.app(scope, receive, send)


def web_page() -> str:
    return resources.files("llamafile").joinpath("web/index.html").read_text(encoding="utf-8")


WEB_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml",
             ".png": "image/png", ".woff2": "font/woff2", ".md": "text/plain; charset=utf-8",
             ".LICENSE": "text/plain; charset=utf-8"}


def web_file(path: str):
    """GET /web/PATH: a file of the page's folder (llamafile/web: vendored libraries, favicon), public
    like the page; 404 for anything else (other types, '..', folders)."""
    from fastapi.responses import Response
    from starlette.exceptions import HTTPException
    root = Path(__file__).resolve().parent / "web"
    file = (root / path).resolve()
    kind = WEB_TYPES.get(file.suffix)
    if kind is None or not file.is_relative_to(root) or not file.is_file():
        raise HTTPException(404)
    return Response(file.read_bytes(), media_type=kind, headers={"Cache-Control": "max-age=3600"})


async def read_json(request) -> dict:
    """The body as a JSON object: 413 past MAX_BODY, 400 for bad UTF-8, bad JSON or not an object."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_BODY:
        raise APIError(413, f"the request body is over {MAX_BODY} bytes", code="request_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise APIError(413, f"the request body is over {MAX_BODY} bytes", code="request_too_large")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        raise invalid("the request body is empty: send a JSON object", code="invalid_json")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise invalid(f"the request body is not valid UTF-8 (byte {e.start})", code="invalid_encoding") from None
    try:
        body = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        raise invalid(f"the request body is not valid JSON: {e}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise invalid("the request body must be a JSON object", code="invalid_json")
    return body


# --- running a job from a handler ----------------------------------------------------------

def submit(state: State, job: Job) -> asyncio.Queue:
    """Hand the job to the worker; its events arrive on the returned queue. Raises QueueFull."""
    loop, events = asyncio.get_running_loop(), asyncio.Queue()

    def emit(event: Event) -> None:  # on the worker thread
        try:
            loop.call_soon_threadsafe(events.put_nowait, event)
        except RuntimeError:  # the loop is closed: the server is shutting down
            job.cancelled.set()

    job.emit = emit
    state.scheduler.submit(job)
    return events


async def job_events(events: asyncio.Queue, request=None, every: float = 0.25) -> AsyncIterator[Event]:
    """The job's events up to its end; with request, stops if the client disconnects
    (checked every `every` seconds, whether or not events keep coming)."""
    loop = asyncio.get_running_loop()
    pending, next_check = None, loop.time() + every
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(events.get())
            done, _ = await asyncio.wait({pending}, timeout=every)
            if request is not None and loop.time() >= next_check:
                next_check = loop.time() + every
                if await request.is_disconnected():
                    return
            if not done:
                continue
            event, pending = pending.result(), None
            yield event
            if event.kind != "text":
                return
    finally:
        if pending is not None:
            pending.cancel()


def streaming_response(state: State, job: Job, chunks: AsyncIterator[str]):
    """Server-sent events; the job is cancelled however the response ends (finished, client gone)."""
    from starlette.responses import StreamingResponse

    class JobStream(StreamingResponse):
        async def __call__(self, scope, receive, send):
            try:
                await super().__call__(scope, receive, send)
            finally:
                state.scheduler.cancel(job)

    return JobStream(chunks, media_type="text/event-stream",
                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def sse(data: dict | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


def error_event(e: Exception) -> dict:
    if isinstance(e, APIError):
        return e.body()
    return APIError(500, f"generation failed: {type(e).__name__}: {e}", code="internal_error",
                    type="server_error").body()


def usage(r: Result) -> dict:
    return {"prompt_tokens": r.n_prompt, "completion_tokens": r.n_generated,
            "total_tokens": r.n_prompt + r.n_generated}


async def collect(state: State, request, job: Job, events: asyncio.Queue) -> tuple[str, Result]:
    """A non-streamed reply: all its text and how it ended (the job is cancelled if the client leaves)."""
    pieces, result = [], None
    try:
        async for event in job_events(events, request):
            if event.kind == "text":
                pieces.append(event.text)
            elif event.kind == "error":
                raise event.error if isinstance(event.error, APIError) else APIError(
                    500, f"generation failed: {event.error}", code="internal_error", type="server_error")
            else:
                result = event.result
    finally:
        if result is None:
            state.scheduler.cancel(job)
    if result is None:  # the client disconnected; nobody reads this
        raise APIError(499, "client closed the request", code="client_closed")
    return "".join(pieces), result


async def run_openai(state: State, request, body: dict, ids: list[int], chat: bool):
    """/v1/chat/completions and /v1/completions."""
    stream = get_bool(body, "stream", False)
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise invalid("'stream_options' must be an object", "stream_options", "invalid_type")
    include_usage = get_bool(options or {}, "include_usage", False)
    job = make_job(state, ids, body, native=False)
    events = submit(state, job)
    meta = {"id": ("chatcmpl-" if chat else "cmpl-") + secrets.token_hex(12),
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()), "model": state.model_id, "system_fingerprint": "llamafile"}
    if stream:
        return streaming_response(state, job, openai_chunks(events, meta, chat, include_usage))
    text, result = await collect(state, request, job, events)
    if chat:
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                  "finish_reason": result.finish_reason}
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": result.finish_reason}
    return {**meta, "choices": [choice], "usage": usage(result)}


async def openai_chunks(events: asyncio.Queue, meta: dict, chat: bool, include_usage: bool) -> AsyncIterator[str]:
    """OpenAI's stream: a chunk per piece of text, a last one with finish_reason, the usage
    (when asked for), then [DONE]."""
    meta = {**meta, "object": "chat.completion.chunk" if chat else "text_completion"}
    extra = {"usage": None} if include_usage else {}

    def chunk(text: str | None, finish: str | None = None, role: bool = False) -> dict:
        if chat:
            delta = {} if text is None else ({"role": "assistant", "content": text} if role else {"content": text})
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        return {**meta, "choices": [choice], **extra}

    if chat:
        yield sse(chunk("", role=True))
    async for event in job_events(events):
        if event.kind == "text":
            yield sse(chunk(event.text))
        elif event.kind == "error":
            yield sse(error_event(event.error))
        else:
            yield sse(chunk(None, event.result.finish_reason))
            if include_usage:
                yield sse({**meta, "choices": [], "usage": usage(event.result)})
    yield sse("[DONE]")


async def run_native(state: State, request, body: dict, ids: list[int]):
    """llama.cpp's /completion: {"content", "stop": true, "tokens_predicted", ...}."""
    stream = get_bool(body, "stream", False)
    job = make_job(state, ids, body, native=True)
    events = submit(state, job)
    if stream:
        return streaming_response(state, job, native_chunks(state, events, job))
    text, result = await collect(state, request, job, events)
    return native_final(state, job, result, text)


async def native_chunks(state: State, events: asyncio.Queue, job: Job) -> AsyncIterator[str]:
    async for event in job_events(events):
        if event.kind == "text":
            yield sse({"content": event.text, "stop": False})
        elif event.kind == "error":
            yield sse(error_event(event.error))
        else:
            yield sse(native_final(state, job, event.result, ""))


def native_final(state: State, job: Job, r: Result, content: str) -> dict:
    p = job.params
    stop_type = "word" if r.stopping_word else "eos" if r.eog else "limit"
    return {
        "content": content, "stop": True, "model": state.model_id, "id_slot": r.slot,
        "tokens_predicted": r.n_generated, "tokens_evaluated": r.n_prompt, "tokens_cached": r.n_cached,
        "truncated": False, "stop_type": stop_type, "stopping_word": r.stopping_word,
        "stopped_eos": stop_type == "eos", "stopped_word": stop_type == "word", "stopped_limit": stop_type == "limit",
        "generation_settings": {
            "n_ctx": state.n_ctx, "n_predict": job.max_tokens, "temperature": p.temperature, "top_k": p.top_k,
            "top_p": p.top_p, "min_p": p.min_p, "repeat_penalty": p.repeat_penalty,
            "repeat_last_n": p.repeat_last_n, "presence_penalty": p.presence_penalty,
            "frequency_penalty": p.frequency_penalty, "seed": -1 if p.seed is None else p.seed,
            "stop": job.stops, "ignore_eos": job.ignore_eos},
        "timings": timings(r),
    }


def timings(r: Result) -> dict:
    n_eval = max(r.n_prompt - r.n_cached, 0)
    n_pred = max(r.n_generated - 1, 0)
    return {"prompt_n": n_eval, "prompt_ms": r.prompt_ms,
            "prompt_per_token_ms": r.prompt_ms / n_eval if n_eval else 0.0,
            "prompt_per_second": 1e3 * n_eval / r.prompt_ms if r.prompt_ms > 0 else 0.0,
            "predicted_n": r.n_generated, "predicted_ms": r.predicted_ms,
            "predicted_per_token_ms": r.predicted_ms / n_pred if n_pred else 0.0,
            "predicted_per_second": 1e3 * n_pred / r.predicted_ms if r.predicted_ms > 0 else 0.0}


# --- binding, running, stopping ------------------------------------------------------------

def bind(host: str, port: int, say=lambda message: print(message, file=sys.stderr)) -> socket.socket:
    """A listening socket on host:port, or on the next free port after a taken one (said on stderr)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    last_error = None
    for candidate in ([0] if port == 0 else range(port, min(port + PORT_ATTEMPTS, 65536))):
        sock = socket.socket(family, socket.SOCK_STREAM)
        if os.name != "nt":  # on Windows SO_REUSEADDR would let two servers share a port
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, candidate))
            sock.listen(128)
        except OSError as e:
            sock.close()
            last_error = e
            if e.errno not in (98, 48, 10048, 13, 10013):  # in use (Linux, macOS, Windows), or not allowed
                raise
            continue
        if candidate != port and port != 0:
            say(f"llamafile: port {port} is in use, using {candidate}")
        return sock
    raise OSError(f"no free port from {port} to {port + PORT_ATTEMPTS - 1} on {host}: {last_error}")


def url_of(host: str, sock: socket.socket) -> str:
    port = sock.getsockname()[1]
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else "[::1]" if host == "::" else (
        f"[{host}]" if ":" in host else host)
    return f"http://{shown}:{port}"


def has_display() -> bool:
    """Whether a browser window could open: always on macOS and Windows, with X or Wayland on Linux."""
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _UvicornServer(config, on_shutdown: Callable[[], None]):
    """uvicorn's server, which first ends the running jobs when it shuts down (their streams
    then finish at once instead of holding the graceful shutdown)."""
    import uvicorn

    class UvicornServer(uvicorn.Server):
        async def shutdown(self, sockets=None):
            on_shutdown()
            await super().shutdown(sockets=sockets)

    return UvicornServer(config)


class Server:
    """The HTTP server, bound at construction, serving as soon as it runs; the model loads meanwhile."""

    def __init__(self, args, model_path: str | os.PathLike, open_browser: bool | None = None):
        import uvicorn

        self.args = args
        self.sock = bind(getattr(args, "host", "127.0.0.1"), getattr(args, "port", 8080))
        self.url = url_of(getattr(args, "host", "127.0.0.1"), self.sock)
        self.open_browser = (not getattr(args, "nobrowser", False)) if open_browser is None else open_browser
        self.state = State(args, model_path)
        self.state.on_ready, self.state.on_error = self._ready, self._failed
        verbose = getattr(args, "verbose", False)
        config = uvicorn.Config(create_app(self.state), log_level="info" if verbose else "warning",
                                access_log=verbose, lifespan="off", timeout_graceful_shutdown=3,
                                timeout_keep_alive=30)
        self.uvicorn = _UvicornServer(config, on_shutdown=self.state.scheduler.stop)
        self._thread: threading.Thread | None = None

    def _ready(self) -> None:
        print(f"llamafile: listening on {self.url}", file=sys.stderr, flush=True)
        if self.open_browser and has_display():
            threading.Thread(target=webbrowser.open, args=(self.url,), daemon=True).start()

    def _failed(self, e: BaseException) -> None:
        print(f"llamafile: error: {e}", file=sys.stderr, flush=True)
        self.uvicorn.should_exit = True

    def run(self) -> int:
        """Serve in this thread until Ctrl-C (or a model that fails to load: exit status 1)."""
        self.state.scheduler.start()
        try:
            self.uvicorn.run(sockets=[self.sock])
        except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it handled
            pass
        finally:
            self.state.scheduler.stop()
            self.sock.close()
        return 1 if self.state.status == "error" else 0

    def start(self) -> threading.Thread:
        """Serve on a background thread (uvicorn leaves the signals to the main thread there)."""
        self.state.scheduler.start()
        thread = threading.Thread(target=lambda: asyncio.run(self.uvicorn.serve(sockets=[self.sock])),
                                  name="llamafile-http", daemon=True)
        thread.start()
        return thread

    def stop(self, timeout: float = 5.0) -> None:
        self.uvicorn.should_exit = True
        self.state.scheduler.stop()
        if self._thread is not None:
            self._thread.join(timeout)
        self.sock.close()


def serve(args, model_path: str | os.PathLike) -> int:
    """`llamafile --server`: serve until interrupted; 0, or 1 when the model cannot be loaded."""
    return Server(args, model_path).run()


def start_in_thread(args, model_path: str | os.PathLike, open_browser: bool | None = None
                    ) -> tuple[str, Callable[[], None]]:
    """Serve in the background (the terminal chat keeps the foreground): (url, stop).

    The URL answers at once (/health says 503 until the model is loaded); the browser opens
    after loading unless --nobrowser or open_browser=False."""
    server = Server(args, model_path, open_browser=open_browser)
    server._thread = server.start()
    return server.url, server.stop


def main(argv: list[str] | None = None) -> int:
    """`python -m llamafile.server [flags]`: the CLI's flags plus the server's, then serve."""
    from . import cli
    parser = cli.build_parser()
    if "--server" not in parser._option_string_actions:
        add_arguments(parser)
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else argv)
        cli.configure_cpu()
        path = cli.resolve_model(args.model)
    except cli.UsageError as e:
        print(f"llamafile: error: {e}", file=sys.stderr)
        return 2
    return serve(args, path)


if __name__ == "__main__":
    sys.exit(main())
