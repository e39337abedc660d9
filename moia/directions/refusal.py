"""Refusal directions: difference of means, [ARDITI]'s selection and [MOIA]'s per-layer set (PROTOCOL §4).

The mean difference (harmful − harmless prompts, accumulated in float64, stored as float32) is
read at each post-instruction position i — the chat-template tokens after the user message
(SmolLM2: ``<|im_end|> \\n <|im_start|> assistant \\n``, positions -6 … -1) — at every point of
the residual stream: ``candidates[i, s]`` for s = 0 … n_layers, where s < n_layers is the input
of block s (``resid_pre``) and s = n_layers the output of the last block. So:

- [ARDITI]'s candidate r(l, i) (``direction(l, i)``) is read at the input of block l, as
  [ARDITI]'s ``generate_directions`` reads it (a forward pre-hook on block l), and its selection
  adds it there;
- [MOIA]'s direction of layer l (``per_layer(i)[l]``, position −2) is read at the output of
  decoder layer l (``hidden_states[l + 1]`` in 03d) and ablated there, softly, with per-layer
  weights (``ablation("per_layer", weights, site="resid_post")``).

Selection ([ARDITI]): see ``moia.directions.selection``. The prompts are sampled as in [ARDITI]'s
pipeline (``arditi_sample``: 128 train and 32 val per set, seed 42) and filtered by the model's own
refusal scores (``filter_by_refusal``). On CPU the evaluation is the cost (three forwards of the
val prompts per candidate), so the default grid is small: ``default_eval_layers`` (every
``round(0.1 * n_layers)``-th layer from 0.25 depth up to ``max_depth``; SmolLM2: 8, 11, …, 23) ×
``default_eval_positions`` (the first post-instruction token, −2 and −1, where most of the
directions [ARDITI] selected for their models sit). Pass ``layers=range(n_layers),
positions=range(-n_post, 0)`` for [ARDITI]'s full sweep. Filters (b) and (c) are evaluated lazily,
in increasing order of (a), until a candidate passes all filters; this selects the same direction
as evaluating every row (rows never reached keep NaN, saved as null; ``full_table=True``
evaluates them all).

Without a selection (``select=False``, [MOIA]'s per-layer set) every prompt goes into the means,
as [MOIA]'s 03d does with its 512 + 512; nothing is filtered.
"""

import math
import os
import random
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from ..core.interventions import DirectionAblation
from ..core.layers import depth_fractions, resolve_layers
from ..core.model import LanguageModel
from ..core.sites import ABLATION_SITES
from ..io import json_meta, load_tensors, model_metadata, save_tensors
from ..lm.chat import format_chat
from .activations import residual_stream
from .prompts import arditi_sample
from .selection import (
    CandidateScorer,
    evaluate_candidates,
    filter_by_refusal,
    refusal_starts,
    refusal_token_ids,
)

KIND = "refusal_directions"
STREAM = (
    "candidates[:, s]: the input of block s for s < n_layers, the output of the last block for s = n_layers"
)
SENTINEL = "MOIA-USER-CONTENT"


def post_instruction_tokens(model: LanguageModel, system: str | None = None) -> list[str]:
    """The chat template's tokens after the user message, up to the end of the generation prompt."""
    text = format_chat(model, SENTINEL, system=system)
    suffix = text.split(SENTINEL)[-1]
    tok = model.tokenizer
    full = tok(text, add_special_tokens=False).input_ids
    tail = tok(suffix, add_special_tokens=False).input_ids
    if not tail or full[-len(tail) :] != tail:
        raise ValueError(
            f"cannot locate the post-instruction tokens {suffix!r} in the tokenized chat template"
        )
    return list(tok.convert_ids_to_tokens(tail))


