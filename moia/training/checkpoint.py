"""Resumable bias-training checkpoints: safetensors, never pickles (PROTOCOL §5).

One file holds everything an interrupted run needs to continue to the same result as an
uninterrupted one with the same seed:

- tensors: ``bias`` (the current b), ``best_bias`` (the best feasible iterate so far, if any),
  ``candidate.i`` (the certified mode's iterate at its i-th calibration),
  ``adam.exp_avg``, ``adam.exp_avg_sq``, ``adam.step`` (AdamW's state for b; absent before the
  first step), ``rng.torch`` (``torch.get_rng_state()``, uint8) and ``rng.python`` (the Mersenne
  Twister words of Python's ``random`` module, int64);
- JSON metadata (``moia_kind`` = "bias_checkpoint"): ``step``, ``multiplier`` (the Lagrange
  multiplier λ), ``config`` (the training configuration), ``adam_param_groups``, ``best`` (the
  record of the best iterate), ``history`` (loss curve and calibration records), ``candidates``
  and ``fp_units`` (the certified mode's candidate records and unlikelihood units), ``rng_python``
  (the version and gauss_next of Python's RNG state), plus the model's name, d_model, n_layers.

The trial plan is a pure function of the configuration and seed, so the step count says where to
continue; the RNG states are saved and restored all the same, so that anything that draws from the
global generators behaves identically after a resume. Writes are atomic (temporary file +
``os.replace``), so a crash mid-write leaves the previous checkpoint intact.
"""

import json
import os
import random
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..core.model import LanguageModel
from ..io import load_tensors, model_metadata, save_tensors

KIND = "bias_checkpoint"
_ADAM_KEYS = ("exp_avg", "exp_avg_sq", "step")


@dataclass
class TrainState:
    """Where a bias-training run stands after ``step`` optimizer steps."""

    step: int
    bias: Tensor
    optimizer: dict[str, Any]  # torch.optim.AdamW.state_dict() for the single parameter b
    multiplier: float
    config: dict[str, Any]
    best: dict[str, Any] | None = None
    best_bias: Tensor | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    candidates: list[dict[str, Any]] = field(default_factory=list)
    candidate_biases: list[Tensor] = field(default_factory=list)
    fp_units: list[int] = field(default_factory=list)


def save_checkpoint(path: str | os.PathLike, state: TrainState, model: LanguageModel) -> None:
    """Write ``state`` and the global RNG states to ``path`` atomically."""
    tensors: dict[str, Tensor] = {"bias": state.bias.detach().float()}
    if state.best_bias is not None:
        tensors["best_bias"] = state.best_bias.detach().float()
    adam = state.optimizer.get("state", {})
    if adam:
        (entry,) = adam.values()
        for key in _ADAM_KEYS:
            tensors[f"adam.{key}"] = torch.as_tensor(entry[key]).detach().float().reshape(-1)
    for i, c in enumerate(state.candidate_biases):
        tensors[f"candidate.{i}"] = c.detach().float()
    version, words, gauss_next = random.getstate()
    tensors["rng.torch"] = torch.get_rng_state()
    tensors["rng.python"] = torch.tensor(words, dtype=torch.int64)
    meta = {
        **model_metadata(model),
        "step": str(state.step),
        "multiplier": repr(float(state.multiplier)),
        "config": state.config,
        "adam_param_groups": state.optimizer.get("param_groups", []),
        "best": state.best,
        "history": state.history,
        "candidates": state.candidates,
        "fp_units": state.fp_units,
        "rng_python": {"version": version, "gauss_next": gauss_next},
    }
    save_tensors(path, KIND, tensors, meta)


def load_checkpoint(
    path: str | os.PathLike, model: LanguageModel | None = None, restore_rng: bool = True
) -> TrainState:
    """Read a checkpoint (checking it fits ``model``) and, by default, restore the RNG states.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the path for a file
    that is not a readable moia checkpoint.
    """
    tensors, meta = load_tensors(path, KIND, model)
    try:
        groups = json.loads(meta["adam_param_groups"])
        for group in groups:  # JSON turned the betas tuple into a list
            if "betas" in group:
                group["betas"] = tuple(group["betas"])
        adam_state = {}
        if "adam.exp_avg" in tensors:
            step = tensors["adam.step"].reshape(())
            adam_state = {0: {"step": step, **{k: tensors[f"adam.{k}"] for k in _ADAM_KEYS[:2]}}}
        state = TrainState(
            step=int(meta["step"]),
            bias=tensors["bias"],
            optimizer={"state": adam_state, "param_groups": groups},
            multiplier=float(meta["multiplier"]),
            config=json.loads(meta["config"]),
            best=json.loads(meta["best"]),
            best_bias=tensors.get("best_bias"),
            history=json.loads(meta["history"]),
            candidates=json.loads(meta.get("candidates", "[]")),
            candidate_biases=[
                tensors[f"candidate.{i}"] for i in range(len(json.loads(meta.get("candidates", "[]"))))
            ],
            fp_units=[int(u) for u in json.loads(meta.get("fp_units", "[]"))],
        )
        rng_python = json.loads(meta["rng_python"])
        words = tuple(int(w) for w in tensors["rng.python"].tolist())
        rng_torch = tensors["rng.torch"]
    except (KeyError, ValueError, TypeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a complete moia bias checkpoint ({type(e).__name__}: {e})") from e
    if restore_rng:
        torch.set_rng_state(rng_torch)
        random.setstate((rng_python["version"], words, rng_python["gauss_next"]))
    return state
