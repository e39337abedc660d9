"""moia.kernels: the fused intervention op (Triton on CUDA) and its plain-torch twin.

``fused_intervention`` is the single entry point the hook modules call; see ``reference.py`` for the
op's definition.
"""

from .reference import intervention_naive, intervention_reference

fused_intervention = intervention_reference

__all__ = ["fused_intervention", "intervention_naive", "intervention_reference"]
