"""The grid of an injected-thought sweep and its trials, each with a deterministic id (PROTOCOL §2).

A sweep is concepts × injection layers × strengths × trial numbers × samples, for each arm and
each vector kind:

- ``concept``: the concept vector v(word, L) ([LINDSEY], [MOIA]);
- ``random``: a random direction with the norm of v(word, L), seeded per (seed, word, layer)
  ([LINDSEY]'s control: detection must beat the rate that any perturbation of that size gives);

plus, per arm, control trials (no injection): ``controls`` of them (PROTOCOL §3: enough to bound
the false-positive rate), cycling through ``control_trials`` with a new sample index each round,
or by default one per control trial number and sample; and the forced arm (reply prefilled with
``FORCED_PREFILL``) for the kinds in ``forced_kinds``, with forced controls per concept and trial
number (how often the prefill alone names the concept).

The injection starts at the token before "Trial n" (``inject_from="trial"``, the sweep of
PROTOCOL §2) or at every position (``"all"``, [MOIA]'s ablation experiment, PROTOCOL §4).
Sampled runs (temperature > 0) use ``top_k`` / ``top_p``; None takes the model's own generation
config, as Hugging Face's ``generate`` does (``moia.lm.loading.generation_defaults``).

A trial id names everything that decides its result within a run
(``baseline/concept/Dust/L18/s4/t1/n0/free``); settings shared by the whole run (model, prompt
variant, system turn, sampling, new tokens) are checked once per output folder instead.
"""

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ..core.layers import resolve_layers

ARMS = ("baseline", "ablation", "bias", "ablation+bias")
KINDS = ("concept", "random")
CONTROL = "control"
INJECT_FROM = ("trial", "all")


@dataclass(frozen=True)
class TrialSpec:
    """One trial. ``kind`` is concept, random or control; controls have no layer and strength 0."""

    arm: str
    kind: str
    concept: str | None
    layer: int | None
    strength: float
    trial: int
    sample: int
    forced: bool

    @property
    def id(self) -> str:
        layer = "-" if self.layer is None else f"L{self.layer}"
        return (
            f"{self.arm}/{self.kind}/{self.concept or '-'}/{layer}/s{self.strength:g}/"
            f"t{self.trial}/n{self.sample}/{'forced' if self.forced else 'free'}"
        )

    @property
    def injected(self) -> bool:
        return self.kind != CONTROL

    @property
    def sample_key(self) -> str:
        """The id without the arm: the arms of one sweep share each trial's sampling seed."""
        return self.id.split("/", 1)[1]


