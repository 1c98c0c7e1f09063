"""llamafile for Python: run a GGUF language model locally on the CPU."""
from weights.gguf import GGUFError

from .model import ContextOverflowError, Model, load

__version__ = "0.1.0"
__all__ = ["GGUFError", "ContextOverflowError", "Model", "load", "__version__"]
