"""Analyses on top of moia's hooks and readouts.

- ``patching`` (with ``attribution`` and ``heatmap``): activation-patching sweeps as batched runs in
  which each row copies its own clean activation through the fused op (PROTOCOL §9); exposed as
  ``moia.patching``;
- ``annotate``: spans where a direction's z-score stays high, inline notes at exact character offsets;
- ``view``: the mood-ring HTML page and the PNG of traces (PROTOCOL §8).
"""

from . import patching
from .annotate import annotate
from .patching import attribution, heatmap, sweep
from .sites import PATCH_SITES, PatchSite

__all__ = ["PATCH_SITES", "PatchSite", "annotate", "attribution", "heatmap", "patching", "sweep"]
