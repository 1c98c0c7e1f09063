"""Embeddings (--embedding): the model's last hidden states (after the output norm), pooled
(--pooling mean | last | cls | none) and, unless asked otherwise, scaled to unit length.

    POST /v1/embeddings  OpenAI: {"input": text | [texts] | [ids] | [[ids]]} -> data[i].embedding
    POST /embedding      llama-server: {"content": ...} -> [{"index", "embedding": [[...]] or [...]}]
"""
from __future__ import annotations

import asyncio
import base64

import numpy as np

from .errors import APIError, context_exceeded, invalid
from .prompts import one_prompt
from .runner import collect, submit
from .scheduler import Job, Slot
from .validate import get_integer, get_string

POOLINGS = ("mean", "last", "cls", "none")


def hidden_states(model, ids: list[int]) -> np.ndarray:
    """(len(ids), n_embd) float32: the normalised last hidden state of every token, from an empty context."""
    model.reset()
    rows = []
    n_batch = model.state.n_batch
    for first in range(0, len(ids), n_batch):
        chunk = ids[first:first + n_batch]
        model.eval(chunk, all_logits=True)
        rows.append(model.state.h[: len(chunk)].copy())
    return np.concatenate(rows)


def pool(h: np.ndarray, pooling: str) -> np.ndarray:
    if pooling == "mean":
        return h.mean(axis=0)
    if pooling == "cls":
        return h[0]
    if pooling == "last":
        return h[-1]
    return h


def normalise(x: np.ndarray, norm: int) -> np.ndarray:
    """llama.cpp's embd_normalize: -1 none, 0 max-abs (int16 range), 2 euclidean, p > 2 p-norm."""
    if norm < 0:
        return x
    if norm == 0:
        scale = np.abs(x).max(axis=-1, keepdims=True) / 32760.0
    elif norm == 2:
        scale = np.linalg.norm(x, axis=-1, keepdims=True)
    else:
        scale = (np.abs(x) ** norm).sum(axis=-1, keepdims=True) ** (1.0 / norm)
    return x / np.where(scale > 0, scale, 1.0)


def embed_task(ids: list[int], pooling: str, norm: int):
    def task(slot: Slot):
        return normalise(pool(hidden_states(slot.model, ids), pooling).astype(np.float64), norm)
    return task


def check_enabled(state) -> None:
    if not state.option("embedding", False):
        raise APIError(501, "embeddings are off: start the server with --embedding", code="not_supported",
                       type="not_supported_error")


def inputs(state, v, name: str) -> list[list[int]]:
    if v is None:
        raise invalid(f"'{name}' is required", name, "missing_required_parameter")
    if isinstance(v, str) or (isinstance(v, list) and v and all(isinstance(t, int) and not isinstance(t, bool)
                                                                 for t in v)):
        items = [v]
    elif isinstance(v, list) and v:
        items = v
    else:
        raise invalid(f"'{name}' must be a text, a list of texts, or token ids", name, "invalid_type")
    if len(items) > 64:
        raise invalid(f"'{name}' holds at most 64 inputs", name)
    out = [one_prompt(state, item, name) for item in items]
    for ids in out:
        if len(ids) > state.n_ctx:
            raise context_exceeded(len(ids), state.n_ctx, name)
    return out


async def run(state, request, prompts: list[list[int]], pooling: str, norm: int) -> list[np.ndarray]:
    jobs = [Job(prompt_ids=ids, params=state.defaults, max_tokens=0, task=embed_task(ids, pooling, norm), index=i)
            for i, ids in enumerate(prompts)]
    events = submit(state, jobs)
    return [c.result.value for c in await collect(state, request, jobs, events)]


async def openai_embeddings(state, request, body: dict) -> dict:
    check_enabled(state)
    pooling = state.option("pooling", None) or "mean"
    if pooling == "none":
        raise invalid("/v1/embeddings needs pooled embeddings (start with --pooling mean, last or cls)", "input")
    fmt = get_string(body, "encoding_format", "float")
    if fmt not in ("float", "base64"):
        raise invalid("'encoding_format' must be 'float' or 'base64'", "encoding_format")
    if body.get("dimensions") is not None:
        get_integer(body, "dimensions", None, lo=1)
    prompts = await asyncio.to_thread(inputs, state, body.get("input"), "input")
    vectors = await run(state, request, prompts, pooling, 2)
    data = []
    for i, vec in enumerate(vectors):
        emb = (base64.b64encode(vec.astype(np.float32).tobytes()).decode() if fmt == "base64"
               else vec.astype(np.float32).tolist())
        data.append({"object": "embedding", "index": i, "embedding": emb})
    n = sum(len(p) for p in prompts)
    return {"object": "list", "data": data, "model": state.model_name(body),
            "usage": {"prompt_tokens": n, "total_tokens": n}}


async def native_embedding(state, request, body: dict) -> list[dict]:
    check_enabled(state)
    pooling = state.option("pooling", None) or "mean"
    norm = get_integer(body, "embd_normalize", 2, lo=-1, hi=2**31 - 1)  # llama.cpp's is an int32
    content = body.get("content", body.get("input"))
    prompts = await asyncio.to_thread(inputs, state, content, "content")
    vectors = await run(state, request, prompts, pooling, norm)
    return [{"index": i, "embedding": v.astype(np.float32).tolist() if v.ndim == 2
             else [v.astype(np.float32).tolist()]} for i, v in enumerate(vectors)]
