"""A stand-in model that satisfies ``moia.core.model.LanguageModel`` without weights, for tests of
code that only reads a model's configuration or tokenizer."""

import contextlib
import types
from typing import Any

import torch


class FakeModel:
    """cfg, tokenizer, hook points and parameters; running it is an error."""

    def __init__(
        self, d_model: int = 64, n_layers: int = 2, name: str | None = "tiny", tokenizer: Any = None
    ):
        self.cfg = types.SimpleNamespace(d_model=d_model, n_layers=n_layers, model_name=name or "fake")
        self.tokenizer = tokenizer
        if name is not None:
            self.moia_name = name

    @property
    def hook_dict(self) -> dict[str, Any]:
        return {}

    @contextlib.contextmanager
    def hooks(self, fwd_hooks: Any = (), *args: Any, **kwargs: Any):
        yield self

    def parameters(self, recurse: bool = True):
        return iter([torch.zeros(1)])

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("FakeModel has no weights to run")
