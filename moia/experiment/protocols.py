"""The named protocols of ``moia reproduce``: the settings each one fixes (PROTOCOL §2, §4).

- ``sweep``: the layer × strength sweep of [MOIA]'s ``experiments/02_steering_evaluation.py``
  (PROTOCOL §2). Injection from the token before "Trial n", the empty system turn of 02 (dropped
  where the template has no separate system turn), concept and random vectors, forced trials, all
  four arms. ``quick`` is sized for a 2-core CPU; ``full`` is PROTOCOL's grid, with 500 control
  trials per arm when sampled (02's 10 trial numbers × 50 samples), or one per control trial number
  when greedy (greedy decoding gives every sample of a prompt the same reply).
- ``ablation``: [MOIA]'s refusal-ablation experiment (``experiments/03d_refusal_abliteration.py``,
  PROTOCOL §4), whose arms differ only in the ablation: the 50 test concepts × trial numbers 1-10
  × 3 samples injected per arm, and 1,500 control trials per arm (03d: 30 per concept, no
  injection); the concept vector at the depth of Gemma3-27B's layer 37 (of 62), strength 2, added
  at every position; sampled at temperature 1 with the model's own top-k / top-p; 100 new tokens;
  no system message (03d sends none); concept vectors only and no forced trials (03d has neither);
  the ablation arm ablates [MOIA]'s per-layer directions at each layer's output with its region
  weights mapped by depth (``moia.experiment.arms.AblationSpec``'s defaults, as in every protocol).
  Both arms share concepts, trial numbers, samples and seeds.

Every setting can be overridden (``moia reproduce --protocol ablation --concepts ... --samples 1``);
what ran is recorded in ``run.json`` and the report.
"""

from typing import Any

from .sweep import ARMS

PROTOCOLS = ("sweep", "ablation")
MOIA_CANONICAL_DEPTH = 37 / 62  # [MOIA] 03d's default --steering-layer of Gemma3-27B's 62 layers

# The fields a protocol fixes; every other ``Sweep`` field keeps its own default.
PROTOCOL_FIELDS = (
    "concepts",
    "layers",
    "strengths",
    "trials",
    "control_trials",
    "samples",
    "controls",
    "inject_from",
    "arms",
    "kinds",
    "forced",
    "system",
    "max_new_tokens",
    "temperature",
)

SWEEP_QUICK: dict[str, Any] = dict(
    # sized for a 2-core CPU with SmolLM2-135M on the bridge backend: 6 concepts × 2 layers ×
    # 2 strengths × trials 1-2, concept and random vectors, forced trials, 10 controls per arm
    concepts=["Dust", "Oceans", "Volcanoes", "Sugar", "Poetry", "Secrecy"],
    layers=[0.4, 0.6],
    strengths=[4.0, 8.0],
    trials=[1, 2],
    control_trials=list(range(1, 11)),
)
SWEEP_FULL: dict[str, Any] = dict(
    # PROTOCOL §2: depths around [MOIA]'s detection peak (0.47) and canonical layer (0.6),
    # strengths around its canonical 4; meant for a GPU
    concepts=None,  # the shipped test list
    layers=[0.4, 0.5, 0.6, 0.7],
    strengths=[2.0, 4.0, 8.0],
    trials=list(range(1, 11)),
    control_trials=None,
)
SWEEP: dict[str, Any] = dict(
    samples=1,
    controls=None,
    inject_from="trial",
    arms=list(ARMS),
    kinds=["concept", "random"],
    forced=True,
    system="",
    temperature=0.0,
)
ABLATION: dict[str, Any] = dict(
    concepts=None,  # the shipped test list: 03d's DEFAULT_TEST_CONCEPTS
    layers=[MOIA_CANONICAL_DEPTH],
    strengths=[2.0],
    trials=list(range(1, 11)),
    control_trials=list(range(1, 11)),
    samples=3,
    controls=1500,
    inject_from="all",
    arms=["baseline", "ablation"],
    kinds=["concept"],
    forced=False,
    system=None,
    max_new_tokens=100,
    temperature=1.0,
)
SWEEP_FULL_SAMPLED_CONTROLS = 500  # 02: DEFAULT_CONTROL_SAMPLES_PER_TRIAL 50 × 10 trial numbers


def protocol_settings(protocol: str, full: bool = False, temperature: float | None = None) -> dict[str, Any]:
    """The ``Sweep`` fields a protocol fixes (``PROTOCOL_FIELDS``).

    ``full`` picks the sweep's full grid (the ablation protocol has one size); ``temperature`` is
    the run's own when it overrides the protocol's (it decides the sweep's default controls).
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}: expected one of {list(PROTOCOLS)}")
    if protocol == "ablation":
        if full:
            raise ValueError("--full applies to the sweep protocol; the ablation protocol has one size")
        return dict(ABLATION)
    grid = SWEEP_FULL if full else SWEEP_QUICK
    settings = {**SWEEP, **grid, "max_new_tokens": 100 if full else 32}
    sampled = (settings["temperature"] if temperature is None else temperature) > 0
    if full and sampled:
        settings["controls"] = SWEEP_FULL_SAMPLED_CONTROLS
    return settings
