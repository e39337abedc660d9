"""The injected-thought experiment (``moia reproduce``): grid, arms, runs, results, report.

- ``sweep``: the grid and its trials; ``arms``: baseline / ablation / bias and what they need;
- ``run``: ``run_sweep``, resumable and batched; ``results``: ``trials.jsonl`` and ``run.json``;
- ``report``: metrics, tables and heatmaps.
"""

from .run import run_sweep
from .sweep import Sweep, TrialSpec

__all__ = ["Sweep", "TrialSpec", "run_sweep"]
