"""Architectures, one file each, found by the GGUF's general.architecture."""
from __future__ import annotations

from .exaone4 import Exaone4
from .gemma import Gemma
from .gemma2 import Gemma2
from .gemma3 import Gemma3
from .glm4 import GLM4
from .gptoss import GPTOSS
from .granite import Granite
from .llama import Llama
from .mistral3 import Mistral3
from .olmo2 import OLMo2
from .olmoe import OLMoE
from .phi2 import Phi2
from .phi3 import Phi3
from .qwen2 import Qwen2
from .qwen3 import Qwen3
from .qwen3moe import Qwen3MoE
from .smollm3 import SmolLM3
from .stablelm import StableLM
from .starcoder2 import StarCoder2

ARCHITECTURES = {cls.arch: cls for cls in (Llama, Qwen2, Qwen3, Gemma3, Phi3, Mistral3, SmolLM3, Granite, Gemma2,
                                           Gemma, OLMo2, StarCoder2, StableLM, Phi2, GLM4, Exaone4, Qwen3MoE, OLMoE,
                                           GPTOSS)}