@dataclass(frozen=True)
class RefusalDirections:
    """Mean differences [position, stream, d_model] (stream s < n_layers: the input of block s;
    s = n_layers: the output of the last block) and the selection that chose one candidate."""

    candidates: Float[Tensor, "pos stream d_model"]
    positions: list[int]  # negative, from the end of the prompt; aligned with candidates' dim 0
    post_instruction: list[str]
    model_name: str
    table: list[dict[str, Any]] = field(default_factory=list)
    selected_layer: int | None = None
    selected_position: int | None = None
    selection_passed: bool | None = None
    relaxed: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def n_layers(self) -> int:
        return int(self.candidates.shape[1]) - 1

    @property
    def d_model(self) -> int:
        return int(self.candidates.shape[2])

    def _stream(self, position: int) -> Float[Tensor, "stream d_model"]:
        if position not in self.positions:
            raise KeyError(f"no candidates at position {position}; positions: {self.positions}")
        return self.candidates[self.positions.index(position)]

    def direction(self, layer: int, position: int = -1) -> Float[Tensor, " d_model"]:
        """[ARDITI]'s (unnormalised) candidate r(layer, position): read at the input of block ``layer``."""
        return self._stream(position)[resolve_layers(self.n_layers, [layer])[0]]

    def per_layer(self, position: int = -2) -> Float[Tensor, "layer d_model"]:
        """[MOIA]'s set: one direction per layer at ``position`` (−2), read at each layer's output."""
        return self._stream(position)[1:]

    @property
    def selected(self) -> tuple[int, int, Float[Tensor, " d_model"]]:
        """``(layer, position, direction)`` of the [ARDITI] selection."""
        if self.selected_layer is None or self.selected_position is None:
            raise ValueError("no direction was selected (refusal_directions(..., select=False)?)")
        return (
            self.selected_layer,
            self.selected_position,
            self.direction(self.selected_layer, self.selected_position),
        )

    @property
    def selected_direction(self) -> Float[Tensor, " d_model"]:
        """The selected direction alone (e.g. for ``moia.orthogonalize_weights(model, direction)``)."""
        return self.selected[2]

    def ablation(
        self, kind: str = "selected", weights: Any = 1.0, site: str = "writers", position: int = -2
    ) -> DirectionAblation:
        """A ``DirectionAblation`` at every layer: the selected direction everywhere, or each
        layer's own direction at ``position`` (``"per_layer"``; ``weights`` may be per layer)."""
        if kind == "selected":
            return DirectionAblation(self.selected_direction, weights=weights, site=site)
        if kind == "per_layer":
            dirs = self.per_layer(position)
            return DirectionAblation(
                {layer: dirs[layer] for layer in range(self.n_layers)}, weights=weights, site=site
            )
        raise ValueError(f"kind must be 'selected' or 'per_layer', got {kind!r}")

    def save(self, path: str | os.PathLike) -> None:
        """Write safetensors (candidates, float32) with metadata, the selection table included."""
        save_tensors(
            path,
            KIND,
            {"candidates": self.candidates.float()},
            {
                "model": self.model_name,
                "d_model": str(self.d_model),
                "n_layers": str(self.n_layers),
                "stream": STREAM,
                "layers": list(range(self.n_layers)),
                "depths": depth_fractions(range(self.n_layers), self.n_layers),
                "positions": self.positions,
                "post_instruction": self.post_instruction,
                "table": [{k: _nan_to_none(v) for k, v in row.items()} for row in self.table],
                "selected": {
                    "layer": self.selected_layer,
                    "position": self.selected_position,
                    "passed": self.selection_passed,
                    "relaxed": self.relaxed,
                },
                "settings": self.settings,
            },
        )

    @classmethod
    def load(cls, path: str | os.PathLike, model: LanguageModel | None = None) -> "RefusalDirections":
        """Read a file written by ``save``; given a model, check that d_model and layers fit it."""
        tensors, meta = load_tensors(path, KIND, model)
        cands = tensors.get("candidates")
        positions = json_meta(meta, "positions", path)
        if cands is None or cands.dim() != 3 or cands.shape[0] != len(positions):
            raise ValueError(
                f"{path}: candidates tensor missing or not [{len(positions)}, n_layers, d_model]"
            )
        if "stream" not in meta:
            raise ValueError(
                f"{path}: an older refusal-direction file (candidates read at layer outputs only); "
                "extract the directions again"
            )
        if str(cands.shape[1] - 1) != meta.get("n_layers") or str(cands.shape[2]) != meta.get("d_model"):
            raise ValueError(f"{path}: candidates shape {tuple(cands.shape)} disagrees with its metadata")
        sel = json_meta(meta, "selected", path)
        return cls(
            candidates=cands,
            positions=positions,
            post_instruction=json_meta(meta, "post_instruction", path),
            model_name=meta.get("model", "unknown"),
            table=[
                {k: math.nan if v is None else v for k, v in row.items()}
                for row in json_meta(meta, "table", path)
            ],
            selected_layer=sel["layer"],
            selected_position=sel["position"],
            selection_passed=sel["passed"],
            relaxed=sel["relaxed"],
            settings=json_meta(meta, "settings", path),
        )


