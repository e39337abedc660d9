"""Layers by index or by depth fraction (PROTOCOL §2, "Layers").

An ``int`` is a decoder-layer index in ``[0, n_layers)``. A ``float`` in ``[0, 1)`` is a depth
fraction and becomes ``int(f * n_layers)`` — truncation, as the [MOIA] code computes it, guarded
against float error so that ``l / n`` gives back layer ``l`` (0.6 of
Gemma3-27B's 62 layers is layer 37, 0.4 is 24; 0.6 of SmolLM2's 30 is 18). A float outside
``[0, 1)`` (``18.9``) and a ``bool`` are errors rather than silently truncated indices.
"""

import numbers
from collections.abc import Iterable
from typing import Any

LayerSpec = int | float


def _n(model_or_n_layers: Any) -> int:
    if isinstance(model_or_n_layers, int):
        return model_or_n_layers
    return int(model_or_n_layers.cfg.n_layers)


def resolve_layer(model_or_n_layers: Any, layer: Any, name: str = "layer") -> int:
    """One layer index from an index or a depth fraction; errors name ``name`` and the value."""
    n = _n(model_or_n_layers)
    if isinstance(layer, bool) or not isinstance(layer, numbers.Real):
        raise TypeError(f"{name}: {layer!r} is neither a layer index (int) nor a depth fraction (float)")
    if isinstance(layer, numbers.Integral):  # numpy / torch integers too
        if not 0 <= int(layer) < n:
            raise ValueError(f"{name}: layer {layer} out of range for a model with {n} layers")
        return int(layer)
    depth = float(layer)
    if not 0.0 <= depth < 1.0:
        raise ValueError(f"{name}: depth fraction {layer!r} must lie in [0, 1); give layer indices as ints")
    # 1e-9: a depth written as l / n must give layer l back (29 / 62 * 62 is 28.999999999999996)
    return min(int(depth * n + 1e-9), n - 1)


def _resolve_all(model_or_n_layers: Any, layers: Any, name: str) -> list[int]:
    n = _n(model_or_n_layers)
    if layers is None:
        return list(range(n))
    items = list(layers) if isinstance(layers, Iterable) and not isinstance(layers, str) else [layers]
    if not items:
        raise ValueError(f"{name} must not be empty")
    return [resolve_layer(n, item, name) for item in items]


def resolve_layers(model_or_n_layers: Any, layers: Any, name: str = "layers") -> list[int]:
    """Layer indices, sorted and unique, from ints and/or depth fractions; None means every layer."""
    return sorted(set(_resolve_all(model_or_n_layers, layers, name)))


def layer_list(model_or_n_layers: Any, layers: Any, name: str = "layers") -> list[int]:
    """Like ``resolve_layers`` but in the given order; a layer named twice is an error."""
    out = _resolve_all(model_or_n_layers, layers, name)
    repeated = sorted({x for x in out if out.count(x) > 1})
    if repeated:
        raise ValueError(f"{name}: layer(s) {repeated} given more than once (as given: {layers})")
    return out


def depth_fractions(layers: Iterable[int], n_layers: int) -> list[float]:
    """``layer / n_layers`` for each layer."""
    return [layer / n_layers for layer in layers]
