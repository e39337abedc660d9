"""The content-agnostic bias vector, trained under an explicit false-positive constraint (PROTOCOL §5).

- ``config``: ``TrainConfig``; ``data``: concept split, example plan, tokens, batches;
- ``loss``: teacher-forced target loss; ``fit``: the optimisation loop; ``checkpoint``: resumable state;
- ``evaluation``: calibration, held-out verification and evaluation; ``train``: ``train_bias``;
- ``control``: D₀ and its splits; ``surrogate``, ``objective``: the certified mode's control loss;
  ``certified``: calibration on D₀, choice of the iterate, certification; ``constrained``: the run.
"""

from .config import TrainConfig, make_config
from .train import sweep_bias_layers, train_bias

__all__ = ["TrainConfig", "make_config", "sweep_bias_layers", "train_bias"]
