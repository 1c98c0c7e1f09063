"""Errors answered as OpenAI (and llama-server) do: {"error": {"message", "type", "param", "code"}}."""
from __future__ import annotations


class APIError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None,
                 type: str = "invalid_request_error", param: str | None = None, **extra):
        super().__init__(message)
        self.status, self.message, self.code, self.type, self.param = status, message, code, type, param
        self.extra = extra  # more fields of the error object (llama-server's n_prompt_tokens, n_ctx)

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code,
                          **self.extra}}

    def anthropic_body(self) -> dict:
        kinds = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
                 413: "request_too_large", 503: "overloaded_error"}
        return {"type": "error", "error": {"type": kinds.get(self.status, "api_error"), "message": self.message}}


def invalid(message: str, param: str | None = None, code: str = "invalid_value") -> APIError:
    return APIError(400, message, code=code, param=param)


def internal(e: BaseException) -> APIError:
    return APIError(500, f"internal error: {type(e).__name__}: {e}", code="internal_error", type="server_error")


def context_exceeded(n_prompt: int, n_ctx: int, param: str = "messages") -> APIError:
    """llama-server's exceed_context_size_error (with the counts), code as OpenAI's."""
    return APIError(400, f"the request exceeds the available context size: this model's context is {n_ctx} tokens "
                         f"(per slot), the prompt has {n_prompt}, which leaves no room for a reply",
                    code="context_length_exceeded", type="exceed_context_size_error", param=param,
                    n_prompt_tokens=n_prompt, n_ctx=n_ctx)


class QueueFull(APIError):
    def __init__(self, waiting: int):
        super().__init__(503, f"the server is busy: {waiting} requests are waiting (see --queue)",
                         code="server_busy", type="server_error")


def shutting_down() -> APIError:
    return APIError(503, "the server is shutting down", code="shutting_down", type="server_error")
