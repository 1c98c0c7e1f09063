"""llama-server's own formats: /completion and /infill (whole or streamed), /props, /slots, /metrics,
/apply-template, slot save / restore / erase."""
from __future__ import annotations

import asyncio
import re
from pathlib import Path

from .. import __version__
from .errors import APIError, invalid
from .prompts import completion_prompts, infill_prompt, render_messages
from .runner import (token_piece, Choice, collect, error_event, job_events, partial_timings, prepare_jobs, sse,
                     streaming_response, submit, timings)
from .scheduler import Job, Slot
from .validate import get_bool, get_messages


def completion_probabilities(state, probs: list[dict]) -> list[dict]:
    """llama-server's n_probs: each token with its top alternatives, as logprob or (post-sampling) prob."""
    out = []
    for p in probs:
        piece = token_piece(state, p["id"])
        entry = {"id": p["id"], "token": piece, "bytes": list(piece.encode())}
        if p["post"]:
            entry["prob"] = p["prob"]
            entry["top_probs"] = [{"id": t, "token": token_piece(state, t), "bytes": list(token_piece(state, t).encode()),
                                   "prob": q} for t, q in p["top"]]
        else:
            entry["logprob"] = p["logprob"]
            entry["top_logprobs"] = [{"id": t, "token": token_piece(state, t),
                                      "bytes": list(token_piece(state, t).encode()), "logprob": lp}
                                     for t, lp in p["top"]]
        out.append(entry)
    return out


def generation_settings(state, job: Job | None) -> dict:
    p = job.params if job is not None else state.defaults
    return {"n_ctx": state.n_ctx, "n_predict": -1 if job is None else job.max_tokens, "model": state.model_id,
            "temperature": p.temperature, "top_k": p.top_k, "top_p": p.top_p, "min_p": p.min_p,
            "repeat_penalty": p.repeat_penalty, "repeat_last_n": p.repeat_last_n,
            "presence_penalty": p.presence_penalty, "frequency_penalty": p.frequency_penalty,
            "seed": -1 if p.seed is None else p.seed, "stop": [] if job is None else job.stops,
            "ignore_eos": False if job is None else job.ignore_eos,
            "n_probs": 0 if job is None else job.n_probs,
            "logit_bias": [[t, b if b != float("-inf") else False] for t, b in p.logit_bias.items()],
            "grammar": "" if job is None or job.matcher is None else "<llguidance>"}


def final(state, job: Job, c: Choice, content: str, return_tokens: bool) -> dict:
    r = c.result
    stop_type = "word" if r.stopping_word else "eos" if r.eog else "limit"
    out = {
        "index": job.index, "content": content, "tokens": list(r.tokens) if return_tokens else [],
        "id_slot": r.slot, "stop": True, "model": state.model_id,
        "tokens_predicted": r.n_generated, "tokens_evaluated": r.n_prompt, "tokens_cached": r.n_cached,
        "truncated": False, "stop_type": stop_type, "stopping_word": r.stopping_word,
        "stopped_eos": stop_type == "eos", "stopped_word": stop_type == "word", "stopped_limit": stop_type == "limit",
        "generation_settings": generation_settings(state, job), "prompt": "",
        "timings": timings(r),
    }
    if job.n_probs and c.probs:
        out["completion_probabilities"] = completion_probabilities(state, c.probs)
    return out


async def completion(state, request, body: dict, infill: bool = False):
    """/completion (and /infill): several prompts give a list of results."""
    stream = get_bool(body, "stream", False)
    return_tokens = get_bool(body, "return_tokens", False)
    if infill:
        prompts = [await asyncio.to_thread(infill_prompt, state, body)]
    else:
        prompts = await asyncio.to_thread(completion_prompts, state, body)
    jobs = await prepare_jobs(state, body, prompts, native=True, param="prompt")
    per_token = get_bool(body, "timings_per_token", False)
    events = submit(state, jobs)
    if stream:
        return streaming_response(state, jobs, native_chunks(state, events, jobs, return_tokens, per_token))
    choices = await collect(state, request, jobs, events)
    out = [final(state, jobs[c.index], c, c.text, return_tokens) for c in choices]
    return out[0] if len(out) == 1 else out


async def native_chunks(state, events, jobs: list[Job], return_tokens: bool, per_token: bool):
    async for event in job_events(events, len(jobs)):
        if event.kind == "text":
            data = {"index": event.index, "content": event.text, "stop": False, "id_slot": -1,
                    "tokens": event.tokens if return_tokens else []}
            if jobs[event.index].n_probs:
                data["completion_probabilities"] = completion_probabilities(state, event.probs)
            if per_token:
                data["timings"] = partial_timings(event)
            yield sse(data)
        elif event.kind == "error":
            yield sse(error_event(event.error))
        else:
            state.metrics.add(event.result)
            c = Choice(event.index, result=event.result)
            data = final(state, jobs[event.index], c, "", return_tokens)
            data["tokens"] = []
            yield sse(data)


