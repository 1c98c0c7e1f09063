"""`llamafile --server`: llama-server's HTTP API (OpenAI, llama.cpp and Anthropic formats) and a web chat.

    validate.py      request fields checked (400s naming the field)
    errors.py        error bodies (OpenAI's, with llama-server's extras; Anthropic's)
    scheduler.py     slots, the queue and the worker thread (no web framework)
    prompts.py       chat templates (tools, prefill), completion prompts, fill-in-the-middle
    grammar.py       constrained decoding with llguidance (JSON schema, GBNF)
    tools.py         tool calls rendered and parsed (Hermes/Qwen, Llama 3.x, generic)
    runner.py        jobs from a request, their events, whole or streamed replies
    openai_api.py    /v1/chat/completions, /v1/completions
    responses_api.py /v1/responses
    anthropic_api.py /v1/messages
    llamacpp_api.py  /completion, /infill, /props, /slots, /metrics, /apply-template
    embeddings.py    /v1/embeddings, /embedding
    state.py         what the handlers share (model, names, counters)
    app.py           the FastAPI routes, API keys, CORS
    run.py           binding (--host list, --port), uvicorn, start and stop

One worker thread owns the model: it loads it, then runs all generation. `--parallel N` gives N
slots, N contexts sharing the memory-mapped weights, with -c split between them; each turn of the
worker advances every busy slot by one token, so N replies stream together. Requests beyond the
slots wait in a queue of `--queue` places; past it they get 503. The flags are cli.py's.
"""
from ..generate import StopText
from .app import MAX_BODY, create_app
from .errors import APIError, QueueFull
from .run import Server, bind, serve, start_in_thread
from .scheduler import Event, Job, Result, Scheduler, Slot
from .state import State

__all__ = ["MAX_BODY", "APIError", "Event", "Job", "QueueFull", "Result", "Scheduler", "Server", "Slot", "State",
           "StopText", "bind", "create_app", "serve", "start_in_thread"]
