"""The HTTP application: routes to the handlers of each format, API keys, CORS, errors as JSON.

Each route only reads the body, checks the model is loaded and calls a handler that takes
(state, request, body); the handlers live in openai_api, llamacpp_api, anthropic_api,
responses_api and embeddings, and know nothing of FastAPI beyond the request they may poll.
"""

import asyncio
import hmac
import re
from importlib import resources
from pathlib import Path

from . import anthropic_api, embeddings, llamacpp_api, openai_api, responses_api
from .errors import APIError, internal, invalid
from .prompts import check_token_ids
from .validate import get_bool, is_integer, parse_body

MAX_BODY = 1 << 20          # bytes of a request body; more is 413
PUBLIC_PATHS = frozenset({"/", "/index.html", "/health", "/v1/health", "/favicon.ico", "/v1/models", "/models"})
LOCAL_ORIGINS = r"^https?://(localhost|127\.0\.0\.1|\[::1\])(:\d+)?$"


def create_app(state):
    from fastapi import FastAPI, Request
    from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
    from starlette.exceptions import HTTPException

    app = FastAPI(title="llamafile", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.llamafile = state

    def error_response(request, e: APIError):
        body = e.anthropic_body() if request.url.path.startswith("/v1/messages") else e.body()
        headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else None
        return JSONResponse(body, status_code=e.status, headers=headers)

    @app.exception_handler(APIError)
    async def api_error(request: Request, e: APIError):
        return error_response(request, e)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException):
        codes = {404: "not_found", 405: "method_not_allowed"}
        where = f"{request.method} {request.url.path}"
        message = {404: f"no such endpoint: {where}",
                   405: f"method not allowed: {where}"}.get(e.status_code, str(e.detail))
        return error_response(request, APIError(e.status_code, message, code=codes.get(e.status_code),
                                                type="not_found_error" if e.status_code == 404
                                                else "invalid_request_error"))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, e: Exception):
        return error_response(request, internal(e))

    async def ready_body(request: Request, allow_empty: bool = False) -> dict:
        body = await read_json(request, allow_empty)
        state.require_model()
        state.model_name(body)  # a bad "model" is a 400 before any job is queued
        return body

    @app.get("/", response_class=HTMLResponse)
    @app.get("/index.html", response_class=HTMLResponse)
    async def index():
        return HTMLResponse(web_page(), headers={"Cache-Control": "no-cache"})

    @app.get("/web/{path:path}")
    async def web(path: str):
        return web_file(path)

    @app.get("/health")
    @app.get("/v1/health")
    async def health():
        if state.status == "loading":
            return JSONResponse(state.loading_status(), status_code=503)
        if state.status != "ok":
            return JSONResponse({"status": "error", "error": state.error}, status_code=500)
        problem = state.guard.problem() if state.guard is not None else None
        if problem is not None:
            return JSONResponse({"status": "error", "error": problem}, status_code=503)
        busy = state.scheduler.busy()
        return {"status": "ok", "slots_idle": len(state.scheduler.slots) - busy, "slots_processing": busy}

    @app.get("/v1/models")
    @app.get("/models")
    async def models():
        entry = {"id": state.model_id, "object": "model", "created": state.created, "owned_by": "llamafile",
                 "aliases": [state.model_id]}
        if state.model is not None:
            m = state.model
            entry["meta"] = {"n_ctx": m.n_ctx, "n_ctx_train": m.config.n_ctx_train, "n_vocab": m.config.n_vocab,
                             "n_params": m.n_params, "arch": m.config.arch, "n_embd": m.config.n_embd}
        return {"object": "list", "data": [entry],
                "models": [{"name": state.model_id, "model": state.model_id, "type": "model"}]}

    @app.get("/props")
    async def props():
        state.require_model()
        return llamacpp_api.props(state)

    @app.get("/slots")
    async def slots():
        if state.option("no_slots", False):
            raise APIError(501, "the slots endpoint is off (--no-slots)", code="not_supported",
                           type="not_supported_error")
        state.require_model()
        return llamacpp_api.slots(state)

    @app.post("/slots/{id_slot}")
    async def slot_action(id_slot: str, request: Request, action: str = ""):
        body = await ready_body(request, allow_empty=True)
        if not re.fullmatch(r"[0-9]{1,9}", id_slot) or int(id_slot) >= state.n_parallel:  # "²".isdigit() too
            raise invalid(f"no slot '{id_slot[:20]}' (0..{state.n_parallel - 1})", "id_slot")
        index = int(id_slot)
        from .scheduler import Job
        if action == "save":
            task = llamacpp_api.save_slot(llamacpp_api.slot_file(state, body))
        elif action == "restore":
            path = llamacpp_api.slot_file(state, body)
            if not path.is_file():
                raise APIError(404, f"no saved slot '{path.name}'", code="not_found", param="filename")
            task = llamacpp_api.restore_slot(path)
        elif action == "erase":
            task = llamacpp_api.erase_slot
        else:
            raise invalid("'action' must be save, restore or erase", "action")
        if state.scheduler.slots[index].job is not None:
            raise APIError(409, f"slot {index} is busy", code="slot_busy")
        from .runner import collect, submit
        job = Job(prompt_ids=[], params=state.defaults, max_tokens=0, task=task, id_slot=index)
        value = (await collect(state, request, [job], submit(state, [job])))[0].result.value
        if isinstance(value, APIError):
            raise value
        return value

    @app.get("/metrics")
    async def metrics():
        if not state.option("metrics", False):
            raise APIError(501, "metrics are off (start the server with --metrics)", code="not_supported",
                           type="not_supported_error")
        state.require_model()
        return PlainTextResponse(llamacpp_api.metrics(state), media_type="text/plain; version=0.0.4")

    @app.post("/v1/chat/completions")
    @app.post("/chat/completions")
    async def chat_completions(request: Request):
        return await openai_api.chat_completions(state, request, await ready_body(request))

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await openai_api.completions(state, request, await ready_body(request))

    @app.post("/completion")
    @app.post("/completions")
    async def completion(request: Request):
        return await llamacpp_api.completion(state, request, await ready_body(request))

    @app.post("/infill")
    async def infill(request: Request):
        return await llamacpp_api.completion(state, request, await ready_body(request), infill=True)

    @app.post("/v1/responses")
    async def responses(request: Request):
        return await responses_api.responses(state, request, await ready_body(request))

    @app.post("/v1/messages")
    async def messages(request: Request):
        return await anthropic_api.messages(state, request, await ready_body(request))

    @app.post("/v1/messages/count_tokens")
    async def count_tokens(request: Request):
        body = await ready_body(request)
        chat = anthropic_api.to_openai({**body, "max_tokens": body.get("max_tokens") or 1})
        from .prompts import chat_prompt
        from .validate import get_messages
        prompt = await asyncio.to_thread(chat_prompt, state, chat, get_messages(chat))
        return {"input_tokens": len(prompt.ids)}

    @app.post("/apply-template")
    async def apply_template(request: Request):
        body = await ready_body(request)
        return await asyncio.to_thread(llamacpp_api.apply_template, state, body)

    @app.post("/v1/embeddings")
    @app.post("/embeddings")
    async def openai_embeddings(request: Request):
        return await embeddings.openai_embeddings(state, request, await ready_body(request))

    @app.post("/embedding")
    async def native_embedding(request: Request):
        return await embeddings.native_embedding(state, request, await ready_body(request))

    @app.post("/tokenize")
    async def tokenize(request: Request):
        body = await ready_body(request)
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
        body = await ready_body(request)
        tokens = body.get("tokens")
        if not isinstance(tokens, list) or not all(is_integer(t) for t in tokens):
            raise invalid("'tokens' must be a list of token ids", "tokens",
                          "missing_required_parameter" if tokens is None else "invalid_type")
        ids = [int(t) for t in tokens]
        check_token_ids(state, ids, "tokens")
        return {"content": await asyncio.to_thread(state.model.detokenize, ids)}

    api_key = state.option("api_key", None)
    wrapped = ApiKeyMiddleware(app, api_key) if api_key else app
    return cors(wrapped, state.option("cors_origins", None), app)


