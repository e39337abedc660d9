"""moia: fast, correct mechanistic interventions for TransformerLens.

Reproduces "Mechanisms of Introspective Awareness" ([MOIA], Macar et al. 2026) on top of the
injected-thought experiment of [LINDSEY] (Lindsey 2025) and refusal directions of [ARDITI]
(Arditi et al. 2024). See ``PROTOCOL.md`` for the science.
"""

from .chat import format_chat
from .generation import generate
from .grading import Grade, grade
from .hooks import AdditiveVector, ConceptInjection, DirectionAblation, hook_name
from .intervene import fwd_hooks, intervene
from .models import available_models, load_model
from .orthogonalize import orthogonalize_weights

__version__ = "0.1.0"

__all__ = [
    "AdditiveVector",
    "ConceptInjection",
    "DirectionAblation",
    "Grade",
    "available_models",
    "format_chat",
    "fwd_hooks",
    "generate",
    "grade",
    "hook_name",
    "intervene",
    "load_model",
    "orthogonalize_weights",
]
