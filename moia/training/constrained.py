"""A bias trained and certified on the explicit control distribution D₀ (PROTOCOL §5).

``train_certified`` is what ``moia.training.train_bias`` runs by default:

1. D₀'s units (``moia.training.control``) split at random into loss, calibration and test sets;
2. training: [MOIA]'s injected examples; the control examples are D₀ loss units. Mode
   ``"certified"``: the decision-focused surrogate and unlikelihood rows (``objective``), λ by
   proxy-Lagrangian steps toward ε′ = ``calibration_share`` × ε on fresh calibration batches, the
   iterate chosen on the whole calibration split (``certified.select_iterate``). Mode ``"moia"``:
   [MOIA]'s recipe as published (its control cross-entropy on trials 1–10, no constraint, the last
   iterate);
3. the certification, once, on the test split, against b = 0 on the same units.
"""

import random
import warnings
from collections.abc import Sequence
from typing import Any

from ..core.model import LanguageModel
from ..directions.bias import BiasVector
from ..directions.concepts import ConceptVectors
from ..lm.decoding import token_ids
from ..trials.runner import random_direction
from .certified import D0Calibration, Family, certify, select_iterate
from .config import TrainConfig
from .control import ControlFamily, Splits, control_units, split_units
from .data import Example, TrialTokens, plan_epoch
from .evaluation import EvalTrial, bias_intervention, max_abs_cos, verify_bias
from .fit import FitResult, bias_file, fit
from .objective import Objective
from .surrogate import answer_token_sets


def d0_splits(cfg: TrainConfig) -> Splits:
    """The three disjoint random splits of D₀'s units for ``cfg`` (seeded with ``cfg.seed``)."""
    if cfg.d0 == "paraphrase":
        units = control_units("paraphrase")
        n_loss = None
    else:
        n_loss = max(64, cfg.calibration_units)  # i.i.d. draws: as many loss units as wanted
        units = control_units("sampled", n_loss + cfg.calibration_units + cfg.test_units, seed=cfg.seed)
    return split_units(units, cfg.calibration_units, cfg.test_units, n_loss, seed=cfg.seed)


def family_tokens(model: LanguageModel, family: Any, units: Sequence[Any], tokens: TrialTokens) -> None:
    """Add the prompt token ids and injection starts of ``units`` to ``tokens`` (in place)."""
    for u in units:
        if u.index in tokens.units:
            continue
        if hasattr(family, "unit_tokens"):
            ids, start = family.unit_tokens(u)
        else:
            prompt = family.prompt(u)
            ids, start = token_ids(model, prompt.text), prompt.start
        tokens.units[u.index], tokens.unit_starts[u.index] = ids, start


