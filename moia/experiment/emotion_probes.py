"""Validation of emotion vectors as probes (PROTOCOL §7, "Validation"), and the layer scan that chose
the default layer.

- Held-out stories: the model's stories on the 10 held-out topics (never used for any vector), read
  with ``EmotionVectors.score``; one-vs-rest AUROC per emotion (that emotion's stories against all
  other held-out stories, neutral ones included).
- Hand-written sentences (``sentences`` in the shipped stimuli, written for this project; they
  convey an emotion without naming it, plus neutral ones): the same AUROC.
- ``layer_scan``: both AUROCs at every requested layer and number of neutral PCs, from one read of
  every story and sentence at all those layers (the vectors at each layer are exactly what
  ``emotion_vectors`` would build there: ``fit_vectors`` on the same means).
"""

from collections.abc import Sequence
from statistics import mean
from typing import Any

import torch

from ..core.layers import resolve_layers
from ..core.model import LanguageModel, model_name
from ..directions.activations import span_means
from ..directions.emotions import DEFAULT_SKIP, EmotionVectors, fit_vectors, reading_text
from ..directions.stories import (
    NEUTRAL,
    Story,
    StorySettings,
    emotion_stimuli,
    generate_stories,
    story_topics,
)
from ..eval.probes import one_vs_rest


def heldout_stories(
    model: LanguageModel, names: Sequence[str], settings: StorySettings | None = None, cache_dir: Any = None
) -> list[Story]:
    """The model's stories on the held-out topics for ``names``, and neutral ones (cached)."""
    return generate_stories(model, list(names), story_topics("heldout"), settings, True, cache_dir)


def sentences(names: Sequence[str]) -> list[dict[str, str]]:
    """The shipped hand-written sentences of ``names`` and the neutral ones."""
    return [s for s in emotion_stimuli()["sentences"] if s["emotion"] in (*names, NEUTRAL)]


def _summary(aurocs: dict[str, float]) -> dict[str, Any]:
    return {"per_emotion": aurocs, "mean": mean(aurocs.values()) if aurocs else None}


def validate(
    model: LanguageModel,
    vectors: EmotionVectors,
    story_settings: StorySettings | None = None,
    cache_dir: Any = None,
    batch_size: int = 16,
) -> dict[str, Any]:
    """One-vs-rest AUROC of ``vectors.score`` on held-out stories and on the hand-written sentences."""
    stories = heldout_stories(model, vectors.names, story_settings, cache_dir)
    story_scores = vectors.score(model, [s.text for s in stories], batch_size=batch_size)
    sents = sentences(vectors.names)
    sentence_scores = vectors.score(model, [s["text"] for s in sents], batch_size=batch_size)
    return {
        "model": model_name(model),
        "layer": vectors.layer,
        "heldout_stories": {
            "n": len(stories),
            **_summary(one_vs_rest(story_scores, [s.emotion for s in stories], vectors.names)),
        },
        "sentences": {
            "n": len(sents),
            **_summary(one_vs_rest(sentence_scores, [s["emotion"] for s in sents], vectors.names)),
        },
    }


@torch.no_grad()
def layer_scan(
    model: LanguageModel,
    layers: Any = None,
    names: Sequence[str] | None = None,
    n_pcs: Sequence[int] = (0,),
    skip: int = DEFAULT_SKIP,
    story_settings: StorySettings | None = None,
    cache_dir: Any = None,
    batch_size: int = 8,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Held-out story and sentence AUROC (mean over emotions) at each layer × n_pcs."""
    from ..directions.stories import default_emotions

    names = default_emotions() if names is None else list(names)
    layer_ids = resolve_layers(model, layers)
    train = generate_stories(
        model, names, story_topics("train"), story_settings, True, cache_dir, progress=progress
    )
    test = heldout_stories(model, names, story_settings, cache_dir)
    sents = sentences(names)
    emotional = [s for s in train if s.emotion != NEUTRAL]
    neutral = [s for s in train if s.emotion == NEUTRAL]

    def read(texts: list[str], skip_tokens: int) -> torch.Tensor:
        pairs = [reading_text(model.tokenizer, t) for t in texts]
        return span_means(
            model,
            [t for t, _ in pairs],
            layer_ids,
            [s for _, s in pairs],
            skip_tokens,
            (),
            batch_size,
            progress,
        )

    means = read([s.text for s in [*emotional, *neutral]], skip)
    neutral_whole = read([s.text for s in neutral], 0)
    held = read([s.text for s in test], 0)
    sent = read([s["text"] for s in sents], 0)
    rows = []
    for k, layer in enumerate(layer_ids):
        for pcs in n_pcs:
            vectors, mu, sd = fit_vectors(
                means[: len(emotional), k],
                [s.emotion for s in emotional],
                names,
                means[len(emotional) :, k],
                neutral_whole[:, k],
                pcs,
            )
            unit = vectors / vectors.norm(dim=-1, keepdim=True)
            story_auc = one_vs_rest((held[:, k] @ unit.T - mu) / sd, [s.emotion for s in test], names)
            sent_auc = one_vs_rest((sent[:, k] @ unit.T - mu) / sd, [s["emotion"] for s in sents], names)
            rows.append(
                {
                    "layer": layer,
                    "depth": layer / int(model.cfg.n_layers),
                    "n_pcs": pcs,
                    "heldout_stories": _summary(story_auc),
                    "sentences": _summary(sent_auc),
                    "vector_norm": float(vectors.norm(dim=-1).mean()),
                }
            )
    return rows
