"""The worker: N slots (contexts sharing the mapped weights), a bounded queue of jobs, one thread
that advances every busy slot by one token per turn. No web framework in here: a job reports
through its emit callback (called on the worker thread) and is cancelled through its Event.

A job either generates text (TextGeneration over the slot's model) or runs a task on a slot
(embeddings, saving or restoring a slot's cache) between two turns of generation.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..generate import TextGeneration
from ..sampling import Sampler, SamplingParams, truncate
from .errors import APIError, QueueFull, shutting_down


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
    tokens: list[int] = field(default_factory=list)   # the generated ids
    value: Any = None                  # a task's return value


@dataclass
class Event:
    kind: str                          # "text", "done" or "error"
    text: str = ""
    result: Result | None = None
    error: Exception | None = None
    index: int = 0                     # which of the request's choices (n > 1)
    probs: list[dict] = field(default_factory=list)   # one entry per token sampled since the last event
    tokens: list[int] = field(default_factory=list)   # ids sampled since the last event
    n_generated: int = 0
    elapsed_ms: float = 0.0


@dataclass
class Job:
    """One request (or one choice of it) for the worker: what to generate and where its events go."""
    prompt_ids: list[int]
    params: SamplingParams
    max_tokens: int
    stops: list[str] = field(default_factory=list)
    ignore_eos: bool = False
    reuse_prefix: bool = True
    matcher: Any = None                # llguidance matcher constraining every token (grammar.py)
    n_probs: int = 0                   # top tokens reported with each sampled one
    post_sampling_probs: bool = False
    want_probs: bool = False           # the sampled token's own probability (logprobs)
    id_slot: int = -1                  # -1: any slot
    index: int = 0
    task: Callable[["Slot"], Any] | None = None
    emit: Callable[[Event], None] = lambda event: None
    cancelled: threading.Event = field(default_factory=threading.Event)


class Probe:
    """A sampler that also records each draw's probability and the top n alternatives:
    before sampling (softmax of the logits it is given) or, with post, among the candidates
    top-k / top-p / min-p / temperature leave (llama.cpp's post_sampling_probs)."""

    def __init__(self, inner: Sampler, n_top: int, post: bool):
        self.inner, self.n_top, self.post = inner, n_top, post
        self.accept, self.reset = inner.accept, inner.reset
        self.records: list[dict] = []

    def __call__(self, logits: np.ndarray) -> int:
        token = self.inner(logits)
        p = self.inner.params
        if self.post:
            if p.temperature <= 0:
                ids, probs = np.array([token]), np.array([1.0])
            else:
                ids, vals = truncate(logits, p)
                z = vals / p.temperature
                probs = np.exp(z - z.max())
                probs /= probs.sum()
            lookup = dict(zip(ids.tolist(), probs.tolist()))
            top = list(zip(ids[: self.n_top].tolist(), probs[: self.n_top].tolist()))
            prob = lookup.get(token, 0.0)
            self.records.append({"id": token, "prob": prob, "top": top, "post": True})
        else:
            x = logits.astype(np.float64)
            m = np.max(x[np.isfinite(x)]) if np.isfinite(x).any() else 0.0
            logz = m + np.log(np.sum(np.exp(x - m)))
            k = min(max(self.n_top, 1), len(x))
            top_ids = np.argpartition(-x, k - 1)[:k]
            top_ids = top_ids[np.lexsort((top_ids, -x[top_ids]))][: self.n_top]
            # tokens a grammar masked (Constrained's second draw) have -inf: not alternatives, and not JSON
            self.records.append({"id": token, "logprob": float(x[token] - logz),
                                 "top": [(int(i), float(x[i] - logz)) for i in top_ids if np.isfinite(x[i])],
                                 "post": False})
        return token

    def take(self) -> list[dict]:
        out, self.records = self.records, []
        return out


class Slot:
    """One context and the job it runs, with that job's decoding state."""

    def __init__(self, index: int, model):
        self.index, self.model = index, model
        self.job: Job | None = None
        self.probe: Probe | None = None
        self.n_cached = 0

    def start(self, job: Job) -> None:
        self.job = job
        if job.task is not None:
            return
        reused = _common_prefix(self.model.tokens, job.prompt_ids) if job.reuse_prefix else 0
        self.n_cached = min(reused, len(job.prompt_ids) - 1)  # the last prompt token is always evaluated
        sampler = Sampler(job.params)
        self.probe = None
        if job.n_probs or job.want_probs:
            sampler = self.probe = Probe(sampler, job.n_probs, job.post_sampling_probs)
        if job.matcher is not None:
            from .grammar import Constrained
            sampler = Constrained(sampler, job.matcher, self.model.config.n_vocab)
        self.gen = TextGeneration(self.model, job.prompt_ids, sampler, job.max_tokens, stops=job.stops,
                                  ignore_eos=job.ignore_eos, reuse_prefix=job.reuse_prefix)
        self.t_start, self.t_first = time.perf_counter(), None
        self.n_sent = 0

    def step(self) -> None:
        """Sample one token (or run the task) and send what it adds; ends the job when it is complete."""
        job = self.job
        if job.task is not None:
            value = job.task(self)
            self.job = None  # free before the client hears of it: its next request may ask for this slot
            job.emit(Event("done", index=job.index, result=Result("stop", 0, 0, slot=self.index, value=value)))
            return
        gen = self.gen
        text = gen.step()
        now = time.perf_counter()
        if self.t_first is None:
            self.t_first = now
        probs = self.probe.take() if self.probe is not None else []
        if gen.eog and probs:
            probs = probs[:-1]  # the end-of-generation token is not part of the reply
        new_tokens = gen.generated[self.n_sent:]
        self.n_sent = len(gen.generated)
        if text or new_tokens:
            job.emit(Event("text", text, index=job.index, probs=probs, tokens=new_tokens,
                           n_generated=gen.n_generated, elapsed_ms=(now - self.t_start) * 1e3))
        if gen.done:
            self.finish()

    def finish(self) -> None:
        job, gen, now = self.job, self.gen, time.perf_counter()
        first = self.t_first or now
        result = Result(
            finish_reason=gen.finish_reason, n_prompt=len(job.prompt_ids), n_generated=gen.n_generated,
            stopping_word=gen.stopping_word, eog=gen.eog, n_cached=self.n_cached, slot=self.index,
            prompt_ms=(first - self.t_start) * 1e3, predicted_ms=(now - first) * 1e3, tokens=list(gen.generated))
        self.release()  # before the client hears of it: its next request may ask for this slot (/slots/N: 409)
        job.emit(Event("done", index=job.index, result=result))

    def release(self) -> None:
        if self.job is not None and self.job.task is None:
            self.gen.close()
        self.job = None


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class Scheduler:
    """The worker thread: loads the model into N slots, then generates for every busy slot in turn."""

    def __init__(self, load_slots: Callable[[], list], max_queue: int,
                 on_ready: Callable[[], None] = lambda: None,
                 on_error: Callable[[BaseException], None] = lambda e: None,
                 check: Callable[[], None] = lambda: None):
        self.load_slots, self.max_queue, self.check = load_slots, max_queue, check
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

    def submit(self, *jobs: Job) -> None:
        """Queue jobs (all or none), or raise QueueFull (503) when the slots and the queue are taken."""
        with self.cond:
            if self.stopping:
                raise shutting_down()
            free = sum(s.job is None for s in self.slots)
            if len(self.waiting) + len(jobs) > free + self.max_queue:
                raise QueueFull(len(self.waiting))
            for job in jobs:
                if job.id_slot >= len(self.slots) and self.slots:
                    raise APIError(400, f"'id_slot' {job.id_slot} is not a slot (0..{len(self.slots) - 1})",
                                   code="invalid_value", param="id_slot")
            self.waiting.extend(jobs)
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
            try:
                self.check()  # e.g. the model file is still whole (State.check_model_file)
            except Exception as e:
                self._end_all(e)
                continue
            for slot in busy:
                self._step(slot)
        self._end_all()

    def _end_all(self, error: Exception | None = None) -> None:
        """Every job still running or waiting ends with an error event: the server stops (or the check
        before a turn failed)."""
        with self.cond:
            jobs, self.waiting = list(self.waiting), deque()
        for slot in self.slots:
            if slot.job is not None:
                jobs.append(slot.job)
                slot.release()
        for job in jobs:
            job.emit(Event("error", error=error or shutting_down(), index=job.index))

    def _assign(self) -> bool:
        """Move waiting jobs into free slots (the asked-for one, else the one already holding the
        longest part of the prompt); whether any slot is busy. Called with the lock held."""
        free = [s for s in self.slots if s.job is None]
        for job in list(self.waiting):
            if not free:
                break
            if job.id_slot >= 0:
                best = next((s for s in free if s.index == job.id_slot), None)
                if best is None:
                    continue  # it waits for that slot
            else:
                best = max(free, key=lambda s: _common_prefix(s.model.tokens, job.prompt_ids))
            self.waiting.remove(job)
            free.remove(best)
            try:
                best.start(job)
            except Exception as e:  # that job fails; the slot stays free
                best.job = None
                free.append(best)
                job.emit(Event("error", error=e, index=job.index))
        return any(s.job is not None for s in self.slots)

    def _step(self, slot: Slot) -> None:
        job = slot.job
        if job.cancelled.is_set():
            slot.release()
            return
        try:
            slot.step()
        except Exception as e:  # reported to that one client; the slot starts clean
            job.emit(Event("error", error=e, index=job.index))
            slot.release()
            slot.model.reset()
