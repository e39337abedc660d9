"""Calibration on D₀, the choice of the iterate, and the one-shot certification (PROTOCOL §5).

- ``D0Calibration``: at the i-th calibration event, the FPR on a fresh batch of calibration units
  (the i-th slice of a seeded permutation of the calibration split, so a resumed run sees the same
  batches) and detection on injected trials of validation concepts; λ steps on that FPR.
- ``select_iterate``: the candidates (b = 0 and the latest ``select_candidates`` calibrated iterates)
  measured on the whole calibration split; eligible are those whose one-sided Clopper–Pearson upper
  bound at 1 - α is ≤ ε′; among them the highest validation detection, then the later step. None
  eligible is the infeasible answer: the least-FPR candidate is returned, flagged, and whether b = 0
  itself already violates ε on D₀ is said.
- ``certify``: once, on the test split: k/n of the chosen b and its one-sided upper bound at
  1 - α/m (Bonferroni over the m certified candidates), and on the same units b = 0, with McNemar's
  exact one-sided test of an increase.
"""

import random
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from torch import Tensor

from ..eval.stats import clopper_pearson_upper, mcnemar_exact
from .control import ControlUnit
from .data import TrialTokens
from .evaluation import EvalTrial, bias_intervention, run_trials, score


@runtime_checkable
class Family(Protocol):
    """What the trainer needs of D₀ (``moia.training.control.ControlFamily``; fakes in tests)."""

    kind: str

    def describe(self, n_units: int | None = None) -> str: ...

    def false_positives(
        self,
        units: Sequence[ControlUnit],
        interventions: Sequence[Any] = (),
        max_new_tokens: int = 100,
        batch_size: int = 32,
        injection: tuple[Tensor, int, float] | None = None,
    ) -> tuple[list[bool], list[str]]: ...


class D0Calibration:
    """FPR̂ on a fresh calibration batch per event, and detection on validation-concept trials."""

    def __init__(
        self,
        family: Family,
        units: Sequence[ControlUnit],
        batch: int,
        layer: int,
        site: str,
        max_new_tokens: int,
        seed: int,
        injected: Sequence[EvalTrial] = (),
        tokens: TrialTokens | None = None,
        model: Any = None,
    ) -> None:
        if not units:
            raise ValueError("the calibration split is empty")
        self.family, self.batch, self.layer, self.site = family, min(batch, len(units)), layer, site
        self.max_new_tokens, self.injected, self.tokens = max_new_tokens, list(injected), tokens
        self.model = model
        self.order = list(units)
        random.Random(seed).shuffle(self.order)
        self.event = 0

    def at_event(self, event: int) -> None:
        self.event = event

    def units_for(self, event: int) -> list[ControlUnit]:
        """The event's batch: the next slice of the permutation, wrapping round."""
        start = (event * self.batch) % len(self.order)
        return [self.order[(start + i) % len(self.order)] for i in range(self.batch)]

    def __call__(self, bias: Tensor) -> dict[str, Any]:
        arms = bias_intervention(bias, self.layer, self.site)
        units = self.units_for(self.event)
        flags, replies = self.family.false_positives(units, arms, self.max_new_tokens)
        out: dict[str, Any] = {"n_controls": len(units), "false_positives": sum(flags)}
        out["calibration_units"] = [u.index for u in units]
        out["false_positive_replies"] = [r for r, f in zip(replies, flags, strict=True) if f][:3]
        counts = {"n_injected": 0, "detected": 0, "identified": 0}
        if self.injected and self.tokens is not None and self.model is not None:
            replies = run_trials(self.model, self.tokens, self.injected, arms, self.max_new_tokens)
            got = score(self.injected, replies)
            counts = {k: got[k] for k in counts}
        return {**out, **counts}


def upper(k: int, n: int, alpha: float) -> float:
    return clopper_pearson_upper(k, n, alpha)


