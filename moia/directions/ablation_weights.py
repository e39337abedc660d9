"""Per-layer weights w_l of [MOIA]'s soft refusal ablation, h ← h − w_l (h·r̂_l) r̂_l (PROTOCOL §4).

[MOIA] ablates one refusal direction per layer at each decoder layer's output with small weights
that an Optuna search chose per region of Gemma3-27B's 62 layers (``DEFAULT_REGION_WEIGHTS`` and
``DEFAULT_REGION_BOUNDARIES`` of ``experiments/03d_refusal_abliteration.py``; median about 0.01).
The regions are absolute layer indices of that 62-layer model; on a model of n layers, layer l
takes the weight of the Gemma layer at the same depth, ``(l · 62) // n`` (= ``int(l / n · 62)``
without float error; identity for n = 62).

``ablation_weights(spec, n_layers)`` turns what a user names into one weight per layer:

- ``"moia-regions"``: the region table above, mapped by depth;
- ``"uniform"``: [MOIA]'s uniform fallback, ``DEFAULT_REFUSAL_ABLATION_WEIGHT`` = 0.0175, at
  every layer;
- a number (``"0.1"``): that weight at every layer;
- a JSON file: a list of n_layers weights, or an object {layer index: weight} naming every layer.

Weights lie in [0, 1]: 1 removes the direction, 0 leaves the layer alone.
"""

import json
import math
import pathlib
from typing import Any

MOIA_N_LAYERS = 62
# (last layer of the region, inclusive; weight), in layer order: [MOIA] 03d, l. 95-140
MOIA_REGIONS: tuple[tuple[int, float], ...] = (
    (2, 0.010190365613071925),  # very_early_a
    (5, 0.09976487098474057),  # very_early_b
    (8, 0.009846349798252014),  # very_early_c
    (10, 0.010714741304450688),  # very_early_d
    (13, 0.023812035217103455),  # early_a
    (15, 0.006873821994170306),  # early_b
    (18, 0.0023568060724657135),  # early_c
    (20, 0.11762696391562547),  # early_d
    (24, 0.024324361266584712),  # pre_key_a
    (28, 0.009936585603088419),  # pre_key_b
    (32, 0.000533052460819306),  # key_a
    (35, 0.0057508808893361974),  # key_b
    (38, 0.020646470409482434),  # mid_a
    (41, 0.02205567035624907),  # mid_b
    (44, 0.004716948598867072),  # mid_c
    (47, 0.003251529189292551),  # mid_d
    (51, 0.07694211978232157),  # late_a
    (55, 0.03330589279564281),  # late_b
    (58, 2.358688691270255e-05),  # final_a
    (61, 0.003955462234418926),  # final_b
)
MOIA_UNIFORM = 0.0175  # DEFAULT_REFUSAL_ABLATION_WEIGHT, 03d l. 78
NAMED = ("moia-regions", "uniform")


def moia_region_weight(gemma_layer: int) -> float:
    """The weight of layer ``gemma_layer`` of the 62-layer model ([MOIA]'s ``get_layer_weight``)."""
    if not 0 <= gemma_layer < MOIA_N_LAYERS:
        raise ValueError(f"layer {gemma_layer} is not a layer of the {MOIA_N_LAYERS}-layer model")
    return next(w for last, w in MOIA_REGIONS if gemma_layer <= last)


def moia_region_weights(n_layers: int) -> list[float]:
    """One weight per layer of an ``n_layers``-layer model: the region weight at the same depth."""
    if isinstance(n_layers, bool) or not isinstance(n_layers, int) or n_layers < 1:
        raise ValueError(f"n_layers must be an integer >= 1, got {n_layers!r}")
    return [moia_region_weight(layer * MOIA_N_LAYERS // n_layers) for layer in range(n_layers)]


def _checked(weights: list[Any], n_layers: int, source: str) -> list[float]:
    if len(weights) != n_layers:
        raise ValueError(f"{source}: {len(weights)} weights for a model with {n_layers} layers")
    out = []
    for layer, w in enumerate(weights):
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or not 0 <= w <= 1:
            raise ValueError(f"{source}: the weight of layer {layer} is {w!r}; weights lie in [0, 1]")
        out.append(float(w))
    return out


def _from_file(path: pathlib.Path, n_layers: int) -> list[float]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"ablation weights file {path} is not valid JSON ({e})") from e
    if isinstance(data, dict):
        try:
            by_layer = {int(k): v for k, v in data.items()}
        except ValueError:
            raise ValueError(f"{path}: keys must be layer indices, got {sorted(data)}") from None
        missing = [layer for layer in range(n_layers) if layer not in by_layer]
        extra = sorted(set(by_layer) - set(range(n_layers)))
        if missing or extra:
            raise ValueError(
                f"{path}: the weights must name every layer 0..{n_layers - 1} and no other "
                f"(missing {missing}, extra {extra})"
            )
        data = [by_layer[layer] for layer in range(n_layers)]
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a list of weights or an object {{layer: weight}}")
    return _checked(data, n_layers, str(path))


def _number(spec: str | float) -> float | None:
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        return float(spec)
    try:
        return float(spec)
    except ValueError:
        return None


def check_weights_spec(spec: str | float) -> None:
    """Fail early on a spec that names nothing: not a name, a number in [0, 1] or an existing file."""
    value = _number(spec)
    if value is not None:
        if not (math.isfinite(value) and 0 <= value <= 1):
            raise ValueError(f"ablation weight {value!r} out of range: weights lie in [0, 1]")
    elif spec not in NAMED and not pathlib.Path(str(spec)).is_file():
        raise ValueError(
            f"ablation weights {spec!r}: expected {' or '.join(NAMED)}, a number in [0, 1] or a JSON file"
        )


def ablation_weights(spec: str | float, n_layers: int) -> list[float]:
    """One weight per layer from ``spec``: "moia-regions", "uniform", a number or a JSON file."""
    check_weights_spec(spec)
    value = _number(spec)
    if value is not None:
        return _checked([value] * n_layers, n_layers, "ablation weight")
    if spec == "moia-regions":
        return moia_region_weights(n_layers)
    if spec == "uniform":
        return [MOIA_UNIFORM] * n_layers
    return _from_file(pathlib.Path(str(spec)), n_layers)
