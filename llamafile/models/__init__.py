"""Architectures, one file each, found by the GGUF's general.architecture."""
from __future__ import annotations

from .llama import Llama
from .qwen2 import Qwen2

ARCHITECTURES = {cls.arch: cls for cls in (Llama, Qwen2)}
