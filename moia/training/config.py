"""Every setting of a bias-training run, checked when it is made (PROTOCOL §5).

Defaults are [MOIA]'s, with layers as depth fractions so that they scale to small models: the bias
at depth 29/62 (layer 14 of SmolLM2's 30), the injection band = the [MOIA] code's layers 29, 31, ...,
55 of 62 (depth 0.47-0.89), strengths {2, 3, 4, 5}, trial numbers 1..10, control probability 0.5,
seed 42, AdamW lr 1e-3, batch 8, one epoch. The CLI's options are derived from these fields
(``moia.cli.options``): each field's ``help`` metadata is its option's help text.
"""

import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from ..core.sites import SITES
from .data import MOIA_STRENGTHS, MOIA_TRIALS

MOIA_N_LAYERS = 62
MOIA_BIAS_DEPTH = 29 / MOIA_N_LAYERS
MOIA_BAND = tuple(layer / MOIA_N_LAYERS for layer in range(29, 56, 2))
MOIA_EVAL_DEPTHS = (30 / MOIA_N_LAYERS, 40 / MOIA_N_LAYERS, 50 / MOIA_N_LAYERS)
LOSS_PATHS = ("auto", "full", "shared_prefix")
MODES = ("certified", "moia")
D0_KINDS = ("paraphrase", "sampled")
SURROGATES = ("margin", "ce")


