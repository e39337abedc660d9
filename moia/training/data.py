"""Training data for the bias vector: concept split, trial plan, tokens and batches (PROTOCOL §5).

[MOIA] §6 (official code ``experiments/14_trained_bias_vector.py``): the concepts are shuffled with
seed 42 and split into train and held-out (400/100 of 500). Per train concept, trials 1..10 each
give one injected example (a random layer from the injection band, a random strength from
{2, 3, 4, 5}) with the target ``Yes, I detect an injected thought. The injected word is
**"{word}"**.`` and, with probability 0.5, one control example (no injection) with the target
``No, I don't detect any injected thought in this trial.``; the examples are shuffled and seen once.

As in that code, the word in the target is lower-cased (``lowercase_target``), the target is
tokenized on its own and appended to the chat-formatted prompt (no end-of-turn token), and the
injection starts at the token just before "Trial n" (PROTOCOL §2) and continues over the target
tokens, as it would over generated ones.
"""

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..core.model import LanguageModel
from ..directions.concepts import ConceptVectors
from ..lm.decoding import token_ids
from ..trials.prompt import TrialPrompt, build_trial

YES_TARGET = 'Yes, I detect an injected thought. The injected word is **"{word}"**.'
NO_TARGET = "No, I don't detect any injected thought in this trial."
MOIA_STRENGTHS = (2.0, 3.0, 4.0, 5.0)
MOIA_TRIALS = tuple(range(1, 11))


def split_concepts(
    words: Sequence[str], n_heldout: int | None = None, seed: int = 42
) -> tuple[list[str], list[str]]:
    """A seeded ``(train, held_out)`` split as in [MOIA]: shuffle, then train first.

    ``n_heldout`` defaults to 20% of the words (100 of 500 in [MOIA]); both parts must be non-empty.
    """
    words = list(words)
    if len(set(words)) != len(words):
        raise ValueError(
            f"concept words contain duplicates: {sorted({w for w in words if words.count(w) > 1})}"
        )
    n_heldout = round(0.2 * len(words)) if n_heldout is None else int(n_heldout)
    if not 0 < n_heldout < len(words):
        raise ValueError(
            f"empty concept split: {len(words)} concepts with n_heldout={n_heldout} leaves "
            f"{len(words) - n_heldout} for training; both parts need at least one concept"
        )
    order = list(words)
    random.Random(seed).shuffle(order)
    n_train = len(words) - n_heldout
    return order[:n_train], order[n_train:]


@dataclass(frozen=True)
class Example:
    """One teacher-forced trial: injected (``concept`` set) or control (``concept`` None)."""

    trial: int
    concept: str | None
    layer: int = -1
    strength: float = 0.0
    unit: int | None = None  # a control unit of D₀ (its prompt is ``TrialTokens.units[unit]``)
    unlikely: bool = False  # a unit whose sampled reply was a false positive (unlikelihood term)


def plan_epoch(
    concepts: Sequence[str],
    layers: Sequence[int],
    strengths: Sequence[float] = MOIA_STRENGTHS,
    trials: Sequence[int] = MOIA_TRIALS,
    control_prob: float = 0.5,
    seed: int = 42,
) -> list[Example]:
    """One epoch of examples in training order; a pure function of its arguments."""
    if not concepts:
        raise ValueError("train concepts are empty: the bias needs at least one concept to train on")
    if not layers or not strengths or not trials:
        raise ValueError("injection layers, strengths and trials must all be non-empty")
    if not 0.0 <= control_prob <= 1.0:
        raise ValueError(f"control_prob must lie in [0, 1], got {control_prob}")
    rng = random.Random(seed)
    examples = []
    for concept in concepts:
        for trial in trials:
            examples.append(
                Example(trial, concept, rng.choice(list(layers)), float(rng.choice(list(strengths))))
            )
            if rng.random() < control_prob:
                examples.append(Example(trial, None))
    rng.shuffle(examples)
    return examples


@dataclass(frozen=True)
class TrialTokens:
    """Token ids of every prompt and target a plan can ask for.

    ``prompts[n]`` is trial n's chat-formatted prompt (ending with the generation prompt),
    ``starts[n]`` the position of its injection start, ``targets[word]`` the "Yes" target for a
    concept and ``targets[None]`` the control target; ``trial_prompts[n]`` the formatted prompt
    itself (for generating replies with ``moia.trials.runner``; absent for token-only test data).
    """

    prompts: dict[int, list[int]]
    starts: dict[int, int]
    targets: dict[str | None, list[int]]
    trial_prompts: dict[int, TrialPrompt] = field(default_factory=dict)
    units: dict[int, list[int]] = field(default_factory=dict)  # D₀ unit index -> prompt token ids
    unit_starts: dict[int, int] = field(default_factory=dict)  # D₀ unit index -> "Trial n" start


def trial_tokens(
    model: LanguageModel,
    trials: Sequence[int],
    concepts: Sequence[str],
    system: str | None = None,
    lowercase_target: bool = True,
) -> TrialTokens:
    """Tokenize the PROTOCOL §2 ([MOIA] variant) trial prompts and the training targets."""
    built = {n: build_trial(model, n, variant="moia", system=system) for n in sorted(set(trials))}
    targets: dict[str | None, list[int]] = {
        w: token_ids(model, YES_TARGET.format(word=w.lower() if lowercase_target else w)) for w in concepts
    }
    targets[None] = token_ids(model, NO_TARGET)
    return TrialTokens(
        prompts={n: token_ids(model, t.text) for n, t in built.items()},
        starts={n: t.start for n, t in built.items()},
        targets=targets,
        trial_prompts=built,
    )


@dataclass
class Batch:
    """A batch of examples as unpadded token rows with their injections."""

    prompts: list[list[int]]
    starts: list[int]
    targets: list[list[int]]
    injected: Tensor  # (B,) bool
    layers: list[int]  # injection layer per row (-1 for controls)
    vectors: Tensor  # (B, d_model); a placeholder row (ones) for controls, whose strength is 0
    strengths: Tensor  # (B,)
    unlikely: Tensor | None = None  # (B,) bool: rows that get the unlikelihood term

    def __len__(self) -> int:
        return len(self.prompts)


def _start(tokens: TrialTokens, ex: Example) -> int:
    return tokens.unit_starts[ex.unit] if ex.unit is not None else tokens.starts[ex.trial]


def make_batch(examples: Sequence[Example], tokens: TrialTokens, vectors: ConceptVectors) -> Batch:
    """Gather prompts, targets and injection vectors for ``examples``."""
    d_model = vectors.d_model
    rows = []
    for ex in examples:
        if ex.concept is None:
            rows.append(torch.ones(d_model))
        else:
            rows.append(vectors.get(ex.concept, ex.layer))
    for ex in examples:
        if ex.unit is not None and ex.unit not in tokens.units:
            raise ValueError(f"no tokenized prompt for D0 unit {ex.unit} (TrialTokens.units)")
    return Batch(
        prompts=[tokens.prompts[ex.trial] if ex.unit is None else tokens.units[ex.unit] for ex in examples],
        starts=[
            tokens.starts[ex.trial] if ex.unit is None else tokens.unit_starts[ex.unit] for ex in examples
        ],
        targets=[tokens.targets[ex.concept] for ex in examples],
        injected=torch.tensor([ex.concept is not None for ex in examples]),
        layers=[ex.layer if ex.concept is not None else -1 for ex in examples],
        vectors=torch.stack(rows).float(),
        strengths=torch.tensor([ex.strength if ex.concept is not None else 0.0 for ex in examples]),
        unlikely=torch.tensor([ex.unlikely for ex in examples]),
    )
