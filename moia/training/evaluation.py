"""Measuring a bias: calibration during training, held-out verification, content-agnostic report.

- ``TrialCalibration``: the false-positive rate on a CALIBRATION set of control trials (trial
  numbers 1..10 by default: the prompts the experiment uses) and detection/introspection on a few
  injected trials of TRAIN concepts, generated greedily with ``moia.trials.runner`` and graded with
  ``moia.eval.grading.grade`` (PROTOCOL §3). Training raises its Lagrange multiplier on that FPR.
- ``verify_bias``: the false-positive rate on HELD-OUT control trials -- trial numbers the
  calibration never saw (11, 12, ... by default; with greedy decoding a control trial is a
  deterministic function of its prompt, so new trial numbers are new trials) -- with its exact
  one-sided Clopper-Pearson 95% upper bound; and whether b alone makes the model name any concept.
  The ten greedy calibration prompts differ only in their number, so they are a narrow sample:
  untrained SmolLM2-135M gives 0/10 false positives on trials 1-10 but 11/16 on trials 11-26
  (rule grader, 30 new tokens), a gap this check exists to reveal. Widen ``calibration_trials``
  when the FPR on other prompts matters.
- ``evaluate_bias``: detection and introspection on held-out concepts with and without b, next to
  the same on random directions of equal norm ([LINDSEY]'s control), each with a Wilson 95%
  interval; and ``max_abs_cos``, how far b is from every concept vector used (content-agnostic).
"""

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from ..core.interventions import AdditiveVector, Intervention
from ..core.model import LanguageModel
from ..directions.concepts import ConceptVectors
from ..eval.grading import CONTROL_CONCEPT, grade, names_concept
from ..eval.stats import clopper_pearson_upper, rate
from ..trials.runner import TrialRow, TrialRunner, random_direction
from .data import TrialTokens, trial_tokens


@dataclass(frozen=True)
class EvalTrial:
    """One generated trial: control (``vector`` None) or an injection of ``vector``."""

    trial: int
    concept: str | None = None
    layer: int = -1
    strength: float = 0.0
    vector: Tensor | None = None
    kind: str = "control"  # control, concept or random


def bias_intervention(vector: Tensor, layer: int, site: str) -> list[AdditiveVector]:
    """The (detached) bias as a list of interventions; empty for b = 0 (a no-op)."""
    if not bool(vector.detach().abs().sum() > 0):
        return []
    return [AdditiveVector(vector.detach().float().clone(), layer, site=site)]


def run_trials(
    model: LanguageModel,
    tokens: TrialTokens,
    trials: Sequence[EvalTrial],
    interventions: Sequence[Intervention] = (),
    max_new_tokens: int = 100,
    batch_size: int = 16,
) -> list[str]:
    """Greedy replies to ``trials``, batched by the one trial runner (``moia.trials.runner``)."""
    missing = sorted({t.trial for t in trials} - set(tokens.trial_prompts))
    if missing:
        raise ValueError(f"no formatted prompt for trial number(s) {missing} (build them with trial_tokens)")
    rows = [
        TrialRow(
            tokens.trial_prompts[t.trial], t.vector, t.layer if t.vector is not None else None, t.strength
        )
        for t in trials
    ]
    return TrialRunner(model, max_new_tokens, batch_size=batch_size).run(rows, *interventions)


def score(trials: Sequence[EvalTrial], replies: Sequence[str]) -> dict[str, int]:
    """Counts: controls and their false positives; injected trials, detections, introspections."""
    out = {"n_controls": 0, "false_positives": 0, "n_injected": 0, "detected": 0, "identified": 0}
    for t, reply in zip(trials, replies, strict=True):
        if t.vector is None:
            out["n_controls"] += 1
            out["false_positives"] += grade(reply, CONTROL_CONCEPT).claims_detection
        else:
            g = grade(reply, t.concept or "")
            out["n_injected"] += 1
            out["detected"] += g.claims_detection
            out["identified"] += g.claims_detection and g.identifies
    return out


class TrialCalibration:
    """FPR on calibration controls and detection on calibration injections, for a given b."""

    def __init__(
        self,
        model: LanguageModel,
        tokens: TrialTokens,
        trials: Sequence[EvalTrial],
        layer: int,
        site: str,
        max_new_tokens: int = 100,
        batch_size: int = 16,
    ) -> None:
        if not any(t.vector is None for t in trials):
            raise ValueError("the calibration set needs at least one control trial")
        self.model, self.tokens, self.trials = model, tokens, list(trials)
        self.layer, self.site = layer, site
        self.max_new_tokens, self.batch_size = max_new_tokens, batch_size

    def __call__(self, bias: Tensor) -> dict[str, Any]:
        replies = run_trials(
            self.model,
            self.tokens,
            self.trials,
            bias_intervention(bias, self.layer, self.site),
            self.max_new_tokens,
            self.batch_size,
        )
        counts = score(self.trials, replies)
        fp = [r for t, r in zip(self.trials, replies, strict=True) if t.vector is None]
        flagged = [r for r in fp if grade(r, CONTROL_CONCEPT).claims_detection]
        return {**counts, "false_positive_replies": flagged[:3]}


