"""moia: fast, correct mechanistic interventions for TransformerLens.

Reproduces "Mechanisms of Introspective Awareness" ([MOIA], Macar et al. 2026) on top of the
injected-thought experiment of [LINDSEY] (Lindsey 2025) and refusal directions of [ARDITI]
(Arditi et al. 2024). See ``PROTOCOL.md`` for the science.
"""

from .bias import BiasVector, load_bias
from .chat import format_chat
from .concepts import ConceptVectors, concept_vectors, concept_words
from .directions import resolve_layers
from .experiment import TrialRunner, run_sweep
from .generation import generate
from .grading import Grade, grade
from .hooks import AdditiveVector, ConceptInjection, DirectionAblation, hook_name, injections_by_layer
from .intervene import fwd_hooks, intervene
from .models import available_models, load_model
from .orthogonalize import orthogonalize_weights
from .prompts import load_prompts, split_prompts
from .protocol import build_trial
from .refusal import RefusalDirections, refusal_directions
from .refusal_selection import select_direction
from .report import write_report
from .sweep import Sweep
from .training import TrainConfig, sweep_bias_layers, train_bias

AdditiveVector.load = staticmethod(load_bias)  # type: ignore[attr-defined]

__version__ = "0.1.0"

__all__ = [
    "AdditiveVector",
    "BiasVector",
    "ConceptVectors",
    "RefusalDirections",
    "Sweep",
    "TrainConfig",
    "TrialRunner",
    "build_trial",
    "concept_vectors",
    "concept_words",
    "load_bias",
    "load_prompts",
    "refusal_directions",
    "resolve_layers",
    "run_sweep",
    "select_direction",
    "split_prompts",
    "sweep_bias_layers",
    "train_bias",
    "write_report",
    "ConceptInjection",
    "DirectionAblation",
    "Grade",
    "available_models",
    "format_chat",
    "fwd_hooks",
    "generate",
    "grade",
    "hook_name",
    "injections_by_layer",
    "intervene",
    "load_model",
    "orthogonalize_weights",
]
