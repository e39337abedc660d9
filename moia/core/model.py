"""What moia needs of a model: the ``LanguageModel`` protocol, and facts read off it once.

Both TransformerLens backends satisfy the protocol: ``HookedTransformer`` (transformer-lens < 4) and
``TransformerBridge`` (which wraps a Hugging Face model as ``original_model``).
"""

from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn


@runtime_checkable
class LanguageModel(Protocol):
    """A TransformerLens model: config, tokenizer, parameters, named hook points and a forward."""

    cfg: Any  # HookedTransformerConfig or the bridge's config: d_model, n_layers, dtype, ...
    tokenizer: Any  # a Hugging Face tokenizer

    @property
    def hook_dict(self) -> dict[str, Any]: ...

    def hooks(self, fwd_hooks: Any = ..., *args: Any, **kwargs: Any) -> AbstractContextManager[Any]: ...

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]: ...

    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...


def device_of(model: LanguageModel) -> torch.device:
    """The device of the model's (first) parameters."""
    return next(model.parameters()).device


def is_bridge(model: object) -> bool:
    """Whether ``model`` is a TransformerBridge (it wraps a Hugging Face model)."""
    return type(model).__name__ == "TransformerBridge" or hasattr(model, "original_model")


def hf_model(model: LanguageModel) -> Any:
    """The Hugging Face model a TransformerBridge wraps (its modules carry the bridge's hooks)."""
    if not is_bridge(model):
        raise TypeError(f"{type(model).__name__} does not wrap a Hugging Face model")
    return model.original_model  # type: ignore[attr-defined]


def n_layers(model: LanguageModel) -> int:
    return int(model.cfg.n_layers)


def d_model(model: LanguageModel) -> int:
    return int(model.cfg.d_model)


def model_name(model: LanguageModel) -> str:
    """moia's name for the model (``load_model``'s name), else TransformerLens' model name."""
    return str(getattr(model, "moia_name", None) or getattr(model.cfg, "model_name", "unknown"))
