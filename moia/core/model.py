"""What moia needs of a model: the ``LanguageModel`` protocol, and facts read off it once.

Three models satisfy the protocol: TransformerLens' ``HookedTransformer`` (transformer-lens < 4) and
``TransformerBridge`` (which wraps a Hugging Face model as ``original_model``), and moia's own
``NativeModel`` (``moia.lm.native``: a plain Hugging Face model, also as ``original_model``, with
TransformerLens hook names placed as torch hooks on its modules).
"""

from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn


@runtime_checkable
class HookPoint(Protocol):
    """A named hook site with TransformerLens' ``HookPoint`` calling convention: ``add_hook(fn,
    level=...)`` adds ``fn(tensor, hook=point)`` at a context level, ``remove_hooks(level=...)``
    removes the hooks of that level only."""

    name: Any

    def add_hook(self, hook: Any, dir: Any = ..., is_permanent: bool = ..., level: Any = ...) -> None: ...

    def remove_hooks(self, dir: Any = ..., including_permanent: bool = ..., level: Any = ...) -> None: ...


@runtime_checkable
class LanguageModel(Protocol):
    """A TransformerLens-style model: config, tokenizer, parameters, named hook points and a forward.

    Models with a ``context_level`` counter (all three above) get their hooks added to the hook
    points directly (``moia.core.compile``); others through ``hooks``.
    """

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
    """Whether ``model`` is a TransformerBridge."""
    return any(c.__name__ == "TransformerBridge" for c in type(model).__mro__)


def wraps_hf(model: object) -> bool:
    """Whether ``model`` runs a Hugging Face model's forward (TransformerBridge, NativeModel)."""
    return hasattr(model, "original_model")


def hf_model(model: LanguageModel) -> Any:
    """The Hugging Face model a TransformerBridge or NativeModel wraps (on the bridge, its modules
    carry the bridge's hook points)."""
    if not wraps_hf(model):
        raise TypeError(f"{type(model).__name__} does not wrap a Hugging Face model")
    return model.original_model  # type: ignore[attr-defined]


def n_layers(model: LanguageModel) -> int:
    return int(model.cfg.n_layers)


def d_model(model: LanguageModel) -> int:
    return int(model.cfg.d_model)


def model_name(model: LanguageModel) -> str:
    """moia's name for the model (``load_model``'s name), else TransformerLens' model name."""
    return str(getattr(model, "moia_name", None) or getattr(model.cfg, "model_name", "unknown"))
