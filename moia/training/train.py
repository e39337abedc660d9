"""Train the content-agnostic bias vector under an explicit false-positive constraint (PROTOCOL §5).

[MOIA] §6 trains one vector b ∈ R^d_model (zero init), added at every position at one layer (the
MLP down-projection output of layer 29 of 62, before Gemma's post-feed-forward norm), with the model
frozen: teacher-forced "Yes, I detect ... **"word"**." targets on injected trials and "No, I don't
detect ..." targets on control trials (``moia.training.data``), next-token cross-entropy on the target
tokens, AdamW lr 1e-3, batch 8, one epoch. [MOIA] controls false positives only through the "No"
examples. Here the constraint is explicit:

    minimise  L_inj(b) + w_c · L_ctrl(b)   subject to   FPR_cal(b) <= ε      (ε = 0 by default)

solved with a Lagrange multiplier λ on the control loss, the differentiable surrogate of the FPR:

    L(b, λ) = L_inj(b) + (w_c + λ) · L_ctrl(b)

where L_inj and L_ctrl are the summed target cross-entropy of the batch's injected and control rows
divided by the batch's target-token count (so w_c = 1, λ = 0 is exactly [MOIA]'s loss, the mean over
all target tokens). Before the first step, every ``eval_every`` steps and after the last, the FPR is
measured on a calibration set of control trials (greedy generation with b, graded by
``moia.eval.grading``; ``moia.training.evaluation.TrialCalibration``) and λ takes a dual-ascent step,
λ <- max(0, λ + dual_lr · (FPR_cal - ε)); with ε = 0, λ only grows while false positives persist.
An evaluated iterate is feasible when FPR_cal <= ε; the returned b is the best feasible one: the
highest calibration detection rate (injected trials of train concepts), then introspection rate,
then the later step. b = 0 is evaluated too, so a model that meets the constraint untrained always
has a feasible iterate; if none is feasible the one with the lowest FPR is returned, flagged.
``epsilon=None`` trains without the constraint ([MOIA] as published) and returns the last iterate.
The result is then verified on held-out control trials (``moia.training.evaluation.verify_bias``).

Defaults are [MOIA]'s, layers as depth fractions so that they scale to small models: bias at depth
29/62 (layer 14 of SmolLM2's 30), injection band = [MOIA] code's layers 29, 31, ..., 55 of 62
(depth 0.47-0.89), strengths {2, 3, 4, 5}, trials 1..10, control probability 0.5, seed 42.
"""

import pathlib
import random
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from ..core.layers import resolve_layers
from ..core.model import LanguageModel
from ..directions.bias import BiasVector
from ..directions.concepts import ConceptVectors, concept_vectors, concept_words
from .config import MOIA_EVAL_DEPTHS, TrainConfig, make_config
from .constrained import certify_bias, d0_splits, train_certified
from .control import ControlFamily
from .data import Example, TrialTokens, plan_epoch, trial_tokens
from .evaluation import EvalTrial, TrialCalibration, evaluate_bias, max_abs_cos, verify_bias
from .fit import FitResult, bias_file, fit


def calibration_trials(
    cfg: TrainConfig, concepts: Sequence[str], band: Sequence[int], vectors: ConceptVectors
) -> list[EvalTrial]:
    """Calibration controls (one per calibration trial number) and a seeded sample of injected
    trials of train concepts (concept, trial, band layer and strength drawn with seed + 1)."""
    rng = random.Random(cfg.seed + 1)
    trials = [EvalTrial(n) for n in sorted(set(cfg.calibration_trials))]
    for _ in range(cfg.calibration_injected):
        word, n = rng.choice(list(concepts)), rng.choice(list(cfg.calibration_trials))
        layer, s = rng.choice(list(band)), float(rng.choice(list(cfg.strengths)))
        trials.append(EvalTrial(n, word, layer, s, vectors.get(word, layer), "concept"))
    return trials


def _vectors_for(
    model: LanguageModel, concepts: list[str], layers: list[int], given: ConceptVectors | None, progress: bool
):
    if given is None:
        return concept_vectors(model, concepts, layers, progress=progress)
    missing_layers = sorted(set(layers) - set(given.layers))
    missing_words = [w for w in concepts if w not in given.words]
    if missing_layers or missing_words:
        raise ValueError(
            f"the given concept vectors lack layers {missing_layers} and/or words {missing_words[:10]}"
            " that training needs"
        )
    if given.d_model != int(model.cfg.d_model):
        raise ValueError(
            f"the given concept vectors have d_model={given.d_model}, the model {model.cfg.d_model}"
        )
    return given