@dataclass
class Sweep:
    """The grid and the run-wide settings of a sweep.

    ``layers`` are decoder layer indices or depth fractions (``moia.core.layers``);
    ``control_trials`` defaults to ``trials``.
    """

    concepts: list[str] = field(metadata={"help": "concept words (the shipped test/extra lists)"})
    layers: list[int | float] = field(metadata={"help": "injection layers: indices or depth fractions"})
    strengths: list[float] = field(metadata={"help": "injection strengths (> 0)"})
    trials: list[int] = field(
        default_factory=lambda: list(range(1, 11)), metadata={"help": "trial numbers of injected trials"}
    )
    control_trials: list[int] | None = field(
        default=None, metadata={"help": "trial numbers of control trials (none: those of --trials)"}
    )
    samples: int = field(default=1, metadata={"help": "samples per trial (with --temperature > 0)"})
    controls: int | None = field(
        default=None,
        metadata={"help": "free control trials per arm (none: one per control trial number and sample)"},
    )
    inject_from: str = field(
        default="trial",
        metadata={
            "help": "injection start: the token before 'Trial n', or all positions",
            "choices": INJECT_FROM,
        },
    )
    arms: list[str] = field(
        default_factory=lambda: ["baseline"], metadata={"help": "arms to run", "choices": ARMS}
    )
    kinds: list[str] = field(
        default_factory=lambda: list(KINDS), metadata={"help": "vector kinds injected", "choices": KINDS}
    )
    forced: bool = field(default=True, metadata={"help": "run the forced (prefilled) arm"})
    forced_kinds: list[str] = field(
        default_factory=lambda: ["concept"],
        metadata={"help": "vector kinds of forced trials", "choices": KINDS},
    )
    variant: str = field(
        default="moia", metadata={"help": "trial prompt variant", "choices": ("moia", "lindsey")}
    )
    system: str | None = field(
        default="", metadata={"help": "the system turn ('': an empty one; none: no system message)"}
    )
    max_new_tokens: int = field(default=100, metadata={"help": "new tokens per reply"})
    temperature: float = field(default=0.0, metadata={"help": "0 = greedy"})
    top_k: int | None = field(
        default=None, metadata={"help": "top-k when sampling (none: the model's generation config; 0: off)"}
    )
    top_p: float | None = field(
        default=None, metadata={"help": "top-p when sampling (none: the model's generation config; 1: off)"}
    )
    seed: int = field(default=0, metadata={"help": "seeds random directions and sampling"})
    batch_size: int = field(
        default=0,
        metadata={"help": "trials per generate call (0: planned from free GPU memory; 32 on CPU)"},
    )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def control_numbers(self) -> list[int]:
        return list(self.trials if self.control_trials is None else self.control_trials)

    def _validate_controls(self) -> None:
        if self.controls is None:
            return
        if isinstance(self.controls, bool) or not isinstance(self.controls, int) or self.controls < 0:
            raise ValueError(f"controls must be an integer >= 0, got {self.controls!r}")
        distinct = len(set(self.control_numbers))
        if self.temperature == 0 and self.controls > distinct:
            raise ValueError(
                f"controls={self.controls} with greedy decoding: the {distinct} control trial numbers give "
                f"only {distinct} distinct replies; sample (--temperature > 0) or ask for at most {distinct}"
            )

    def control_specs(self) -> list[tuple[int, int]]:
        """(trial number, sample) of each free control trial of an arm."""
        numbers = self.control_numbers
        if self.controls is None:
            return [(t, n) for t in numbers for n in range(self.samples)]
        return [(numbers[i % len(numbers)], i // len(numbers)) for i in range(self.controls)]

    def validate(self, n_layers: int | None) -> list[int]:
        """Check the grid (user errors raise ``ValueError`` naming the bad value); return the
        resolved layer indices (with ``n_layers=None``: check all but the layers, return [])."""
        if not self.concepts:
            raise ValueError("concepts must not be empty")
        dupes = sorted({c for c in self.concepts if self.concepts.count(c) > 1})
        if dupes:
            raise ValueError(f"concepts contains duplicates: {dupes}")
        # without a model, a huge layer count catches all but layers past the model's last one
        layers = resolve_layers(n_layers or 2**31, list(self.layers))
        if not self.strengths:
            raise ValueError("strengths must not be empty")
        for s in self.strengths:
            if not (isinstance(s, (int, float)) and math.isfinite(s) and s > 0):
                raise ValueError(f"strength {s!r} out of range: strengths must be finite and > 0")
        for t in [*self.trials, *(self.control_trials or [])]:
            if isinstance(t, bool) or not isinstance(t, int) or t < 1:
                raise ValueError(f"trial number {t!r} out of range: trial numbers are integers >= 1")
        if not self.trials:
            raise ValueError("trials must not be empty")
        if self.samples < 1:
            raise ValueError(f"samples must be >= 1, got {self.samples}")
        if self.samples > 1 and self.temperature == 0:
            raise ValueError(
                f"samples={self.samples} needs temperature > 0: greedy replies to one prompt are identical"
            )
        self._validate_controls()
        if self.inject_from not in INJECT_FROM:
            raise ValueError(f"unknown inject_from {self.inject_from!r}: expected one of {list(INJECT_FROM)}")
        if self.top_k is not None and (isinstance(self.top_k, bool) or self.top_k < 0):
            raise ValueError(f"top_k must be an integer >= 0 (0: off) or None, got {self.top_k!r}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must lie in (0, 1] (1: off) or be None, got {self.top_p!r}")
        for name, values, allowed in (
            ("arm", self.arms, ARMS),
            ("kind", self.kinds, KINDS),
            ("forced kind", self.forced_kinds, KINDS),
        ):
            for v in values:
                if v not in allowed:
                    raise ValueError(f"unknown {name} {v!r}: expected one of {list(allowed)}")
        if not self.arms:
            raise ValueError("arms must not be empty")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.batch_size < 0:
            raise ValueError(f"batch_size must be >= 0 (0: planned from free memory), got {self.batch_size}")
        return layers if n_layers else []


def arm_trials(sweep: Sweep, arm: str, layers: Sequence[int]) -> list[TrialSpec]:
    """Every trial of one arm, in a fixed order: free trials, then forced ones."""
    out: list[TrialSpec] = []
    for forced in (False, True) if sweep.forced else (False,):
        kinds = sweep.forced_kinds if forced else sweep.kinds
        for kind in kinds:
            for concept in sweep.concepts:
                for layer in layers:
                    for strength in sweep.strengths:
                        for trial in sweep.trials:
                            for n in range(sweep.samples):
                                out.append(
                                    TrialSpec(arm, kind, concept, layer, float(strength), trial, n, forced)
                                )
        # Free controls do not depend on the concept (``Sweep.control_specs``); forced controls
        # are scored against each concept (trial numbers ``trials``, as the injected ones).
        if not forced:
            out += [TrialSpec(arm, CONTROL, None, None, 0.0, t, n, False) for t, n in sweep.control_specs()]
            continue
        for word in sweep.concepts:
            for trial in sweep.trials:
                for n in range(sweep.samples):
                    out.append(TrialSpec(arm, CONTROL, word, None, 0.0, trial, n, True))
    return out


def sweep_trials(sweep: Sweep, layers: Sequence[int]) -> list[TrialSpec]:
    return [spec for arm in sweep.arms for spec in arm_trials(sweep, arm, layers)]