def _opt(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a bias-training run (stored in checkpoints and bias files).

    Layers are indices or depth fractions (``moia.core.layers``). ``steps`` None is one epoch;
    ``epsilon`` None trains unconstrained. ``verify_controls`` held-out control trials start after
    the last training and calibration trial number.
    """

    layer: int | float = _opt(MOIA_BIAS_DEPTH, "bias layer: an index or a depth fraction")
    site: str = _opt("mlp_pre_norm", "hook site of the bias ([MOIA]: mlp_pre_norm)")
    injection_layers: tuple[int | float, ...] = _opt(MOIA_BAND, "injection band: indices or depths")
    strengths: tuple[float, ...] = _opt(MOIA_STRENGTHS, "injection strengths drawn from (> 0)")
    trials: tuple[int, ...] = _opt(MOIA_TRIALS, "trial numbers of the training examples")
    control_prob: float = _opt(0.5, "probability of a control example per injected one, in [0, 1]")
    control_weight: float = _opt(1.0, "weight of the control loss (1: [MOIA]'s plain mean)")
    lr: float = _opt(1e-3, "AdamW learning rate")
    weight_decay: float = _opt(0.01, "AdamW weight decay (torch's default, as [MOIA])")
    batch_size: int = _opt(8, "examples per step")
    steps: int | None = _opt(None, "optimizer steps (default: one epoch)")
    max_steps: int | None = _opt(None, "a cap on the optimizer steps, for short runs")
    seed: int = _opt(42, "seed of the concept split and the example plan")
    epsilon: float | None = _opt(0.01, "the FPR bound ε on D0, in [0, 1); None: unconstrained")
    dual_lr: float = _opt(10.0, "step size of the Lagrange multiplier")
    eval_every: int = _opt(50, "calibrate every N steps (0: only before and after)")
    checkpoint_every: int = _opt(50, "write a checkpoint every N steps (0: only at the end)")
    calibration_trials: tuple[int, ...] = _opt(MOIA_TRIALS, "control trial numbers of the calibration")
    calibration_injected: int = _opt(8, "injected trials of train concepts in each calibration")
    verify_controls: int = _opt(0, "robustness check outside D0: greedy control trials 11, 12, ... (0: none)")
    max_new_tokens: int = _opt(100, "new tokens per calibration and verification reply")
    system: str | None = _opt(None, "the system turn (None: none, as [MOIA]'s trainer; '' an empty one)")
    lowercase_target: bool = _opt(True, "lower-case the word in the Yes target, as [MOIA]'s code")
    loss_path: str = _opt("auto", f"how the loss runs: one of {LOSS_PATHS}")
    mode: str = _opt("certified", f"one of {MODES}: D0 surrogate + proxy-Lagrangian, or [MOIA]'s recipe")
    d0: str = _opt("paraphrase", f"the control distribution D0: one of {D0_KINDS}")
    surrogate: str = _opt("margin", f"control loss of the certified mode: one of {SURROGATES}")
    margin: float = _opt(1.0, "m in softplus(m + lse(yes) - lse(no)) on the first answer token")
    kl_weight: float = _opt(1.0, "weight of KL(unbiased || biased) on control replies")
    unlikelihood_weight: float = _opt(1.0, "weight of the unlikelihood on sampled false positives")
    unlikelihood_every: int = _opt(20, "sample control replies for the unlikelihood every K steps")
    unlikelihood_units: int = _opt(16, "D0 loss units sampled each time (0: no unlikelihood)")
    alpha: float = _opt(0.05, "level of the certified bound: it holds with probability 1 - alpha")
    calibration_units: int = _opt(300, "D0 units in the calibration split (drives λ, picks the iterate)")
    test_units: int = _opt(299, "D0 units in the test split (touched once, by the certification)")
    calibration_batch: int = _opt(32, "fresh calibration units per λ update")
    calibration_share: float = _opt(0.5, "λ aims at ε' = share × ε, leaving room for the test bound")
    certify_random: bool = _opt(
        False, "also count claims on the test units under a random-direction injection"
    )
    select_candidates: int = _opt(3, "latest iterates measured on the full calibration split (+ b = 0)")

    def __post_init__(self) -> None:
        def finite(x: Any) -> bool:
            return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

        def count(x: Any, low: int) -> bool:
            return isinstance(x, int) and not isinstance(x, bool) and x >= low

        checks = {
            "lr": finite(self.lr) and self.lr > 0,
            "weight_decay": finite(self.weight_decay) and self.weight_decay >= 0,
            "batch_size": count(self.batch_size, 1),
            "steps": self.steps is None or count(self.steps, 1),
            "max_steps": self.max_steps is None or count(self.max_steps, 1),
            "epsilon": self.epsilon is None or (finite(self.epsilon) and 0 <= self.epsilon < 1),
            "dual_lr": finite(self.dual_lr) and self.dual_lr >= 0,
            "control_prob": finite(self.control_prob) and 0 <= self.control_prob <= 1,
            "control_weight": finite(self.control_weight) and self.control_weight >= 0,
            "eval_every": count(self.eval_every, 0),
            "checkpoint_every": count(self.checkpoint_every, 0),
            "calibration_injected": count(self.calibration_injected, 0),
            "verify_controls": count(self.verify_controls, 0),
            "max_new_tokens": count(self.max_new_tokens, 1),
            "strengths": bool(self.strengths) and all(finite(x) and x > 0 for x in self.strengths),
            "trials": bool(self.trials) and all(count(x, 1) for x in self.trials),
            "calibration_trials": bool(self.calibration_trials)
            and all(count(x, 1) for x in self.calibration_trials),
            "injection_layers": bool(self.injection_layers),
            "site": self.site in SITES,
            "loss_path": self.loss_path in LOSS_PATHS,
            "mode": self.mode in MODES,
            "d0": self.d0 in D0_KINDS,
            "surrogate": self.surrogate in SURROGATES,
            "margin": finite(self.margin),
            "kl_weight": finite(self.kl_weight) and self.kl_weight >= 0,
            "unlikelihood_weight": finite(self.unlikelihood_weight) and self.unlikelihood_weight >= 0,
            "unlikelihood_every": count(self.unlikelihood_every, 1),
            "unlikelihood_units": count(self.unlikelihood_units, 0),
            "alpha": finite(self.alpha) and 0 < self.alpha < 1,
            "calibration_units": count(self.calibration_units, 1),
            "test_units": count(self.test_units, 1),
            "calibration_batch": count(self.calibration_batch, 1),
            "calibration_share": finite(self.calibration_share) and 0 < self.calibration_share <= 1,
            "select_candidates": count(self.select_candidates, 1),
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(
                "invalid training setting(s): "
                + "; ".join(f"{n}={getattr(self, n)!r} ({_HELP[n]})" for n in bad)
            )

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe dict (tuples become lists); equal configs give equal dicts."""
        return json.loads(json.dumps(asdict(self)))


_HELP = {f.name: f.metadata.get("help", "") for f in fields(TrainConfig)}


def make_config(config: TrainConfig | None = None, **options: Any) -> TrainConfig:
    """``config`` (default ``TrainConfig()``) with ``options`` replaced; unknown names are an error."""
    names = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(options) - names)
    if unknown:
        raise TypeError(f"unknown training option(s) {unknown}; valid options: {sorted(names)}")
    tuples = {k: tuple(v) for k, v in options.items() if isinstance(v, (list, range))}
    return replace(config or TrainConfig(), **{**options, **tuples})
