"""Errors the command line and the server report as one line (no heavy imports here)."""
from weights.gguf import GGUFError


class ContextOverflowError(ValueError):
    """More tokens than the context holds."""


class TokenizerError(GGUFError):
    """A vocabulary the project cannot read (an unsupported tokenizer type, a missing key)."""
