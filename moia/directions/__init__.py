"""Directions read from a model: concept vectors, refusal directions, and their files.

- ``activations``: residual-stream reads at chosen layers and positions;
- ``concepts``: concept vectors (PROTOCOL §1); ``refusal`` and ``selection``: refusal directions and
  [ARDITI]'s selection (PROTOCOL §4); ``prompts``: harmful / harmless instruction sets;
- ``bias``: the trained bias vector's file format (PROTOCOL §5);
- ``emotions`` and ``stories``: emotion vectors and the stories they are read from (PROTOCOL §7).
"""

from .bias import BiasVector
from .concepts import ConceptVectors, concept_vectors, concept_words
from .emotions import EmotionVectors, emotion_vectors
from .prompts import load_prompts
from .refusal import RefusalDirections, refusal_directions

__all__ = [
    "BiasVector",
    "ConceptVectors",
    "EmotionVectors",
    "RefusalDirections",
    "concept_vectors",
    "concept_words",
    "emotion_vectors",
    "load_prompts",
    "refusal_directions",
]
