"""OpenAI's formats: /v1/chat/completions and /v1/completions, whole or streamed."""
from __future__ import annotations

import asyncio
import secrets
import time
from typing import AsyncIterator

from . import runner
from .prompts import completion_prompts, start_chat
from .runner import token_piece, collect, error_event, job_events, prepare_jobs, sse, streaming_response, submit, timings, usage
from .tools import ToolCallStream
from .validate import get_bool, get_integer, get_n, get_object


def chat_logprobs(state, probs: list[dict]) -> list[dict]:
    out = []
    for p in probs:
        piece = token_piece(state, p["id"])
        out.append({"token": piece, "logprob": p["logprob"], "bytes": list(piece.encode()),
                    "top_logprobs": [{"token": token_piece(state, t), "logprob": lp,
                                      "bytes": list(token_piece(state, t).encode())} for t, lp in p["top"]]})
    return out


def completion_logprobs(state, probs: list[dict], offset: int = 0) -> dict:
    tokens, lps, tops, offsets = [], [], [], []
    for p in probs:
        piece = token_piece(state, p["id"])
        offsets.append(offset)
        offset += len(piece)
        tokens.append(piece)
        lps.append(p["logprob"])
        tops.append({token_piece(state, t): lp for t, lp in p["top"]})
    return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets}


def stream_flags(body: dict) -> tuple[bool, bool]:
    stream = get_bool(body, "stream", False)
    options = get_object(body, "stream_options") or {}
    return stream, get_bool(options, "include_usage", False)


def chat_logprob_fields(body: dict) -> int:
    """-1 (none) or the number of top alternatives (top_logprobs) each token reports."""
    want = get_bool(body, "logprobs", False)
    top = get_integer(body, "top_logprobs", 0, lo=0, hi=20)
    return top if want else -1


async def chat_completions(state, request, body: dict):
    stream, include_usage = stream_flags(body)
    n = get_n(body, state.n_parallel)
    n_top = chat_logprob_fields(body)
    prompt, jobs, events = await start_chat(state, body, n=n, logprobs=n_top)
    meta = {"id": "chatcmpl-" + secrets.token_hex(12), "object": "chat.completion", "created": int(time.time()),
            "model": state.model_name(body), "system_fingerprint": "llamafile"}
    per_token = get_bool(body, "timings_per_token", False)
    if stream:
        return streaming_response(state, jobs, chat_chunks(state, events, jobs, meta, prompt,
                                                           include_usage, n_top >= 0, per_token))
    choices = await collect(state, request, jobs, events)
    out = []
    for c in choices:
        content, calls = prompt.tool_calls(c.text)
        message = {"role": "assistant", "content": content if content or not calls else None}
        finish = c.result.finish_reason
        if calls:
            message["tool_calls"], finish = calls, "tool_calls"
        out.append({"index": c.index, "message": message,
                    "logprobs": {"content": chat_logprobs(state, c.probs)} if n_top >= 0 else None,
                    "finish_reason": finish})
    results = [c.result for c in choices]
    return {**meta, "choices": out, "usage": runner.total_usage(results, n), "timings": timings(results[0])}


async def chat_chunks(state, events, jobs, meta: dict, prompt, include_usage: bool, with_logprobs: bool,
                      per_token: bool) -> AsyncIterator[str]:
    """OpenAI's chat stream: {"role": "assistant", "content": null} first, content deltas, tool call
    deltas, a last chunk with finish_reason, the usage (when asked for), then [DONE]."""
    meta = {**meta, "object": "chat.completion.chunk"}
    extra = {"usage": None} if include_usage else {}
    n = len(jobs)
    held = [ToolCallStream(prompt.tools, prompt.parallel) if prompt.tools else None for _ in range(n)]
    results = [None] * n

    def chunk(index: int, delta: dict, finish: str | None = None, logprobs=None, **more) -> dict:
        return {**meta, "choices": [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}],
                **extra, **more}

    for i in range(n):
        yield sse(chunk(i, {"role": "assistant", "content": None}))
    async for event in job_events(events, n):
        i = event.index
        if event.kind == "text":
            text = held[i].add(event.text) if held[i] else event.text
            lp = {"content": chat_logprobs(state, event.probs)} if with_logprobs and event.probs else None
            more = {"timings": runner.partial_timings(event)} if per_token else {}
            if text or lp:
                yield sse(chunk(i, {"content": text}, logprobs=lp, **more))
        elif event.kind == "error":
            yield sse(error_event(event.error))
        else:
            r = results[i] = event.result
            state.metrics.add(r)
            finish = r.finish_reason
            if held[i]:
                rest, calls = held[i].finish()
                if rest:
                    yield sse(chunk(i, {"content": rest}))
                for k, call in enumerate(calls):
                    yield sse(chunk(i, {"tool_calls": [{"index": k, **call}]}))
                if calls:
                    finish = "tool_calls"
            yield sse(chunk(i, {}, finish, timings=timings(r)))
    if include_usage and all(results):
        yield sse({**meta, "choices": [], "usage": runner.total_usage(results, n)})
    yield sse("[DONE]")


async def completions(state, request, body: dict):
    stream, include_usage = stream_flags(body)
    n = get_n(body, state.n_parallel)
    n_top = get_integer(body, "logprobs", -1, lo=0, hi=20)
    prompts = await asyncio.to_thread(completion_prompts, state, body)
    if len(prompts) * n > state.n_parallel + state.option("queue", 16):
        from .errors import invalid
        raise invalid("too many prompts and choices for the server's slots and queue", "prompt")
    echo = get_bool(body, "echo", False)
    jobs = await prepare_jobs(state, body, prompts, native=False, n=n, param="prompt", logprobs=n_top)
    events = submit(state, jobs)
    meta = {"id": "cmpl-" + secrets.token_hex(12), "object": "text_completion", "created": int(time.time()),
            "model": state.model_name(body), "system_fingerprint": "llamafile"}
    if stream:
        return streaming_response(state, jobs, completion_chunks(state, events, jobs, meta, include_usage, n_top >= 0))
    choices = await collect(state, request, jobs, events)
    out = []
    for c in choices:
        text = (state.model.detokenize(jobs[c.index].prompt_ids) if echo else "") + c.text
        out.append({"index": c.index, "text": text,
                    "logprobs": completion_logprobs(state, c.probs) if n_top >= 0 else None,
                    "finish_reason": c.result.finish_reason})
    return {**meta, "choices": out, "usage": runner.total_usage([c.result for c in choices], n)}


async def completion_chunks(state, events, jobs, meta: dict, include_usage: bool, with_logprobs: bool
                            ) -> AsyncIterator[str]:
    extra = {"usage": None} if include_usage else {}
    results = [None] * len(jobs)

    def chunk(index: int, text: str, finish: str | None = None, logprobs=None) -> dict:
        return {**meta, "choices": [{"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}],
                **extra}

    async for event in job_events(events, len(jobs)):
        if event.kind == "text":
            lp = completion_logprobs(state, event.probs) if with_logprobs and event.probs else None
            if event.text or lp:
                yield sse(chunk(event.index, event.text, logprobs=lp))
        elif event.kind == "error":
            yield sse(error_event(event.error))
        else:
            results[event.index] = event.result
            state.metrics.add(event.result)
            yield sse(chunk(event.index, "", event.result.finish_reason))
    if include_usage and all(results):
        yield sse({**meta, "choices": [], "usage": runner.total_usage(results, len(jobs)) if len(jobs) == 1
                   else runner.total_usage(results, 1)})
    yield sse("[DONE]")


__all__ = ["chat_completions", "completions", "usage"]
