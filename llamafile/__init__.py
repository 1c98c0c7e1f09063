"""llamafile for Python: run a GGUF language model locally on the CPU.

    import llamafile
    model = llamafile.load("SmolLM2-135M-Instruct.Q4_1.gguf")
    ids = model.tokenize("The capital of France is")
    print(model.detokenize(list(model.generate(ids, max_tokens=16, temperature=0))))

The model and the kernels load on first use, so `llamafile.cli` can pick the CPU level first.
"""
from weights.gguf import GGUFError

from .errors import ContextOverflowError, TokenizerError

__version__ = "0.1.0"
__all__ = ["GGUFError", "ContextOverflowError", "TokenizerError", "Model", "load", "load_tokenizer", "__version__"]


def __getattr__(name: str):
    if name in ("Model", "load"):
        from . import model
        return getattr(model, name)
    if name == "load_tokenizer":
        from .tokenizers import load_tokenizer
        return load_tokenizer
    raise AttributeError(f"module 'llamafile' has no attribute '{name}'")
