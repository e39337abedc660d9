"""The trained content-agnostic bias vector and its file format (PROTOCOL §5, [MOIA] §6).

A ``BiasVector`` is one vector b ∈ R^d_model added at every position of one hook site of one
layer, in every trial, injected or control. ``bias.intervention()`` gives the ``AdditiveVector``
that applies it; ``load_bias(path, model)`` goes from a file to that intervention in one call.

File format (``kind = "bias_vector"``, format version 1): one safetensors file holding

- tensor ``"bias"``: float32 [d_model], the vector b;
- string metadata (JSON where structured):
  ``moia_kind`` = "bias_vector", ``format_version`` = "1",
  ``model`` (the model's ``moia_name``), ``d_model``, ``n_layers``,
  ``layer`` (decoder layer index), ``depth`` (layer / n_layers), ``site`` (a ``moia.core.sites.SITES``
  name: "mlp_pre_norm" is [MOIA]'s site, the MLP down-projection output before Gemma's
  post-feed-forward norm; "resid_post" the decoder layer's output),
  ``config`` (JSON: the training configuration, ``moia.training.TrainConfig`` as a dict, plus the
  concept split), ``verification`` (JSON: the calibration record of the chosen iterate, the
  held-out false-positive check of ``moia.training.evaluation``, max |cos(b, v)|, and any
  evaluation report), ``history`` (JSON: the training curve and calibration records; may be
  absent).

Files are written atomically (temporary file + ``os.replace``); loading checks the kind and, given
a model, that d_model and the layer count match (a different model name only warns).
"""

import json
import os
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..core.interventions import AdditiveVector
from ..core.model import LanguageModel
from ..core.sites import SITES
from ..io import check_fits, json_meta, load_tensors, save_tensors

KIND = "bias_vector"


@dataclass
class BiasVector:
    """A trained bias b with what it was made for and how it was made and checked."""

    vector: Tensor  # [d_model], checked in __post_init__
    layer: int
    site: str
    model_name: str
    n_layers: int
    config: dict[str, Any] = field(default_factory=dict)
    verification: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.vector.dim() != 1:
            raise ValueError(f"a bias vector must be 1-D [d_model], got shape {tuple(self.vector.shape)}")
        if not torch.isfinite(self.vector).all():
            raise ValueError("the bias vector contains NaN or inf values")
        if self.site not in SITES:
            raise ValueError(f"unknown hook site {self.site!r}: expected one of {SITES}")
        if not 0 <= self.layer < self.n_layers:
            raise ValueError(f"layer {self.layer} out of range for a model with {self.n_layers} layers")

    @property
    def d_model(self) -> int:
        return int(self.vector.shape[0])

    @property
    def depth(self) -> float:
        return self.layer / self.n_layers

    def check_model(self, model: LanguageModel, where: Any = "bias vector") -> None:
        """Raise if ``model`` has another d_model or layer count than the one b was trained on."""
        meta = {"model": self.model_name, "d_model": str(self.d_model), "n_layers": str(self.n_layers)}
        check_fits(meta, model, where)

    def intervention(self, scale: float = 1.0) -> AdditiveVector:
        """The ``AdditiveVector`` that adds ``scale * b`` at this site and layer, every position."""
        return AdditiveVector(self.vector.detach().clone(), self.layer, scale=scale, site=self.site)

    def save(self, path: str | os.PathLike) -> None:
        """Write the file described in the module docstring (atomically)."""
        meta: dict[str, Any] = {
            "model": self.model_name,
            "d_model": str(self.d_model),
            "n_layers": str(self.n_layers),
            "layer": str(self.layer),
            "depth": str(self.depth),
            "site": self.site,
            "config": self.config,
            "verification": self.verification,
            "history": self.history,
        }
        save_tensors(path, KIND, {"bias": self.vector.detach().float()}, meta)

    @classmethod
    def load(cls, path: str | os.PathLike, model: LanguageModel | None = None) -> "BiasVector":
        """Read a bias file; given a model, check that it fits (d_model, layer count)."""
        tensors, meta = load_tensors(path, KIND, model)
        if "bias" not in tensors:
            raise ValueError(f"{path}: no 'bias' tensor in a bias-vector file")
        vector = tensors["bias"].float()
        if vector.dim() != 1 or str(vector.shape[0]) != meta.get("d_model"):
            raise ValueError(
                f"{path}: bias shape {tuple(vector.shape)} disagrees with d_model={meta.get('d_model')}"
            )
        try:
            return cls(
                vector=vector,
                layer=int(meta["layer"]),
                site=meta["site"],
                model_name=meta.get("model", "unknown"),
                n_layers=int(meta["n_layers"]),
                config=json_meta(meta, "config", path),
                verification=json_meta(meta, "verification", path),
                history=json.loads(meta.get("history", "[]")),
            )
        except (KeyError, ValueError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: inconsistent bias-vector file ({e})") from e


def load_bias(
    path: str | os.PathLike, model: LanguageModel | None = None, scale: float = 1.0
) -> AdditiveVector:
    """The intervention stored in a bias file; checks it fits ``model`` (as ``AdditiveVector.load``)."""
    return BiasVector.load(path, model).intervention(scale)