def train_bias(
    model: LanguageModel,
    train_concepts: Sequence[str],
    layer: int | float | None = None,
    *,
    config: TrainConfig | None = None,
    vectors: ConceptVectors | None = None,
    checkpoint: Any = None,
    resume: bool = False,
    progress: bool = True,
    calibrator: Callable[[Any], dict[str, Any]] | None = None,
    tokens: TrialTokens | None = None,
    val_concepts: Sequence[str] = (),
    family: Any = None,
    answer_sets: tuple[Sequence[int], Sequence[int]] | None = None,
    certify_test: bool = True,
    **options: Any,
) -> BiasVector:
    """Train b on ``train_concepts`` (PROTOCOL §5) under FPR_cal <= ε; see the module docstring.

    Args:
        layer: the bias layer (index or depth; default [MOIA]'s depth 29/62).
        config, options: a ``TrainConfig`` and/or its fields by name (``lr=...``, ``epsilon=...``).
        vectors: concept vectors of the train concepts at the injection band (computed if None).
        checkpoint: a path; written every ``checkpoint_every`` steps and at the end.
        resume: continue from ``checkpoint`` if it exists (same config required); the result equals
            an uninterrupted run's.
        calibrator: a callable b -> counts on fixed calibration trials; given, training takes the
            earlier path (``TrialCalibration``-style calibration, held-out trials 11+), not D₀'s.
        tokens: replaces the tokenized PROTOCOL §2 prompts and targets (``trial_tokens``).
        val_concepts: validation concepts (disjoint from train and held-out): the calibration's
            injected trials, whose detection chooses among eligible iterates.
        family: replaces D₀ (``moia.training.control.ControlFamily``); answer_sets: the
            (affirmative, negative) first-token ids of the surrogate (default from the tokenizer).
    """
    if layer is not None:
        options["layer"] = layer
    cfg = make_config(config, **options)
    concepts = list(train_concepts)
    if not concepts:
        raise ValueError("train_concepts is empty: the bias needs at least one concept to train on")
    bias_layer = resolve_layers(model, [cfg.layer])[0]
    band = resolve_layers(model, list(cfg.injection_layers))
    extra = [w for w in val_concepts if w not in concepts] if calibrator is None and vectors is None else []
    cv = _vectors_for(model, [*concepts, *extra], band, vectors, progress)  # one pass for train + val
    if tokens is None:
        all_trials = sorted(set(cfg.trials) | set(cfg.calibration_trials))
        tokens = trial_tokens(model, all_trials, concepts, cfg.system, cfg.lowercase_target)
    if calibrator is None:  # the default: D₀, its splits and the certification
        val = list(val_concepts)
        overlap = sorted(set(val) & set(concepts))
        if overlap:
            raise ValueError(f"val_concepts overlap the train concepts: {overlap[:10]}")
        known = all(w in cv.words for w in val)
        val_cv = cv if known else concept_vectors(model, val, band, progress=progress)
        n_controls = len(set(cfg.calibration_trials))  # calibration_trials lists the controls first
        val_trials = calibration_trials(cfg, val, band, val_cv)[n_controls:] if val else []
        return train_certified(
            model, concepts, cfg, bias_layer, band, cv, tokens,
            val_trials=val_trials, family=family, answer_sets=answer_sets, checkpoint=checkpoint,
            resume=resume, progress=progress, run_config={**cfg.to_json(), "val_concepts": val},
            certify_test=certify_test,
        )  # fmt: skip
    if calibrator is None:
        trials = calibration_trials(cfg, concepts, band, cv)
        calibrator = TrialCalibration(model, tokens, trials, bias_layer, cfg.site, cfg.max_new_tokens)

    def plan(epoch: int) -> list[Example]:
        return plan_epoch(concepts, band, cfg.strengths, cfg.trials, cfg.control_prob, cfg.seed + epoch)

    run_config = {**cfg.to_json(), "train_concepts": concepts}
    result = fit(
        model, plan, tokens, cv, cfg, bias_layer, calibrator, checkpoint, resume, progress, run_config
    )
    return finish(model, result, cfg, bias_layer, band, concepts, cv, run_config)


