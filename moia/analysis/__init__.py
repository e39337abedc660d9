"""Analyses on top of moia's readouts: annotating text with what a mood ring read, and its view.

- ``annotate``: spans where a direction's z-score stays high, inline notes at exact character offsets;
- ``view``: the mood-ring HTML page and the PNG of traces (PROTOCOL §8).
"""

from .annotate import annotate

__all__ = ["annotate"]
