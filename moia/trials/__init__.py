"""The injected-thought trial (PROTOCOL §2), shared by the experiment and the trainer.

- ``prompt``: its stimuli, chat formatting and injection start;
- ``runner``: the one trial runner — batched trials on the decoding engine.
"""

from .prompt import TrialPrompt, build_trial
from .runner import TrialRow, TrialRunner, random_direction

__all__ = ["TrialPrompt", "TrialRow", "TrialRunner", "build_trial", "random_direction"]