def cors(inner, origins: str | None, app):
    """Answers preflights and adds the CORS headers: for --cors-origins (comma-separated, * for any),
    by default for pages served from localhost only."""
    from starlette.middleware.cors import CORSMiddleware

    listed = [o.strip() for o in (origins or "").split(",") if o.strip()]
    kwargs = {"allow_origins": listed} if listed else {"allow_origin_regex": LOCAL_ORIGINS}
    wrapped = CORSMiddleware(inner, allow_methods=["*"], allow_headers=["*"], max_age=600,
                             allow_credentials="*" not in listed, **kwargs)
    wrapped.state = app.state  # tests and tools find the State here as on the app
    return wrapped


class ApiKeyMiddleware:
    """401 unless the request carries 'Authorization: Bearer KEY' or 'X-Api-Key: KEY'; the page,
    /health and /v1/models stay open."""

    def __init__(self, app, key: str):
        self.app, self.key = app, key.encode()
        self.state = app.state

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
                error = APIError(401, "Invalid API Key: send 'Authorization: Bearer KEY' or 'X-Api-Key: KEY'",
                                 code="invalid_api_key", type="authentication_error")
                body = error.anthropic_body() if scope["path"].startswith("/v1/messages") else error.body()
                await JSONResponse(body, status_code=401, headers={"WWW-Authenticate": "Bearer"})(scope, receive, send)
                return
        await self.app(scope, receive, send)


def web_page() -> str:
    return resources.files("llamafile").joinpath("web/index.html").read_text(encoding="utf-8")


async def read_json(request, allow_empty: bool = False) -> dict:
    """The body as a JSON object: 413 past MAX_BODY; validate.parse_body says what else is a 400."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_BODY:
        raise APIError(413, f"the request body is over {MAX_BODY} bytes", code="request_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise APIError(413, f"the request body is over {MAX_BODY} bytes", code="request_too_large")
        chunks.append(chunk)
    return parse_body(b"".join(chunks), allow_empty)




WEB_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml",
             ".png": "image/png", ".woff2": "font/woff2", ".md": "text/plain; charset=utf-8",
             ".LICENSE": "text/plain; charset=utf-8"}


def web_file(path: str):
    """GET /web/PATH: a file of the page's folder (llamafile/web: vendored libraries, favicon), public
    like the page; 404 for anything else (other types, '..', folders)."""
    from fastapi.responses import Response
    from starlette.exceptions import HTTPException
    root = Path(__file__).resolve().parents[1] / "web"
    file = (root / path).resolve()
    kind = WEB_TYPES.get(file.suffix)
    if kind is None or not file.is_relative_to(root) or not file.is_file():
        raise HTTPException(404)
    return Response(file.read_bytes(), media_type=kind, headers={"Cache-Control": "max-age=3600"})
