"""What the handlers share: the flags, the model's names, the loading status, the worker, counters."""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Callable

from ..sampling import SamplingParams
from .errors import APIError
from .scheduler import Scheduler


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
    try:
        trailer = read_trailer(path)
    except OSError:
        trailer = None
    return trailer.name if trailer is not None and trailer.name else Path(path).name


def model_id(path: str | os.PathLike) -> str:
    """The name /v1/models reports: the catalogue name, else the file name without .gguf."""
    from weights import catalogue
    name = model_file_name(path)
    try:
        return catalogue.lookup(name).catalogue or Path(name).stem
    except catalogue.UnknownModel:
        return Path(name).stem


class Metrics:
    """Counters for /metrics (llama-server's names)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.prompt_tokens = self.predicted_tokens = self.requests = 0
        self.prompt_seconds = self.predicted_seconds = 0.0

    def add(self, r) -> None:
        with self.lock:
            self.requests += 1
            self.prompt_tokens += max(r.n_prompt - r.n_cached, 0)
            self.predicted_tokens += r.n_generated
            self.prompt_seconds += r.prompt_ms / 1e3
            self.predicted_seconds += r.predicted_ms / 1e3


class State:
    def __init__(self, args, model_path: str | os.PathLike):
        self.args, self.model_path = args, Path(model_path)
        self.model_id = getattr(args, "alias", None) or model_id(model_path)
        self.defaults = default_sampling(args)
        n_predict = getattr(args, "n_predict", -1)
        self.n_predict = None if n_predict is None or n_predict < 0 else n_predict
        self.n_parallel = getattr(args, "parallel", 1)
        self.status, self.error = "loading", None
        self.created = int(time.time())
        self.model = None
        self.guard = None  # the mapped file's identity, checked before each request and turn (mapping.py)
        self.template, self.bos, self.eos = None, "", ""
        self.metrics = Metrics()
        self.ready = threading.Event()
        self.on_ready: Callable[[], None] = lambda: None
        self.on_error: Callable[[BaseException], None] = lambda e: None
        self.scheduler = Scheduler(self._load_slots, getattr(args, "queue", 16),
                                   on_ready=self._ready, on_error=self._failed, check=self.check_model_file)

    def _load_slots(self) -> list:
        """On the worker thread: the model, more contexts on the same mapping, and a warm-up
        evaluation. -c is the total, split across the --parallel slots (as llama-server does)."""
        from kernels import cpu

        from ..model import DEFAULT_N_CTX, Model
        from ..progress import compile_notice
        from weights.gguf import GGUFFile
        cpu.set_threads(getattr(self.args, "threads", None))  # numba's thread count is per thread
        gguf = GGUFFile(self.model_path)
        from .mapping import FileGuard, install_sigbus_message
        self.guard = FileGuard(self.model_path, gguf.offset + len(gguf.map))
        try:
            install_sigbus_message(self.model_path)
        except Exception:  # only a better last word on SIGBUS: serving goes on without it
            pass
        total = getattr(self.args, "ctx_size", 0) or int(gguf.get(f"{gguf.get('general.architecture')}.context_length")
                                                         or DEFAULT_N_CTX)
        per_slot = max(total // self.n_parallel, 16)
        first = Model(gguf, n_ctx=per_slot)
        models = [first] + [Model(gguf, n_ctx=first.n_ctx, backend=first.backend.name)
                            for _ in range(self.n_parallel - 1)]
        with compile_notice():  # a first run compiles here: said in the log, and by /health (loading_status)
            first.warmup(sampling=self.defaults)
        self.model = first
        tok = first.tokenizer
        self.template = getattr(self.args, "chat_template", None) or gguf.get("tokenizer.chat_template")
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

    def loading_status(self) -> dict:
        """/health's 503 body while loading; while kernels compile (a first run) it says so and how far along."""
        from ..progress import status
        body = {"status": "loading model"}
        compiling = status()
        if compiling is not None:
            body["compiling"] = compiling
        return body

    def require_model(self) -> None:
        if self.status == "loading":
            raise APIError(503, "Loading model", code="model_loading", type="unavailable_error")
        if self.status != "ok":
            raise APIError(500, f"the model failed to load: {self.error}", code="model_error", type="server_error")
        self.check_model_file()

    def check_model_file(self) -> None:
        """A 503 once the mapped model file was truncated or changed on disk (mapping.FileGuard)."""
        if self.guard is not None:
            self.guard.check()

    def model_name(self, body: dict) -> str:
        """The name a reply reports. With one model loaded any name is served (llama-server's rule)."""
        from .errors import invalid
        name = body.get("model")
        if name is not None and not isinstance(name, str):
            raise invalid("'model' must be a string", "model", "invalid_type")
        return name or self.model_id

    @property
    def n_ctx(self) -> int:
        return self.model.n_ctx

    @property
    def n_vocab(self) -> int:
        return self.model.config.n_vocab

    def option(self, name: str, default=None):
        return getattr(self.args, name, default)
