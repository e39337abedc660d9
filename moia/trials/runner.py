"""The one trial runner: injected-thought trials in batches, on the decoding engine (PROTOCOL §2).

A ``TrialRow`` is one trial: a prompt, and optionally a vector injected at a layer with a strength
from a start position (the prompt's "Trial n" start by default; 0 injects at every position). The
sweep (``moia.experiment``), the bias trainer's calibration and evaluation (``moia.training``) and
the demo all run their trials here.

Rows of different concepts, layers, strengths and kinds share one batch: one ``ConceptInjection``
per injection layer present, with per-row vectors, strengths and starts (strength 0 on rows
injected elsewhere, and on controls). The arm's own interventions (ablation, bias) apply to every
row. When every row's prompt shares its tokens up to the earliest injection start, those tokens
run once per batch (``generate_shared_prefix``); the replies are the same either way (tested).

A batch that runs out of device memory is halved and retried (and later batches are cut to the
size that fitted), so no trial is lost; each row's reply does not depend on its batch.
"""

import hashlib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..core.interventions import ConceptInjection, Intervention, injections_by_layer
from ..core.model import LanguageModel, device_of
from ..lm.decoding import (
    GREEDY,
    Sampling,
    generate_shared_prefix,
    generate_tokens,
    left_pad,
    pad_token_id,
    token_ids,
)
from .prompt import TrialPrompt


@dataclass(frozen=True)
class TrialRow:
    """One trial to generate. ``vector`` None is a control (nothing injected)."""

    prompt: TrialPrompt
    vector: Tensor | None = None
    layer: int | None = None
    strength: float = 0.0
    start: int | None = None  # injection start; None: the prompt's (the token before "Trial n")
    seed: int | None = None  # this trial's sampling seed (required when sampling)

    @property
    def injected(self) -> bool:
        return self.vector is not None

    @property
    def injection_start(self) -> int:
        return self.prompt.start if self.start is None else self.start


class TrialRunner:
    """Generates the replies of trial rows, batched (no per-trial loop).

    Args:
        max_new_tokens, sampling: as ``moia.lm.decoding.generate_tokens``.
        shared_prefix: run the prompt tokens every row shares (before any injection) once per batch.
        batch_size: rows per generate call in ``run``.
    """

    def __init__(
        self,
        model: LanguageModel,
        max_new_tokens: int = 100,
        sampling: Sampling = GREEDY,
        shared_prefix: bool = True,
        batch_size: int = 32,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        self.model, self.max_new_tokens, self.sampling = model, max_new_tokens, sampling
        self.shared_prefix, self.batch_size = shared_prefix, batch_size
        self.rows_per_call: int | None = None  # set when a batch ran out of memory
        self._ids: dict[str, list[int]] = {}

    def ids(self, prompt: TrialPrompt) -> list[int]:
        if prompt.text not in self._ids:
            self._ids[prompt.text] = token_ids(self.model, prompt.text)
        return self._ids[prompt.text]

    def injections(self, rows: Sequence[TrialRow]) -> list[ConceptInjection]:
        """One ``ConceptInjection`` per injection layer among ``rows``; other rows get strength 0."""
        return injections_by_layer(
            [r.vector for r in rows],
            [r.layer if r.injected else None for r in rows],
            [r.strength if r.injected else 0.0 for r in rows],
            torch.tensor([r.injection_start for r in rows]),
        )

    def generate(self, rows: Sequence[TrialRow], *interventions: Intervention) -> list[str]:
        """The replies of one batch of rows (forced trials: the continuation after the prefill),
        halving it on out-of-memory errors until it fits."""
        size = self.rows_per_call or len(rows)
        out: list[str] = []
        for i in range(0, len(rows), max(size, 1)):
            out += self._fitting(rows[i : i + size], interventions)
        return out

    def _fitting(self, rows: Sequence[TrialRow], interventions: Sequence[Intervention]) -> list[str]:
        try:
            return self._generate(rows, *interventions)
        except torch.OutOfMemoryError:
            if len(rows) <= 1:
                raise
        half = (len(rows) + 1) // 2
        warnings.warn(
            f"out of memory at {len(rows)} trials per batch; retrying as {half} + {len(rows) - half}",
            RuntimeWarning,
            stacklevel=3,
        )
        self.rows_per_call = min(self.rows_per_call or half, half)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return self._fitting(rows[:half], interventions) + self._fitting(rows[half:], interventions)

    def _generate(self, rows: Sequence[TrialRow], *interventions: Intervention) -> list[str]:
        if not rows:
            return []
        seeds = None
        if not self.sampling.greedy:
            if any(r.seed is None for r in rows):
                raise ValueError("sampled trials need a seed per row (TrialRow.seed)")
            seeds = [int(r.seed) for r in rows]  # type: ignore[arg-type]
        ids = [self.ids(r.prompt) for r in rows]
        injections = self.injections(rows)
        prefix = _common_prefix(ids, min(r.injection_start for r in rows) if injections else None)
        kwargs: dict[str, Any] = dict(max_new_tokens=self.max_new_tokens, sampling=self.sampling, seeds=seeds)
        if self.shared_prefix and prefix:
            new = generate_shared_prefix(
                self.model,
                ids[0][:prefix],
                [row[prefix:] for row in ids],
                shared=interventions,
                per_row=injections,
                **kwargs,
            )
        else:
            tokens, mask = left_pad(ids, pad_token_id(self.model.tokenizer), device_of(self.model))
            new = generate_tokens(self.model, tokens, mask, *interventions, *injections, **kwargs)
        return [self.model.tokenizer.decode(row, skip_special_tokens=True) for row in new]

    def run(
        self,
        rows: Sequence[TrialRow],
        *interventions: Intervention,
        progress: bool = False,
        desc: str = "trials",
    ) -> list[str]:
        """The replies of any number of rows, ``batch_size`` at a time, in order."""
        out: list[str] = []
        with tqdm(total=len(rows), desc=desc, unit="trial", disable=not progress) as bar:
            for i in range(0, len(rows), self.batch_size):
                batch = rows[i : i + self.batch_size]
                out += self.generate(batch, *interventions)
                bar.update(len(batch))
        return out


def _common_prefix(rows: Sequence[Sequence[int]], limit: int | None) -> int:
    """Length of the token prefix all rows share, at most ``limit`` and shorter than every row."""
    n = min(len(r) for r in rows) - 1  # every row keeps at least one suffix token
    if limit is not None:
        n = min(n, limit)
    first = rows[0]
    for i in range(max(n, 0)):
        if any(r[i] != first[i] for r in rows[1:]):
            return i
    return max(n, 0)


def stable_seed(*parts: Any) -> int:
    """A 63-bit seed from the parts' text (Python's ``hash`` is salted per process)."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def random_direction(like: Tensor, seed: int, concept: str, layer: int) -> Tensor:
    """A Gaussian random direction with the norm of ``like`` ([LINDSEY]'s control), the same for the
    same (seed, concept, layer) on every platform (drawn on the CPU in float64)."""
    g = torch.Generator().manual_seed(stable_seed("random-direction", seed, concept, layer))
    r = torch.randn(like.shape[-1], generator=g, dtype=torch.float64)
    return (r * (like.double().norm() / r.norm())).to(like.dtype)