def _nan_to_none(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value


def _prompt_list(prompts: Any, name: str) -> list[str]:
    if isinstance(prompts, str):
        raise TypeError(f"{name} must be a list of prompts, not one string")
    out = list(prompts)
    if not out:
        raise ValueError(f"{name} is empty: refusal directions need harmful and harmless prompts")
    return out


@torch.no_grad()
def mean_difference(
    model: LanguageModel,
    harmful: Sequence[str],
    harmless: Sequence[str],
    positions: Sequence[int],
    system: str | None = None,
    batch_size: int = 16,
    progress: bool = False,
) -> Float[Tensor, "pos stream d_model"]:
    """mean(harmful) − mean(harmless) at ``positions`` at every point of the residual stream (the
    input of each block, then the output of the last one), in float64."""
    n = int(model.cfg.n_layers)
    points = [*(("resid_pre", layer) for layer in range(n)), ("resid_post", n - 1)]
    means = []
    for name, prompts in (("harmful", harmful), ("harmless", harmless)):
        texts = [format_chat(model, p, system=system) for p in prompts]
        total = torch.zeros(len(positions), n + 1, int(model.cfg.d_model), dtype=torch.float64)
        for _, acts in residual_stream(
            model, texts, points, positions, batch_size, progress, f"{name} means"
        ):
            total += acts.to(device="cpu", dtype=torch.float64).sum(0)
        means.append(total / len(texts))
    return means[0] - means[1]


def default_eval_positions(n_post: int) -> list[int]:
    """The first post-instruction token, −2 and −1 (those that exist)."""
    return sorted({-n_post, max(-2, -n_post), -1})


def default_eval_layers(n_layers: int, max_depth: float = 0.8) -> list[int]:
    """Every ``round(0.1 * n_layers)``-th layer from 0.25 depth up to (not including) ``max_depth``."""
    first = math.floor(0.25 * n_layers + 0.5)
    stride = max(1, math.floor(0.1 * n_layers + 0.5))
    return list(range(first, int(max_depth * n_layers), stride)) or [0]


def refusal_directions(
    model: LanguageModel,
    harmful: Sequence[str],
    harmless: Sequence[str],
    layers: Any = None,
    positions: Sequence[int] | None = None,
    select: bool = True,
    harmful_val: Sequence[str] | None = None,
    harmless_val: Sequence[str] | None = None,
    n_train: int = 128,
    n_val: int = 32,
    seed: int = 42,
    filter_prompts: bool = True,
    system: str | None = None,
    ablation_site: str = "writers",
    kl_max: float = 0.1,
    max_depth: float = 0.8,
    induce_threshold: float = 0.0,
    starts: Sequence[str] | None = None,
    full_table: bool = False,
    batch_size: int = 16,
    max_rows: int = 64,
    progress: bool = False,
) -> RefusalDirections:
    """Candidate refusal directions at every layer and post-instruction position, and ([ARDITI])
    the selection of one.

    Args:
        harmful, harmless: instructions (user turns). With ``select``, [ARDITI]'s sample is drawn
            (``arditi_sample(n_train, n_val, seed)``; val from ``*_val`` where given, else from the
            same pool) and, with ``filter_prompts``, filtered by the model's refusal scores
            (``filter_by_refusal``): train for the means, val for the selection. Without
            ``select`` every prompt goes into the means ([MOIA]'s per-layer set).
        layers, positions: the candidates evaluated in the selection (indices/depths; negative
            positions); default: ``default_eval_layers`` × ``default_eval_positions``.
        starts: the refusal openings scored (default: [ARDITI]'s for the model's family,
            ``moia.directions.selection.refusal_starts``).
        ablation_site: where candidates are ablated for (a) and (c): "writers" ([ARDITI]) or
            "resid_post" ([MOIA]).
        kl_max, max_depth, induce_threshold: the filters of ``refusal_selection``.
        full_table: evaluate (b) and (c) for every candidate instead of lazily.
        max_rows: prompt × candidate rows per forward in the evaluation.
    """
    harmful, harmless = _prompt_list(harmful, "harmful"), _prompt_list(harmless, "harmless")
    if ablation_site not in ABLATION_SITES:
        raise ValueError(f"unknown ablation site {ablation_site!r}: expected one of {ABLATION_SITES}")
    n_layers = int(model.cfg.n_layers)
    post = post_instruction_tokens(model, system)
    all_positions = list(range(-len(post), 0))
    settings: dict[str, Any] = {"site": STREAM, "system": system}
    if select:  # check everything before the expensive part
        hf_val = None if harmful_val is None else _prompt_list(harmful_val, "harmful_val")
        hl_val = None if harmless_val is None else _prompt_list(harmless_val, "harmless_val")
        rng = random.Random(seed)
        harmful, harmful_val = arditi_sample(harmful, hf_val, n_train, n_val, rng=rng)
        harmless, harmless_val = arditi_sample(harmless, hl_val, n_train, n_val, rng=rng)
        eval_layers = (
            default_eval_layers(n_layers, max_depth) if layers is None else resolve_layers(model, layers)
        )
        eval_positions = default_eval_positions(len(post)) if positions is None else list(positions)
        bad = [p for p in eval_positions if p not in all_positions]
        if bad:
            raise ValueError(f"positions {bad} are not post-instruction positions {all_positions} ({post})")
        starts = refusal_starts(model_metadata(model)["model"]) if starts is None else tuple(starts)
        token_ids = refusal_token_ids(model.tokenizer, starts)
        if filter_prompts:
            harmful, harmless, train_problem = filter_by_refusal(
                model, harmful, harmless, token_ids, system, batch_size
            )
            harmful_val, harmless_val, val_problem = filter_by_refusal(
                model, harmful_val, harmless_val, token_ids, system, batch_size
            )
            problems = [f"{name}: {p}" for name, p in (("train", train_problem), ("val", val_problem)) if p]
            if problems:
                warnings.warn(f"[ARDITI]'s prompt filter: {'; '.join(problems)}", stacklevel=2)
            settings["filter_problems"] = problems
        settings.update(
            n_harmful_val=len(harmful_val),
            n_harmless_val=len(harmless_val),
            sample={"n_train": n_train, "n_val": n_val, "seed": seed, "filtered": filter_prompts},
            ablation_site=ablation_site,
            refusal_starts=list(starts),
            refusal_token_ids=token_ids,
            kl_max=kl_max,
            max_depth=max_depth,
            induce_threshold=induce_threshold,
            full_table=full_table,
        )
    candidates = mean_difference(model, harmful, harmless, all_positions, system, batch_size, progress)
    settings.update(
        n_harmful_train=len(harmful), n_harmless_train=len(harmless), model_dtype=str(model.cfg.dtype)
    )
    result: dict[str, Any] = dict(
        candidates=candidates.float(),
        positions=all_positions,
        post_instruction=post,
        model_name=model_metadata(model)["model"],
        settings=settings,
    )
    if not select:
        return RefusalDirections(**result)

    assert harmful_val is not None and harmless_val is not None  # set above when select
    scorer = CandidateScorer(model, harmful_val, harmless_val, token_ids, system, ablation_site, max_rows)
    settings["baseline_refusal_score"] = scorer.baseline
    if scorer.baseline["harmful"] <= scorer.baseline["harmless"]:
        warnings.warn(
            f"{result['model_name']}: mean refusal score on harmful val prompts "
            f"({scorer.baseline['harmful']:.2f}) is not above harmless ({scorer.baseline['harmless']:.2f}); "
            "the model barely refuses, so no candidate is likely to mediate refusal",
            stacklevel=2,
        )
    grid = [(pos, layer) for layer in eval_layers for pos in eval_positions]
    dirs = torch.stack([candidates[all_positions.index(p), layer] for p, layer in grid]).float()
    table, relaxed, index, passed = evaluate_candidates(
        scorer, grid, dirs, n_layers, kl_max, max_depth, induce_threshold, full_table, progress
    )
    chosen = table[index] if index is not None else {"layer": None, "position": None}
    return RefusalDirections(
        **result,
        table=table,
        selected_layer=chosen["layer"],
        selected_position=chosen["position"],
        selection_passed=passed,
        relaxed=relaxed,
    )
