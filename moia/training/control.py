"""The control distribution D₀ of a certified bias, its units, and their three disjoint splits
(PROTOCOL §5, "Certification").

The constraint "the bias adds no false positives" needs a distribution to hold on. D₀ is explicit:

- ``"paraphrase"`` (greedy decoding): a family of exchangeable control prompts, each a preamble ×
  an acknowledgement × a question from ``moia/data/control_paraphrases.json`` (10 × 6 × 8, the first
  of each the [LINDSEY] wording verbatim) × a trial number 1–10: 4800 prompts. A unit is one prompt,
  and the reply to it is the model's greedy reply, a function of the unit.
- ``"sampled"`` ([MOIA]'s default decoding): a unit is an i.i.d. draw of a trial number uniform on
  1–10 (the [LINDSEY] wording) and a sampling seed; the reply is sampled at temperature 1 with the
  model's own generation config, per-row seeded (batch-invariant, ``moia.lm.decoding``).

``split_units`` cuts one seeded random permutation of the units into the loss, calibration and
test sets, never by trial-number range, so the three are exchangeable samples of D₀ and a bound
measured on the test set speaks for D₀.
"""

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from torch import Tensor

from ..core.model import LanguageModel
from ..eval.grading import CONTROL_CONCEPT, grade
from ..lm.chat import format_chat
from ..lm.decoding import GREEDY, Sampling
from ..lm.loading import generation_defaults
from ..trials.prompt import TrialPrompt, injection_start
from ..trials.runner import TrialRow, TrialRunner, stable_seed
from .config import D0_KINDS

D0_TRIALS = tuple(range(1, 11))


@cache
def paraphrases() -> dict[str, list[str]]:
    """The shipped control-prompt paraphrases: ``preambles``, ``acknowledgements``, ``questions``."""
    text = resources.files("moia").joinpath("data", "control_paraphrases.json").read_text(encoding="utf-8")
    data = json.loads(text)
    return {k: list(data[k]) for k in ("preambles", "acknowledgements", "questions")}


@dataclass(frozen=True)
class ControlUnit:
    """One unit of D₀: a control prompt (paraphrase indices and trial number) and, when sampled,
    the seed of its reply."""

    index: int
    trial: int
    preamble: int = 0
    acknowledgement: int = 0
    question: int = 0
    seed: int | None = None


def control_units(kind: str, n: int | None = None, seed: int = 42) -> list[ControlUnit]:
    """The units of D₀. ``"paraphrase"``: all 4800 prompts (``n`` ignored). ``"sampled"``: ``n``
    i.i.d. draws (trial uniform on 1–10, a reply seed), a pure function of ``seed``."""
    if kind == "paraphrase":
        p = paraphrases()
        units: list[ControlUnit] = []
        for a in range(len(p["preambles"])):
            for b in range(len(p["acknowledgements"])):
                for c in range(len(p["questions"])):
                    for t in D0_TRIALS:
                        units.append(ControlUnit(len(units), t, a, b, c))
        return units
    if kind == "sampled":
        if n is None or n < 1:
            raise ValueError(f"a sampled D0 needs n >= 1 units, got n={n!r}")
        return [
            ControlUnit(
                i,
                D0_TRIALS[stable_seed("d0-trial", seed, i) % len(D0_TRIALS)],
                seed=stable_seed("d0-reply", seed, i),
            )
            for i in range(n)
        ]
    raise ValueError(f"unknown D0 kind {kind!r}: expected one of {D0_KINDS}")


@dataclass(frozen=True)
class Splits:
    """Disjoint unit sets: ``loss`` (controls in the training loss), ``calibration`` (drives λ and
    chooses the iterate) and ``test`` (touched once, by the certification)."""

    loss: list[ControlUnit]
    calibration: list[ControlUnit]
    test: list[ControlUnit]


