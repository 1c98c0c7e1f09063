"""From a handler to the worker and back: jobs built from a request's fields, their events on an
asyncio queue, a reply collected whole or streamed as server-sent events."""
from __future__ import annotations

import asyncio
import json
import math
from dataclasses import dataclass, field
from typing import AsyncIterator

from .errors import APIError, context_exceeded, internal, invalid
from .scheduler import Event, Job, Result
from .validate import get_bool, get_integer, get_max_tokens, get_sampling, get_stops


def make_jobs(state, body: dict, prompts: list[list[int]], *, native: bool, n: int = 1,
              param: str = "messages", grammar: str | None = None, logprobs: int = -1) -> list[Job]:
    """One job per prompt and choice; a 400 when a prompt leaves no room in the context.

    logprobs: -1 for none, else how many top alternatives each token reports (OpenAI's logprobs)."""
    n_ctx = state.n_ctx
    for ids in prompts:
        if len(ids) >= n_ctx:
            raise context_exceeded(len(ids), n_ctx, param)
    limit = get_max_tokens(body, state.n_predict)
    tokenize = lambda s: state.model.tokenize(s, add_special=False, parse_special=True)  # noqa: E731
    params = get_sampling(body, state.defaults, n_ctx, state.n_vocab,
                          max_temperature=math.inf if native else 2.0, tokenize=tokenize)
    n_probs = get_integer(body, "n_probs", 0, lo=0, hi=100)
    post = get_bool(body, "post_sampling_probs", False)
    id_slot = get_integer(body, "id_slot", -1, lo=-1)
    if id_slot >= state.n_parallel:
        raise invalid(f"'id_slot' {id_slot} is not a slot (0..{state.n_parallel - 1})", "id_slot")
    stops = get_stops(body)
    ignore_eos = get_bool(body, "ignore_eos", False)
    cache_prompt = get_bool(body, "cache_prompt", True)
    get_bool(body, "timings_per_token", False)
    get_bool(body, "return_tokens", False)
    if grammar is None:
        from .grammar import request_grammar
        grammar = request_grammar(body)
    jobs = []
    for p_index, ids in enumerate(prompts):
        for c in range(n):
            matcher = None
            if grammar is not None:
                from .grammar import compile_grammar
                matcher = compile_grammar(state.model.tokenizer, grammar, state.n_vocab)
            seed = params.seed if params.seed is None or c == 0 else params.seed + c
            room = n_ctx - len(ids)
            jobs.append(Job(prompt_ids=ids, params=_with_seed(params, seed),
                            max_tokens=room if limit is None else min(limit, room), stops=stops,
                            ignore_eos=ignore_eos, reuse_prefix=cache_prompt, matcher=matcher,
                            n_probs=max(n_probs, logprobs, 0), want_probs=n_probs > 0 or logprobs >= 0,
                            post_sampling_probs=post and native, id_slot=id_slot if len(prompts) * n == 1 else -1,
                            index=len(jobs)))
    return jobs


async def prepare_jobs(state, body: dict, prompts: list[list[int]], **kwargs) -> list[Job]:
    """make_jobs on a worker thread of the loop: a grammar's compile (and the first one's token
    table, a second or so for a large vocabulary) does not hold up other requests."""
    return await asyncio.to_thread(lambda: make_jobs(state, body, prompts, **kwargs))


def _with_seed(params, seed):
    from dataclasses import replace
    return params if seed == params.seed else replace(params, seed=seed)


def submit(state, jobs: list[Job]) -> asyncio.Queue:
    """Hand the jobs to the worker; their events arrive on the returned queue. Raises QueueFull."""
    loop, events = asyncio.get_running_loop(), asyncio.Queue()
    for job in jobs:
        def emit(event: Event, job=job) -> None:  # on the worker thread
            try:
                loop.call_soon_threadsafe(events.put_nowait, event)
            except RuntimeError:  # the loop is closed: the server is shutting down
                job.cancelled.set()
        job.emit = emit
    state.scheduler.submit(*jobs)
    return events