def train_certified(
    model: LanguageModel,
    concepts: list[str],
    cfg: TrainConfig,
    bias_layer: int,
    band: list[int],
    cv: ConceptVectors,
    tokens: TrialTokens,
    *,
    val_trials: Sequence[EvalTrial] = (),
    family: Family | None = None,
    answer_sets: tuple[Sequence[int], Sequence[int]] | None = None,
    checkpoint: Any = None,
    resume: bool = False,
    progress: bool = True,
    run_config: dict[str, Any] | None = None,
    certify_test: bool = True,
) -> BiasVector:
    """Train, choose and certify (see the module docstring); returns the bias with its report in
    ``verification`` (``certification``, ``selection``, ``splits``)."""
    if cfg.epsilon is None and cfg.mode == "certified":
        raise ValueError("mode='certified' needs epsilon (the FPR bound); epsilon=None is mode='moia'")
    fam: Any = family if family is not None else ControlFamily(model, cfg.d0, cfg.system)
    splits = d0_splits(cfg)
    by_index = {u.index: u for u in splits.loss}

    def ensure_tokens(indices: Sequence[int]) -> None:  # tokenize loss units when first used
        family_tokens(model, fam, [by_index[i] for i in indices], tokens)

    epsilon = cfg.epsilon if cfg.epsilon is not None else 0.0
    target = epsilon * cfg.calibration_share
    certified_mode = cfg.mode == "certified"

    def plan(epoch: int) -> list[Example]:
        examples = plan_epoch(concepts, band, cfg.strengths, cfg.trials, cfg.control_prob, cfg.seed + epoch)
        if not certified_mode:
            return examples  # [MOIA]'s own controls: trials 1-10, its "No" target
        rng = random.Random(cfg.seed + 1000 + epoch)
        examples = [
            e if e.concept is not None else Example(e.trial, None, unit=rng.choice(splits.loss).index)
            for e in examples
        ]
        ensure_tokens([e.unit for e in examples if e.unit is not None])
        return examples

    objective = calibrator = None
    if certified_mode:
        aff, neg = answer_sets if answer_sets is not None else answer_token_sets(model)

        def sampler(bias: Any, step: int) -> list[int]:
            if cfg.unlikelihood_units == 0:
                return []
            drawn = random.Random(cfg.seed + 7919 * (step + 1)).sample(
                splits.loss, min(cfg.unlikelihood_units, len(splits.loss))
            )
            flags, _ = fam.false_positives(
                drawn, bias_intervention(bias, bias_layer, cfg.site), cfg.max_new_tokens
            )
            return [u.index for u, f in zip(drawn, flags, strict=True) if f]

        objective = Objective(target, aff, neg, cfg.surrogate, sampler, ensure=ensure_tokens)
        calibrator = D0Calibration(
            fam,
            splits.calibration,
            cfg.calibration_batch,
            bias_layer,
            cfg.site,
            cfg.max_new_tokens,
            cfg.seed + 2,
            val_trials,
            tokens,
            model=model,
        )
    run_config = {**(run_config or cfg.to_json()), "train_concepts": concepts}
    result: FitResult = fit(
        model,
        plan,
        tokens,
        cv,
        cfg,
        bias_layer,
        calibrator,
        checkpoint,
        resume,
        progress,
        run_config,
        objective,
    )
    verification: dict[str, Any] = {"mode": cfg.mode, "multiplier": result.multiplier}
    verification["splits"] = {
        "d0": fam.describe(),
        "loss": len(splits.loss),
        "calibration": len(splits.calibration),
        "test": len(splits.test),
    }
    bias = result.final
    if certified_mode:
        selection = select_iterate(
            fam,
            splits.calibration,
            result.candidates,
            result.candidate_biases,
            bias_layer,
            cfg.site,
            epsilon=epsilon,
            target=target,
            alpha=cfg.alpha,
            keep=cfg.select_candidates,
            max_new_tokens=cfg.max_new_tokens,
        )
        bias = result.candidate_biases[selection["index"]]
        verification["selection"] = selection
        verification["feasible"] = selection["feasible"]
        if not selection["feasible"]:
            warnings.warn(
                "infeasible: no candidate's calibration upper bound is <= epsilon' = "
                f"{target}; returning the least-FPR iterate (b = 0 itself "
                f"{'already violates' if selection['baseline_infeasible'] else 'meets'} epsilon on D0)",
                stacklevel=3,
            )
    if certify_test:  # a layer sweep certifies only the layer it chooses (the test set is seen once)
        verification["certification"] = certify_bias(model, cfg, fam, splits, bias, bias_layer, band, cv)
    if certify_test and certified_mode and not verification["feasible"]:
        verification["certification"]["infeasible"] = True
    if cfg.verify_controls:  # a labelled robustness check outside D₀: greedy trials 11, 12, ...
        first = max(*cfg.trials, *cfg.calibration_trials) + 1
        verification["robustness_trials_11_plus"] = verify_bias(
            model, bias, bias_layer, cfg.site, n_controls=cfg.verify_controls, first_trial=first,
            epsilon=epsilon, max_new_tokens=cfg.max_new_tokens, system=cfg.system, alpha=cfg.alpha,
        )  # fmt: skip
    verification["max_abs_cos_train_vectors"] = max_abs_cos(bias, [cv])
    return bias_file(model, cfg.site, bias, bias_layer, band, run_config, result, verification)


def certify_bias(
    model: LanguageModel,
    cfg: TrainConfig,
    family: Any,
    splits: Splits,
    bias: Any,
    bias_layer: int,
    band: list[int],
    cv: ConceptVectors,
) -> dict[str, Any]:
    """The certification of ``bias`` on the test split (``certified.certify``), with the random-
    direction arm when ``cfg.certify_random``."""
    random_injection = None
    if cfg.certify_random:  # [LINDSEY]'s control: a random direction of a concept vector's norm
        at = band[len(band) // 2]
        like = cv.get(cv.words[0], at)
        random_injection = (random_direction(like, cfg.seed, "certification", at), at, max(cfg.strengths))
    epsilon = cfg.epsilon if cfg.epsilon is not None else 0.0
    return certify(
        family, splits.test, bias, bias_layer, cfg.site, epsilon=epsilon, alpha=cfg.alpha,
        max_new_tokens=cfg.max_new_tokens, random_injection=random_injection,
    )  # fmt: skip
