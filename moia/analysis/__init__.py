"""Reading a model: activation patching (``patching``, with ``attribution`` and ``heatmap``).

Above ``core``, ``lm`` and ``kernels``: a patching sweep is a batch of runs in which each row copies
its own clean activation through the fused op (PROTOCOL §7). Exposed as ``moia.patching``.
"""

from . import patching
from .patching import attribution, heatmap, sweep
from .sites import PATCH_SITES, PatchSite

__all__ = ["PATCH_SITES", "PatchSite", "attribution", "heatmap", "patching", "sweep"]
