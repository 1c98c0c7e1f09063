"""Errors the command line and the server report as one line (no heavy imports here)."""


class ContextOverflowError(ValueError):
    """More tokens than the context holds."""
