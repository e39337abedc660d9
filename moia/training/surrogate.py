"""The decision-focused surrogate of the false-positive rate (PROTOCOL §5, "Surrogate").

A control reply is a false positive when it claims a detection, and that decision lives in the first
answer token or two ("Yes, ..." vs "No, ..."); [MOIA]'s control loss, cross-entropy on the whole
13-token "No, I don't detect any injected thought in this trial." sentence, mostly rewards the
format. On control rows the surrogate is instead

    margin      softplus(m + logsumexp(logits[A]) - logsumexp(logits[N]))  at the first answer token,
    KL          KL(p_0 || p_b) summed over the control target's positions (p_0: the unbiased model),
    unlikelihood  -log(1 - p_b(A))  at the first answer token of prompts whose sampled reply under
                the current b was graded a false positive (re-sampled every K steps),

where A and N are the first tokens of the affirmative and negative answer words. The margin pushes the
decision, KL keeps b from changing control replies otherwise, and unlikelihood acts on the errors
the model actually makes.
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..core.model import LanguageModel
from ..lm.decoding import token_ids
from .data import Batch

AFFIRMATIVE_WORDS = ("Yes", " Yes", "yes", " yes", "YES")
NEGATIVE_WORDS = ("No", " No", "no", " no", "NO")
SURROGATES = ("margin", "ce")


def answer_token_sets(
    model: LanguageModel,
    affirmative: Sequence[str] = AFFIRMATIVE_WORDS,
    negative: Sequence[str] = NEGATIVE_WORDS,
) -> tuple[list[int], list[int]]:
    """The first token ids of the affirmative and of the negative answer words (disjoint sets)."""
    aff = sorted({token_ids(model, w)[0] for w in affirmative})
    neg = sorted({token_ids(model, w)[0] for w in negative})
    shared = sorted(set(aff) & set(neg))
    if shared:
        raise ValueError(f"affirmative and negative answer words share first tokens {shared}")
    return aff, neg


def first_answer_logits(logits: Tensor, batch: Batch) -> Tensor:
    """[B, vocab]: each row's logits at the position that predicts its first target token."""
    keep = logits.shape[1]
    pos = torch.tensor([keep - 1 - len(t) for t in batch.targets], device=logits.device)
    return logits[torch.arange(len(batch), device=logits.device), pos].float()


def margin_loss(first: Tensor, affirmative: Sequence[int], negative: Sequence[int], margin: float) -> Tensor:
    """[B]: softplus(m + logsumexp(first[:, A]) - logsumexp(first[:, N]))."""
    a = torch.logsumexp(first[:, list(affirmative)], -1)
    n = torch.logsumexp(first[:, list(negative)], -1)
    return F.softplus(margin + a - n)


def unlikelihood_loss(first: Tensor, affirmative: Sequence[int]) -> Tensor:
    """[B]: -log(1 - p(A)) with p(A) the probability of the affirmative set, computed as
    logsumexp over the other tokens minus logsumexp over all (no 1 - p cancellation)."""
    keep = torch.ones(first.shape[-1], dtype=torch.bool, device=first.device)
    keep[list(affirmative)] = False
    return torch.logsumexp(first, -1) - torch.logsumexp(first[:, keep], -1)


def target_kl(logits: Tensor, reference: Tensor, targets: Sequence[Sequence[int]]) -> Tensor:
    """[B]: KL(p_ref || p) summed over the positions predicting each row's target tokens; each of
    ``logits`` and ``reference`` is [B, keep, vocab] with its own ``keep`` (left-padded rows)."""
    out = []
    for i, target in enumerate(targets):
        n = len(target)
        a, b = logits.shape[1] - 1 - n, reference.shape[1] - 1 - n
        lp = logits[i, a : a + n].float().log_softmax(-1)
        lr = reference[i, b : b + n].float().log_softmax(-1)
        out.append((lr.exp() * (lr - lp)).sum())
    return torch.stack(out)