def verify_bias(
    model: LanguageModel,
    bias: Tensor,
    layer: int,
    site: str,
    n_controls: int = 100,
    first_trial: int = 11,
    epsilon: float = 0.0,
    concepts: Sequence[str] = (),
    max_new_tokens: int = 100,
    batch_size: int = 16,
    system: str | None = None,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """False positives of b on held-out control trials ``first_trial .. first_trial+n-1``.

    Returns the counts, the FPR, its exact one-sided Clopper-Pearson ``1 - alpha`` upper bound,
    whether the observed FPR meets ``epsilon``, and the replies that name any of ``concepts``
    (b alone should make the model name none).
    """
    if n_controls < 1:
        raise ValueError(f"n_controls must be >= 1, got {n_controls}")
    trials = [EvalTrial(first_trial + i) for i in range(n_controls)]
    tokens = trial_tokens(model, [t.trial for t in trials], [], system=system)
    replies = run_trials(
        model, tokens, trials, bias_intervention(bias, layer, site), max_new_tokens, batch_size
    )
    k = score(trials, replies)["false_positives"]
    mentions = [
        {"trial": t.trial, "concepts": named, "reply": reply}
        for t, reply in zip(trials, replies, strict=True)
        if (named := [c for c in concepts if names_concept(reply, c)])
    ]
    return {
        "held_out_trials": [first_trial, first_trial + n_controls - 1],
        "n_controls": n_controls,
        "false_positives": k,
        "fpr": k / n_controls,
        f"clopper_pearson_upper_{round(100 * (1 - alpha))}": clopper_pearson_upper(k, n_controls, alpha),
        "epsilon": epsilon,
        "meets_epsilon": k / n_controls <= epsilon,
        "replies_naming_concepts": len(mentions),
        "concept_mentions": mentions[:10],
        "max_new_tokens": max_new_tokens,
        "decoding": "greedy",
    }


def max_abs_cos(bias: Tensor, vectors: Sequence[ConceptVectors]) -> dict[str, Any]:
    """max |cos(b, v)| over every concept vector in ``vectors``, and where it is reached."""
    b = bias.detach().double().cpu()
    best: dict[str, Any] = {"max_abs_cos": 0.0, "word": None, "layer": None, "n_vectors": 0}
    if b.norm() == 0:
        return best
    for cv in vectors:
        flat = cv.vectors.double().reshape(-1, cv.d_model)
        cos = (flat @ b) / (flat.norm(dim=-1).clamp_min(1e-12) * b.norm())
        best["n_vectors"] += flat.shape[0]
        i = int(cos.abs().argmax())
        if float(cos[i].abs()) > best["max_abs_cos"]:
            word, layer = divmod(i, len(cv.layers))
            best.update(max_abs_cos=float(cos[i].abs()), word=cv.words[word], layer=cv.layers[layer])
    return best


def evaluate_bias(
    model: LanguageModel,
    bias: Tensor | None,
    layer: int,
    site: str,
    vectors: ConceptVectors,
    strengths: Sequence[float] = (2.0, 4.0),
    trials: Sequence[int] = tuple(range(1, 11)),
    control_trials: Sequence[int] = tuple(range(1, 11)),
    seed: int = 0,
    max_new_tokens: int = 100,
    batch_size: int = 16,
    system: str | None = None,
) -> dict[str, Any]:
    """Detection and introspection on the concepts and layers of ``vectors`` (held-out concepts),
    with concept vectors and with random directions of equal norm, and the FPR on the control
    trials ``control_trials`` (distinct numbers: greedy replies to equal prompts are equal).

    One injected trial per (concept, layer, strength) and kind, its trial number drawn from
    ``trials`` by a stable hash. ``bias`` None measures the model without a bias.
    """
    cells = []
    for word in vectors.words:
        for lay in vectors.layers:
            for s in strengths:
                n = trials[zlib.crc32(f"{word}/{lay}/{s}".encode()) % len(trials)]
                v = vectors.get(word, lay)
                cells.append(EvalTrial(n, word, lay, float(s), v, "concept"))
                cells.append(
                    EvalTrial(n, word, lay, float(s), random_direction(v, seed, word, lay), "random")
                )
    controls = [EvalTrial(n) for n in sorted(set(control_trials))]
    tokens = trial_tokens(model, sorted(set(trials) | set(control_trials)), [], system=system)
    interventions = [] if bias is None else bias_intervention(bias, layer, site)
    replies = run_trials(model, tokens, cells + controls, interventions, max_new_tokens, batch_size)
    out: dict[str, Any] = {
        "n_concepts": len(vectors.words),
        "layers": vectors.layers,
        "strengths": list(strengths),
    }
    for kind in ("concept", "random"):
        picked = [(t, r) for t, r in zip(cells, replies, strict=False) if t.kind == kind]
        c = score([t for t, _ in picked], [r for _, r in picked])
        out[kind] = {
            "detection": rate(c["detected"], c["n_injected"]),
            "introspection": rate(c["identified"], c["n_injected"]),
        }
    c = score(controls, replies[len(cells) :])
    out["fpr"] = rate(c["false_positives"], c["n_controls"])
    return out
