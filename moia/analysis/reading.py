"""Generate with a mood ring and keep what it read, row by row; calibrate a ring (PROTOCOL §8).

``read_replies`` runs batched ``moia.generate`` with the ring (and any other interventions) and
returns, per prompt, a ``RingReading``: the reply, every token id, where the prompt ends, and the
raw projections. ``calibrate`` reads the model's own replies to neutral instructions
(``moia/data/moodring_calibration.json``) and takes the mean and spread of the projections over the
reply tokens: the zero and the unit of the ring's z-scores, at the grain the ring reads (single
tokens, not text means).
"""

import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from jaxtyping import Float
from torch import Tensor

from ..core.interventions import Intervention
from ..core.model import LanguageModel
from ..core.readout import Calibration, MoodRing
from ..lm.chat import Messages
from ..lm.decoding import generate


@dataclass(frozen=True)
class RingReading:
    """One generated row as the ring saw it."""

    reply: str
    tokens: list[int]  # prompt then generated ids
    prompt_length: int
    raw: Float[Tensor, "n k"]  # projections, one row per token

    @property
    def generated(self) -> list[int]:
        return self.tokens[self.prompt_length :]


@cache
def _calibration_file() -> dict[str, Any]:
    text = resources.files("moia").joinpath("data", "moodring_calibration.json").read_text(encoding="utf-8")
    return dict(json.loads(text))


def neutral_prompts() -> list[str]:
    """The shipped neutral instructions the ring is calibrated on."""
    return list(_calibration_file()["prompts"])


def read_replies(
    model: LanguageModel,
    prompts: Sequence[str | Messages],
    ring: MoodRing,
    *interventions: Intervention,
    max_new_tokens: int = 100,
    batch_size: int = 8,
    **generate_options: Any,
) -> list[RingReading]:
    """Each prompt's reply and the ring's reading of it, ``batch_size`` prompts per generate call."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    out: list[RingReading] = []
    for i in range(0, len(prompts), batch_size):
        batch = list(prompts[i : i + batch_size])
        replies = generate(
            model, batch, *interventions, ring, max_new_tokens=max_new_tokens, **generate_options
        )
        out += [
            RingReading(reply, tokens, n, raw)
            for reply, tokens, n, raw in zip(replies, ring.tokens, ring.prompt_lengths, ring.raw, strict=True)
        ]
    return out


def calibrate(
    model: LanguageModel,
    ring: MoodRing,
    prompts: Sequence[str] | None = None,
    max_new_tokens: int = 96,
    batch_size: int = 8,
    system: str | None = "",
) -> Calibration:
    """The ring's calibration from the model's own replies to neutral ``prompts`` (default: the
    shipped ones): mean and std of each projection over every generated token. ``ring`` itself is
    not used to record (its last reading is kept); a ring at the same layer and site is."""
    probe = MoodRing(ring.unit, layer=ring.layer, names=ring.names, site=ring.site)
    readings = read_replies(
        model,
        list(neutral_prompts() if prompts is None else prompts),
        probe,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        system=system,
    )
    return Calibration.from_raw([r.raw[r.prompt_length :] for r in readings], names=ring.names)
