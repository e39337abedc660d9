"""Language models: offline loading, chat formatting, and THE decoding engine.

- ``loading``: ``load_model`` (embedded GGUF models, local HF directories), the bridge KV-cache patch;
- ``chat``: chat formatting with an explicit system turn;
- ``decoding``: the one KV-cache ``Stepper``, the decode loop, batched / shared-prefix generation.
"""

from .chat import format_chat
from .decoding import Sampling, generate, generate_tokens
from .loading import available_models, load_model

__all__ = ["Sampling", "available_models", "format_chat", "generate", "generate_tokens", "load_model"]