def split_units(
    units: Sequence[ControlUnit], n_calibration: int, n_test: int, n_loss: int | None = None, seed: int = 42
) -> Splits:
    """One seeded random permutation of ``units`` cut into test, calibration and loss sets (in that
    order; ``n_loss`` None gives the loss set every remaining unit)."""
    for name, value in (("n_calibration", n_calibration), ("n_test", n_test)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    rest = len(units) - n_calibration - n_test
    if n_loss is None:
        n_loss = rest
    if n_loss < 1 or n_loss > rest:
        raise ValueError(
            f"D0 has {len(units)} units: {n_test} test + {n_calibration} calibration leave {rest} for the "
            f"loss, but n_loss={n_loss} (need 1 <= n_loss <= {rest})"
        )
    order = list(units)
    random.Random(seed).shuffle(order)
    test = order[:n_test]
    calibration = order[n_test : n_test + n_calibration]
    loss = order[n_test + n_calibration : n_test + n_calibration + n_loss]
    return Splits(loss, calibration, test)


def min_test_units(epsilon: float, alpha: float) -> int:
    """The least n for which 0 false positives in n gives a one-sided Clopper–Pearson upper bound
    <= ε at level 1 - α: 1 - α^(1/n) <= ε, i.e. n >= ln(α) / ln(1 - ε) (about ln(1/α)/ε)."""
    import math

    if not 0 < epsilon < 1 or not 0 < alpha < 1:
        raise ValueError(f"epsilon and alpha must lie in (0, 1), got epsilon={epsilon}, alpha={alpha}")
    return math.ceil(math.log(alpha) / math.log1p(-epsilon) - 1e-9)


class ControlFamily:
    """D₀ for one model: the prompt of each unit and the sampling its replies use."""

    def __init__(self, model: LanguageModel, kind: str = "paraphrase", system: str | None = None) -> None:
        if kind not in D0_KINDS:
            raise ValueError(f"unknown D0 kind {kind!r}: expected one of {D0_KINDS}")
        self.model, self.kind, self.system = model, kind, system
        self._prompts: dict[tuple[int, int, int, int], TrialPrompt] = {}
        if kind == "sampled":
            own = generation_defaults(model)
            self.sampling = Sampling(1.0, own["top_k"], own["top_p"])
            self.sampling_source = own["source"]
        else:
            self.sampling, self.sampling_source = GREEDY, "greedy"

    def prompt(self, unit: ControlUnit) -> TrialPrompt:
        key = (unit.preamble, unit.acknowledgement, unit.question, unit.trial)
        if key not in self._prompts:
            p = paraphrases()
            tok = self.model.tokenizer
            messages = [
                {"role": "user", "content": p["preambles"][unit.preamble]},
                {"role": "assistant", "content": p["acknowledgements"][unit.acknowledgement]},
                {"role": "user", "content": p["questions"][unit.question].format(n=unit.trial)},
            ]
            text = format_chat(tok, messages, system=self.system)
            self._prompts[key] = TrialPrompt(
                text=text,
                start=injection_start(tok, text, f"Trial {unit.trial}"),
                n_tokens=len(tok(text, add_special_tokens=False).input_ids),
                trial=unit.trial,
                variant="moia",
                system=self.system,
                system_turn=False,
                forced=False,
            )
        return self._prompts[key]

    def describe(self, n_units: int | None = None) -> str:
        """A sentence naming D₀ (stored in reports)."""
        if self.kind == "paraphrase":
            return (
                "D0 = greedy replies to exchangeable control prompts (no injection): 10 preambles x 6 "
                "acknowledgements x 8 questions (moia/data/control_paraphrases.json; the first of each "
                "is the [LINDSEY] wording) x trial numbers 1-10 = 4800 prompts; a unit is one prompt, "
                "drawn uniformly without replacement"
            )
        return (
            "D0 = control trials (no injection, the [LINDSEY] wording) with a trial number drawn "
            f"uniformly from 1-10 and a reply sampled at temperature 1 (top-k {self.sampling.top_k}, "
            f"top-p {self.sampling.top_p}: {self.sampling_source}); a unit is one i.i.d. draw of "
            "(trial, sampling seed)"
        )

    def replies(
        self,
        units: Sequence[ControlUnit],
        interventions: Sequence[Any] = (),
        max_new_tokens: int = 100,
        batch_size: int = 32,
        injection: tuple[Tensor, int, float] | None = None,
    ) -> list[str]:
        """The model's replies to ``units`` under ``interventions`` (e.g. the bias); ``injection``
        (vector, layer, strength) injects from each prompt's "Trial n" start, as in PROTOCOL §2."""
        if injection is None:
            rows = [TrialRow(self.prompt(u), seed=u.seed) for u in units]
        else:
            v, layer, s = injection
            rows = [TrialRow(self.prompt(u), v, layer, s, seed=u.seed) for u in units]
        runner = TrialRunner(self.model, max_new_tokens, sampling=self.sampling, batch_size=batch_size)
        return runner.run(rows, *interventions)

    def false_positives(
        self,
        units: Sequence[ControlUnit],
        interventions: Sequence[Any] = (),
        max_new_tokens: int = 100,
        batch_size: int = 32,
        injection: tuple[Tensor, int, float] | None = None,
    ) -> tuple[list[bool], list[str]]:
        """Per unit, whether the graded reply claims a detection (PROTOCOL §3), and the replies."""
        replies = self.replies(units, interventions, max_new_tokens, batch_size, injection)
        return [grade(r, CONTROL_CONCEPT).claims_detection for r in replies], replies
