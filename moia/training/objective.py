"""The certified mode's training objective: [MOIA]'s loss on injected rows, the decision-focused
surrogate on control rows, and the unlikelihood rows (PROTOCOL §5, "Surrogate").

    L(b, λ) = L_inj(b) + (w_c + λ) · L_ctrl(b)

L_inj is [MOIA]'s target cross-entropy of the injected rows over the batch's target-token count (as
in the [MOIA] mode). L_ctrl, with ``surrogate="margin"``, is the mean over control rows of the
first-token margin plus ``kl_weight`` × KL to the unbiased model on the control target, plus
``unlikelihood_weight`` × the mean unlikelihood of the rows whose sampled reply was a false
positive; with ``surrogate="ce"`` it is [MOIA]'s control cross-entropy (plus the unlikelihood term).
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..core.interventions import AdditiveVector
from ..core.model import LanguageModel
from .config import TrainConfig
from .data import Batch, Example
from .loss import batch_logits, row_losses
from .surrogate import first_answer_logits, margin_loss, target_kl, unlikelihood_loss


def select_rows(batch: Batch, rows: Tensor) -> Batch:
    """The rows of ``batch`` where the bool mask ``rows`` is set."""
    idx = [i for i, keep in enumerate(rows.tolist()) if keep]
    return Batch(
        prompts=[batch.prompts[i] for i in idx],
        starts=[batch.starts[i] for i in idx],
        targets=[batch.targets[i] for i in idx],
        injected=batch.injected[idx],
        layers=[batch.layers[i] for i in idx],
        vectors=batch.vectors[idx],
        strengths=batch.strengths[idx],
        unlikely=None if batch.unlikely is None else batch.unlikely[idx],
    )


@dataclass
class Objective:
    """What the certified mode adds to the loop (``moia.training.fit``).

    ``target`` is ε′, the level λ aims the calibration FPR at; ``sampler(b, step)`` returns the
    D₀ loss units whose reply under b was graded a false positive (None: no unlikelihood rows).
    """

    target: float
    affirmative: Sequence[int]
    negative: Sequence[int]
    surrogate: str = "margin"
    sampler: Callable[[Tensor, int], list[int]] | None = None
    rows_per_step: int = 2
    ensure: Callable[[Sequence[int]], None] | None = None  # tokenizes units before they are batched

    def unlikely_rows(self, fp_units: Sequence[int], step: int) -> list[Example]:
        """Up to ``rows_per_step`` false-positive units, cycling through them step by step."""
        if not fp_units or self.rows_per_step < 1:
            return []
        n = min(self.rows_per_step, len(fp_units))
        chosen = [fp_units[(step * n + j) % len(fp_units)] for j in range(n)]
        if self.ensure is not None:
            self.ensure(chosen)
        return [Example(0, None, unit=u, unlikely=True) for u in chosen]

    def losses(
        self, model: LanguageModel, batch: Batch, bias: AdditiveVector, cfg: TrainConfig
    ) -> tuple[Tensor, Tensor]:
        """(L_inj, L_ctrl) of the batch."""
        logits = batch_logits(model, batch, bias, cfg.loss_path)
        sums = row_losses(logits, batch)
        device = sums.device
        n_tokens = torch.tensor([len(t) for t in batch.targets], device=device, dtype=torch.float32).sum()
        injected_rows = batch.injected.to(device)
        unlikely = (
            batch.unlikely.to(device) if batch.unlikely is not None else torch.zeros_like(injected_rows)
        )
        plain = ~injected_rows & ~unlikely
        injected = sums[injected_rows].sum() / n_tokens
        zero = sums.sum() * 0.0
        control = zero
        if self.surrogate == "ce":
            control = sums[plain].sum() / n_tokens
        elif bool(plain.any()):
            first = first_answer_logits(logits, batch)
            control = margin_loss(first[plain], self.affirmative, self.negative, cfg.margin).mean()
            if cfg.kl_weight > 0:
                sub = select_rows(batch, plain.cpu())
                with torch.no_grad():
                    reference = batch_logits(model, sub, None, cfg.loss_path)
                kept = logits[plain]
                control = control + cfg.kl_weight * target_kl(kept, reference, sub.targets).mean()
        if bool(unlikely.any()) and cfg.unlikelihood_weight > 0:
            first = first_answer_logits(logits, batch)
            control = (
                control
                + cfg.unlikelihood_weight * unlikelihood_loss(first[unlikely], self.affirmative).mean()
            )
        return injected, control
