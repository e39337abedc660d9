"""Interventions and their compilation to hooks: the lowest layer of moia (imports nothing above).

- ``interventions``: ``DirectionAblation``, ``AdditiveVector``, ``ConceptInjection`` (what to do where);
- ``compile``: one hook per hook point, each a single fused op; ``intervene`` / ``fwd_hooks``;
- ``sites`` / ``layers``: hook sites and layer indices or depth fractions;
- ``linalg``: orthonormal bases with rank detection; ``orthogonalize``: ablation baked into weights;
- ``model``: the ``LanguageModel`` protocol moia needs of a TransformerLens model;
- ``readout``: ``MoodRing``, a read-only intervention that records projections at every token.
"""

from .compile import fwd_hooks, intervene
from .interventions import (
    AdditiveVector,
    ConceptInjection,
    DirectionAblation,
    Intervention,
    injections_by_layer,
)
from .layers import resolve_layer, resolve_layers
from .model import LanguageModel
from .orthogonalize import orthogonalize_weights
from .readout import Calibration, MoodRing
from .sites import SITES, hook_name

__all__ = [
    "SITES",
    "AdditiveVector",
    "Calibration",
    "ConceptInjection",
    "DirectionAblation",
    "Intervention",
    "LanguageModel",
    "MoodRing",
    "fwd_hooks",
    "hook_name",
    "injections_by_layer",
    "intervene",
    "orthogonalize_weights",
    "resolve_layer",
    "resolve_layers",
]