def finish(
    model: LanguageModel,
    result: FitResult,
    cfg: TrainConfig,
    bias_layer: int,
    band: list[int],
    concepts: list[str],
    cv: ConceptVectors,
    run_config: dict[str, Any],
) -> BiasVector:
    """Verify the trained b on held-out controls and package it as a ``BiasVector``."""
    verification: dict[str, Any] = {
        "calibration": result.best,
        "feasible": result.feasible,
        "multiplier": result.multiplier,
    }
    if result.feasible is False:
        warnings.warn(
            f"no evaluated iterate met the calibration constraint FPR <= {cfg.epsilon}; returning the "
            "one with the lowest calibration FPR",
            stacklevel=3,
        )
    if cfg.verify_controls:
        first = max(*cfg.trials, *cfg.calibration_trials) + 1
        verification["held_out"] = verify_bias(
            model,
            result.bias,
            bias_layer,
            cfg.site,
            n_controls=cfg.verify_controls,
            first_trial=first,
            epsilon=cfg.epsilon if cfg.epsilon is not None else 0.0,
            concepts=list(dict.fromkeys([*concepts, *concept_words("test"), *concept_words("extra")])),
            max_new_tokens=cfg.max_new_tokens,
            system=cfg.system,
        )
        if not verification["held_out"]["meets_epsilon"]:
            held = verification["held_out"]
            warnings.warn(
                f"held-out control FPR {held['false_positives']}/{held['n_controls']} exceeds epsilon "
                f"{cfg.epsilon}",
                stacklevel=3,
            )
    verification["max_abs_cos_train_vectors"] = max_abs_cos(result.bias, [cv])
    return bias_file(model, cfg.site, result.bias, bias_layer, band, run_config, result, verification)


def sweep_bias_layers(
    model: LanguageModel,
    train_concepts: Sequence[str],
    val_concepts: Sequence[str],
    layers: Sequence[int | float],
    *,
    config: TrainConfig | None = None,
    eval_layers: Sequence[int | float] = MOIA_EVAL_DEPTHS,
    eval_strengths: Sequence[float] = (2.0, 4.0),
    checkpoint_dir: Any = None,
    resume: bool = False,
    progress: bool = True,
    **options: Any,
) -> tuple[BiasVector, list[dict[str, Any]]]:
    """One bias per layer in ``layers`` ([MOIA]'s meta-layer sweep), the best chosen on a validation
    split: among biases feasible on calibration whose validation FPR meets ε, the highest validation
    detection, then introspection. The chosen bias is verified on held-out controls; the table
    (one row per layer) is returned and stored in its ``verification["layer_sweep"]``."""
    cfg = make_config(config, **options)
    if not list(val_concepts):
        raise ValueError("val_concepts is empty: the layer sweep chooses on a validation split")
    bias_layers = resolve_layers(model, list(layers))
    band = resolve_layers(model, list(cfg.injection_layers))
    at = resolve_layers(model, list(eval_layers))
    words = [*train_concepts, *val_concepts]
    cv = concept_vectors(model, words, sorted(set(band) | set(at)), progress=progress)
    val = ConceptVectors(
        list(val_concepts),
        at,
        cv.vectors[[cv.words.index(w) for w in val_concepts]][:, [cv.layers.index(a) for a in at]],
        cv.model_name,
        cv.n_layers,
        cv.settings,
    )
    eps = cfg.epsilon if cfg.epsilon is not None else 1.0
    rows: list[dict[str, Any]] = []
    trained: list[BiasVector] = []
    for bias_layer in bias_layers:
        ckpt = (
            None
            if checkpoint_dir is None
            else pathlib.Path(checkpoint_dir) / f"bias-L{bias_layer}.ckpt.safetensors"
        )
        b = train_bias(
            model,
            train_concepts,
            bias_layer,
            config=cfg,
            vectors=cv,
            checkpoint=ckpt,
            resume=resume,
            progress=progress,
            verify_controls=0,
            certify_test=False,
        )
        report = evaluate_bias(
            model,
            b.vector,
            bias_layer,
            cfg.site,
            val,
            eval_strengths,
            control_trials=cfg.calibration_trials,
            max_new_tokens=cfg.max_new_tokens,
            system=cfg.system,
        )
        ok = b.verification.get("feasible") is not False and report["fpr"]["rate"] <= eps
        rows.append({"layer": bias_layer, "eligible": ok, "validation": report})
        trained.append(b)
    eligible = [i for i, r in enumerate(rows) if r["eligible"]] or list(range(len(rows)))
    best = max(
        eligible,
        key=lambda i: (
            rows[i]["validation"]["concept"]["detection"]["rate"],
            rows[i]["validation"]["concept"]["introspection"]["rate"],
        ),
    )
    chosen = trained[best]
    if "selection" in chosen.verification:  # certified on D₀'s test split, once, for the chosen layer
        chosen.verification["certification"] = certify_bias(
            model, cfg, ControlFamily(model, cfg.d0, cfg.system), d0_splits(cfg), chosen.vector, chosen.layer,
            band, cv,
        )  # fmt: skip
    if cfg.verify_controls:
        chosen.verification["held_out"] = verify_bias(
            model,
            chosen.vector,
            chosen.layer,
            cfg.site,
            n_controls=cfg.verify_controls,
            first_trial=max(*cfg.trials, *cfg.calibration_trials) + 1,
            epsilon=eps if cfg.epsilon is not None else 0.0,
            concepts=words,
            max_new_tokens=cfg.max_new_tokens,
            system=cfg.system,
        )
    chosen.verification["layer_sweep"] = rows
    return chosen, rows
