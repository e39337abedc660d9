"""How well a linear read separates labelled texts: one-vs-rest AUROC (PROTOCOL §7, "Validation").

``auroc(positive, negative)`` is the probability that a random positive scores above a random
negative, ties counting one half (the Mann-Whitney U statistic over n_pos · n_neg), computed exactly
from ranks. ``one_vs_rest`` applies it per emotion: texts labelled with that emotion against every
other text (other emotions and neutral ones), on that emotion's score.
"""

from collections.abc import Sequence

import torch
from jaxtyping import Float
from torch import Tensor


def auroc(positive: Sequence[float] | Tensor, negative: Sequence[float] | Tensor) -> float:
    """P(a positive scores above a negative), ties 1/2; exact (average ranks)."""
    pos = torch.as_tensor(positive, dtype=torch.float64).flatten()
    neg = torch.as_tensor(negative, dtype=torch.float64).flatten()
    if pos.numel() == 0 or neg.numel() == 0:
        raise ValueError(f"auroc needs positives and negatives, got {pos.numel()} and {neg.numel()}")
    if not bool(torch.isfinite(pos).all() and torch.isfinite(neg).all()):
        raise ValueError("auroc scores contain NaN or inf values")
    values = torch.cat([pos, neg])
    order = values.argsort()
    ranks = torch.empty_like(values)
    ranks[order] = torch.arange(1, values.numel() + 1, dtype=torch.float64)
    for v in values.unique():  # ties share their average rank
        tied = values == v
        ranks[tied] = ranks[tied].mean()
    u = ranks[: pos.numel()].sum() - pos.numel() * (pos.numel() + 1) / 2
    return float(u / (pos.numel() * neg.numel()))


def one_vs_rest(
    scores: Float[Tensor, "text emotion"], labels: Sequence[str], names: Sequence[str]
) -> dict[str, float]:
    """Per emotion in ``names`` (the columns of ``scores``): AUROC of its column, texts labelled
    with it against all other texts. Emotions without a labelled text are left out."""
    if scores.shape != (len(labels), len(names)):
        raise ValueError(f"scores has shape {tuple(scores.shape)}, expected ({len(labels)}, {len(names)})")
    out = {}
    for j, name in enumerate(names):
        hit = torch.tensor([label == name for label in labels])
        if bool(hit.any()) and not bool(hit.all()):
            out[name] = auroc(scores[hit, j], scores[~hit, j])
    return out
