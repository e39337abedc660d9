"""The arms of the emotion experiments (PROTOCOL §7): baseline, [MOIA]-region ablation, bias.

- ``baseline``: the model as it is.
- ``ablation``: each layer's own refusal direction (position −2, ``resid_post``) ablated with
  [MOIA]'s per-region weight of the Gemma3-27B layer at the same depth (PROTOCOL §4's table;
  ``moia_region_weights``), through ``RefusalDirections.ablation("per_layer", weights=...)``.
- ``bias``: a trained content-agnostic bias vector (``moia.directions.bias`` file) in every trial,
  when a file is given; otherwise the arm is skipped and the reason recorded; ``ablation+bias``: both.

Refusal directions are cached in the output folder (``moia.experiment.arms``).
"""

import bisect
from typing import Any

from ..core.interventions import Intervention
from ..core.model import LanguageModel, n_layers
from .arms import NO_BIAS, bias_arm, cached_refusal_directions

EMOTION_ARMS = ("baseline", "ablation", "bias", "ablation+bias")
GEMMA_LAYERS = 62
# [MOIA] experiments/03d_refusal_abliteration.py, DEFAULT_REGION_WEIGHTS (Optuna trial 1584; PROTOCOL
# §4 rounds them): the first Gemma3-27B layer of each region and its weight, as in the code.
REGION_STARTS = [0, 3, 6, 9, 11, 14, 16, 19, 21, 25, 29, 33, 36, 39, 42, 45, 48, 52, 56, 59]
REGION_WEIGHTS = [
    0.010190365613071925, 0.09976487098474057, 0.009846349798252014, 0.010714741304450688,
    0.023812035217103455, 0.006873821994170306, 0.0023568060724657135, 0.11762696391562547,
    0.024324361266584712, 0.009936585603088419, 0.000533052460819306, 0.0057508808893361974,
    0.020646470409482434, 0.02205567035624907, 0.004716948598867072, 0.003251529189292551,
    0.07694211978232157, 0.03330589279564281, 2.358688691270255e-05, 0.003955462234418926,
]  # fmt: skip


ABLATION_SETTINGS = {"kind": "per_layer", "weights": "moia_regions", "site": "resid_post", "position": -2}


def moia_region_weights(layers: int) -> dict[int, float]:
    """{layer: weight} for a model of ``layers`` layers: layer l takes the weight of Gemma3-27B layer
    ``int(l / layers * 62)`` (PROTOCOL §4)."""
    if isinstance(layers, bool) or not isinstance(layers, int) or layers < 1:
        raise ValueError(f"layers must be a layer count >= 1, got {layers!r}")
    out = {}
    for layer in range(layers):
        gemma = int(layer / layers * GEMMA_LAYERS + 1e-9)
        out[layer] = REGION_WEIGHTS[bisect.bisect_right(REGION_STARTS, gemma) - 1]
    return out


def prepare_emotion_arms(
    model: LanguageModel, arms: list[str], out_dir: Any, bias_path: Any = None, progress: bool = True
) -> tuple[dict[str, list[Intervention]], dict[str, Any], dict[str, str]]:
    """``(interventions, settings, skipped)`` per arm, as ``moia.experiment.arms.prepare_arms``."""
    unknown = [a for a in arms if a not in EMOTION_ARMS]
    if unknown or not arms:
        raise ValueError(f"unknown or no arms {unknown or arms}: expected some of {list(EMOTION_ARMS)}")
    interventions: dict[str, list[Intervention]] = {}
    settings: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for arm in arms:
        if "bias" in arm and bias_path is None:
            skipped[arm] = NO_BIAS
            continue
        interventions[arm], settings[arm] = [], {}
        if "ablation" in arm:
            rd = cached_refusal_directions(model, out_dir, select=False, progress=progress)
            weights = moia_region_weights(n_layers(model))
            interventions[arm].append(
                rd.ablation("per_layer", weights=weights, site="resid_post", position=-2)
            )
            settings[arm]["ablation"] = dict(ABLATION_SETTINGS)
        if "bias" in arm:
            bias, settings[arm]["bias"] = bias_arm(model, bias_path)
            interventions[arm].append(bias)
    return interventions, settings, skipped