async def job_events(events: asyncio.Queue, n: int, request=None, every: float = 0.25) -> AsyncIterator[Event]:
    """The events of n jobs up to their ends; with request, stops if the client disconnects
    (checked every `every` seconds, whether or not events keep coming)."""
    loop = asyncio.get_running_loop()
    pending, next_check, ended = None, loop.time() + every, 0
    try:
        while ended < n:
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
                ended += 1
                if event.kind == "error":
                    return
    finally:
        if pending is not None:
            pending.cancel()


@dataclass
class Choice:
    """One job's whole reply."""
    index: int
    text: str = ""
    result: Result | None = None
    probs: list[dict] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)


def as_api_error(e: Exception) -> APIError:
    return e if isinstance(e, APIError) else internal(e)


async def collect(state, request, jobs: list[Job], events: asyncio.Queue) -> list[Choice]:
    """Non-streamed replies: each job's text and how it ended (the jobs are cancelled if the client leaves)."""
    choices = [Choice(i) for i in range(len(jobs))]
    try:
        async for event in job_events(events, len(jobs), request):
            c = choices[event.index]
            if event.kind == "text":
                c.text += event.text
                c.probs += event.probs
                c.tokens += event.tokens
            elif event.kind == "error":
                raise as_api_error(event.error)
            else:
                c.result = event.result
                state.metrics.add(event.result) if event.result.n_prompt else None
    finally:
        for job, c in zip(jobs, choices):
            if c.result is None:
                state.scheduler.cancel(job)
    if any(c.result is None for c in choices):  # the client disconnected; nobody reads this
        raise APIError(499, "client closed the request", code="client_closed")
    return choices


def streaming_response(state, jobs: list[Job], chunks: AsyncIterator[str]):
    """Server-sent events; the jobs are cancelled however the response ends (finished, client gone)."""
    from starlette.responses import StreamingResponse

    class JobStream(StreamingResponse):
        async def __call__(self, scope, receive, send):
            try:
                await super().__call__(scope, receive, send)
            finally:
                for job in jobs:
                    state.scheduler.cancel(job)

    async def guarded() -> AsyncIterator[str]:  # a failure mid-stream is an error event, not a cut connection
        try:
            async for chunk in chunks:
                yield chunk
        except Exception as e:
            yield sse(error_event(e))

    return JobStream(guarded(), media_type="text/event-stream",
                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def sse(data: dict | str, event: str | None = None) -> str:
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return (f"event: {event}\n" if event else "") + f"data: {text}\n\n"


def error_event(e: Exception) -> dict:
    return as_api_error(e).body()


def usage(r: Result) -> dict:
    return {"prompt_tokens": r.n_prompt, "completion_tokens": r.n_generated,
            "total_tokens": r.n_prompt + r.n_generated,
            "prompt_tokens_details": {"cached_tokens": r.n_cached}}


def total_usage(results: list[Result], n: int = 1) -> dict:
    """n choices of one prompt count the prompt once; several prompts count each."""
    firsts = results[::n]
    n_prompt, n_gen = sum(r.n_prompt for r in firsts), sum(r.n_generated for r in results)
    return {"prompt_tokens": n_prompt, "completion_tokens": n_gen, "total_tokens": n_prompt + n_gen,
            "prompt_tokens_details": {"cached_tokens": sum(r.n_cached for r in firsts)}}


def timings(r: Result) -> dict:
    n_eval = max(r.n_prompt - r.n_cached, 0)
    n_pred = max(r.n_generated - 1, 0)
    return {"cache_n": r.n_cached, "prompt_n": n_eval, "prompt_ms": r.prompt_ms,
            "prompt_per_token_ms": r.prompt_ms / n_eval if n_eval else 0.0,
            "prompt_per_second": 1e3 * n_eval / r.prompt_ms if r.prompt_ms > 0 else 0.0,
            "predicted_n": r.n_generated, "predicted_ms": r.predicted_ms,
            "predicted_per_token_ms": r.predicted_ms / n_pred if n_pred else 0.0,
            "predicted_per_second": 1e3 * n_pred / r.predicted_ms if r.predicted_ms > 0 else 0.0}


def partial_timings(e: Event) -> dict:
    return {"predicted_n": e.n_generated, "predicted_ms": e.elapsed_ms}


def token_piece(state, token: int) -> str:
    """One token's text as clients see it in probabilities (invalid UTF-8 replaced)."""
    return state.model.tokenizer.token_bytes(int(token)).decode("utf-8", "replace")
