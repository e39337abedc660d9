"""moia: fast, correct mechanistic interventions for TransformerLens.

Reproduces "Mechanisms of Introspective Awareness" ([MOIA], Macar et al. 2026) on top of the
injected-thought experiment of [LINDSEY] (Lindsey 2025) and the refusal directions of [ARDITI]
(Arditi et al. 2024); ``docs/protocol.md`` states the science. The layers, lowest first:
``core`` (interventions, hooks) · ``kernels`` (the fused op) · ``lm`` (models, chat, decoding) ·
``directions`` · ``eval`` (grading, statistics) · ``trials`` · ``experiment`` and ``training`` ·
``cli``; ``analysis`` reads a model (activation patching, ``moia.patching``). The names below are
the public surface; the experiment and the trainer are ``moia.experiment`` and ``moia.training``.
"""

from importlib.metadata import version

from . import experiment, training
from .analysis import annotate, patching
from .core import (
    AdditiveVector,
    Calibration,
    ConceptInjection,
    DirectionAblation,
    MoodRing,
    fwd_hooks,
    intervene,
    orthogonalize_weights,
    resolve_layers,
)
from .directions import (
    ConceptVectors,
    EmotionVectors,
    RefusalDirections,
    concept_vectors,
    emotion_vectors,
    refusal_directions,
)
from .eval import Grade, grade
from .lm import generate, load_model

__version__ = version("moia")

__all__ = [
    "AdditiveVector",
    "Calibration",
    "ConceptInjection",
    "ConceptVectors",
    "DirectionAblation",
    "EmotionVectors",
    "Grade",
    "MoodRing",
    "RefusalDirections",
    "annotate",
    "concept_vectors",
    "emotion_vectors",
    "experiment",
    "fwd_hooks",
    "generate",
    "grade",
    "intervene",
    "load_model",
    "orthogonalize_weights",
    "patching",
    "refusal_directions",
    "resolve_layers",
    "training",
]