def props(state) -> dict:
    m = state.model
    out = {"model_path": str(state.model_path), "model_alias": state.model_id, "total_slots": state.n_parallel,
           "default_generation_settings": {**generation_settings(state, None), "n_ctx": state.n_ctx,
                                           "params": generation_settings(state, None)},
           "chat_template": state.template or "", "bos_token": state.bos, "eos_token": state.eos,
           "build_info": f"llamafile-python {__version__}", "is_sleeping": False,
           "modalities": {"vision": False, "audio": False},
           "endpoint_slots": not state.option("no_slots", False), "endpoint_metrics": state.option("metrics", False),
           "endpoint_props": True}
    if m is not None:
        out["n_vocab"] = m.config.n_vocab
        out["n_ctx_train"] = m.config.n_ctx_train
    return out


def slots(state) -> list[dict]:
    out = []
    for s in state.scheduler.slots:
        job = s.job
        out.append({"id": s.index, "id_task": -1, "n_ctx": s.model.n_ctx, "n_past": s.model.n_past,
                    "is_processing": job is not None, "speculative": False,
                    "params": generation_settings(state, job if job is not None and job.task is None else None),
                    "prompt": "", "next_token": {"has_next_token": job is not None,
                                                 "n_decoded": getattr(getattr(s, "gen", None), "n_generated", 0)
                                                 if job is not None else 0}})
    return out


def metrics(state) -> str:
    m, busy = state.metrics, state.scheduler.busy()
    lines = []

    def metric(name: str, kind: str, help: str, value) -> None:
        lines.extend([f"# HELP llamacpp:{name} {help}", f"# TYPE llamacpp:{name} {kind}", f"llamacpp:{name} {value}"])

    with m.lock:
        metric("prompt_tokens_total", "counter", "Number of prompt tokens processed.", m.prompt_tokens)
        metric("prompt_seconds_total", "counter", "Prompt process time", round(m.prompt_seconds, 6))
        metric("tokens_predicted_total", "counter", "Number of generation tokens processed.", m.predicted_tokens)
        metric("tokens_predicted_seconds_total", "counter", "Predict process time", round(m.predicted_seconds, 6))
        metric("requests_total", "counter", "Number of completed requests.", m.requests)
        metric("prompt_tokens_seconds", "gauge", "Average prompt throughput in tokens/s.",
               round(m.prompt_tokens / m.prompt_seconds, 3) if m.prompt_seconds else 0)
        metric("predicted_tokens_seconds", "gauge", "Average generation throughput in tokens/s.",
               round(m.predicted_tokens / m.predicted_seconds, 3) if m.predicted_seconds else 0)
    metric("requests_processing", "gauge", "Number of requests processing.", busy)
    metric("requests_deferred", "gauge", "Number of requests deferred.", len(state.scheduler.waiting))
    metric("n_busy_slots_per_decode", "gauge", "Busy slots.", busy)
    return "\n".join(lines) + "\n"


def apply_template(state, body: dict) -> dict:
    messages = get_messages(body)
    text, _, _, _ = render_messages(state, body, messages)
    return {"prompt": text}


# --- slot save / restore / erase -------------------------------------------------------------

SAFE_NAME = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


def slot_file(state, body: dict) -> Path:
    root = state.option("slot_save_path", None)
    if not root:
        raise APIError(501, "slot save and restore are off (start the server with --slot-save-path DIR)",
                       code="not_supported", type="not_supported_error")
    name = body.get("filename")
    if not isinstance(name, str) or not SAFE_NAME.match(name) or name in (".", ".."):
        raise invalid("'filename' must be a plain file name (letters, digits, . _ -)", "filename")
    return Path(root) / name


def save_slot(path: Path):
    def task(slot: Slot) -> dict:
        import numpy as np
        m, n = slot.model, slot.model.n_past
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            np.savez(f, tokens=np.asarray(m.tokens[:n], dtype=np.int64), k=m.cache.k[:, :n], v=m.cache.v[:, :n])
        return {"id_slot": slot.index, "filename": path.name, "n_saved": n, "n_written": path.stat().st_size}
    return task


def restore_slot(path: Path):
    def task(slot: Slot) -> dict:
        import numpy as np
        m = slot.model
        try:
            with np.load(path) as data:
                tokens, k, v = data["tokens"], data["k"], data["v"]
        except (OSError, ValueError, KeyError) as e:
            return APIError(400, f"cannot restore the slot from '{path.name}': {e}", code="invalid_value",
                            param="filename")
        n = len(tokens)
        if k.shape[0] != m.cache.k.shape[0] or k.shape[2:] != m.cache.k.shape[2:] or n > m.n_ctx:
            return APIError(400, f"'{path.name}' holds a cache of another model or a larger context",
                            code="invalid_value", param="filename")
        m.reset()
        m.cache.restore(k, v)
        m.tokens.extend(int(t) for t in tokens)
        return {"id_slot": slot.index, "filename": path.name, "n_restored": n,
                "n_read": path.stat().st_size}
    return task


def erase_slot(slot: Slot) -> dict:
    n = slot.model.n_past
    slot.model.reset()
    return {"id_slot": slot.index, "n_erased": n}