def select_iterate(
    family: Family,
    units: Sequence[ControlUnit],
    candidates: Sequence[dict[str, Any]],
    biases: Sequence[Tensor],
    layer: int,
    site: str,
    *,
    epsilon: float,
    target: float,
    alpha: float,
    keep: int,
    max_new_tokens: int,
) -> dict[str, Any]:
    """Measure b = 0 and the latest ``keep`` candidates on the whole calibration split; choose.

    Returns ``{"index", "feasible", "measured", "baseline_infeasible"}``: ``index`` into
    ``candidates``; ``measured`` one record per measured candidate (step, k, n, fpr, upper bound,
    eligible, validation detection of its calibration record).
    """
    if not candidates:
        raise ValueError("no calibrated iterate to choose from")
    picked = sorted({0, *range(max(0, len(candidates) - keep), len(candidates))})
    measured = []
    for i in picked:
        flags, _ = family.false_positives(units, bias_intervention(biases[i], layer, site), max_new_tokens)
        k, n = sum(flags), len(flags)
        ub = upper(k, n, alpha)
        c = candidates[i]
        measured.append(
            {
                "index": i,
                "step": c["step"],
                "false_positives": k,
                "n": n,
                "fpr": k / n,
                "upper_bound": ub,
                "eligible": ub <= target,
                "detected": c.get("detected", 0),
                "n_injected": c.get("n_injected", 0),
            }
        )
    eligible = [m for m in measured if m["eligible"]]
    if eligible:
        best = max(eligible, key=lambda m: (m["detected"] / max(m["n_injected"], 1), m["step"]))
    else:
        best = min(measured, key=lambda m: (m["fpr"], -m["step"]))
    base = measured[0]  # candidate 0: b = 0, calibrated before the first step
    return {
        "index": best["index"],
        "step": best["step"],
        "feasible": bool(eligible),
        "measured": measured,
        "epsilon_prime": target,
        "baseline_infeasible": base["fpr"] > epsilon or base["upper_bound"] > target,
    }


def certify(
    family: Family,
    units: Sequence[ControlUnit],
    bias: Tensor,
    layer: int,
    site: str,
    *,
    epsilon: float,
    alpha: float,
    n_candidates: int = 1,
    max_new_tokens: int = 100,
    random_injection: tuple[Tensor, int, float] | None = None,
) -> dict[str, Any]:
    """The one look at the test split: the report's ``certification`` object (PROTOCOL §5)."""
    if n_candidates < 1:
        raise ValueError(f"n_candidates must be >= 1, got {n_candidates}")
    level = alpha / n_candidates  # Bonferroni across the certified candidates
    with_b, _ = family.false_positives(units, bias_intervention(bias, layer, site), max_new_tokens)
    without, _ = family.false_positives(units, [], max_new_tokens)
    n, k, k0 = len(units), sum(with_b), sum(without)
    only_new = sum(a and not b for a, b in zip(with_b, without, strict=True))
    only_old = sum(b and not a for a, b in zip(with_b, without, strict=True))
    ub, ub0 = upper(k, n, level), upper(k0, n, level)
    out: dict[str, Any] = {
        "n": n,
        "false_positives": k,
        "fpr": k / n,
        "upper_bound": ub,
        "alpha": alpha,
        "bonferroni_candidates": n_candidates,
        "epsilon": epsilon,
        "certified": ub <= epsilon,
        "units": family.describe(n),
        "unit_indices": [u.index for u in units],
        "baseline": {
            "false_positives": k0,
            "n": n,
            "fpr": k0 / n,
            "upper_bound": ub0,
            "certified": ub0 <= epsilon,
        },
        "mcnemar": {
            "b_only": only_new,
            "baseline_only": only_old,
            "p_increase": mcnemar_exact(only_new, only_old),
        },
    }
    if random_injection is not None:  # the same units with a random direction injected, b and b = 0
        _, layer_r, strength = random_injection
        arms = {"with_b": bias_intervention(bias, layer, site), "baseline": []}
        got = {
            name: sum(family.false_positives(units, a, max_new_tokens, injection=random_injection)[0])
            for name, a in arms.items()
        }
        out["random_direction_injection"] = {
            "layer": layer_r,
            "strength": strength,
            "claims": got["with_b"],
            "baseline_claims": got["baseline"],
            "n": n,
        }
    return out
