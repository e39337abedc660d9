"""Emotion vectors: directions a model's residual stream takes in text about a felt emotion (PROTOCOL §7).

Recipe: the model writes short third-person stories in which a character feels each emotion, and
neutral descriptions of the same topics (``moia.directions.stories``). Each story is read alone,
after the tokenizer's BOS token (the first position of a sequence is an attention sink whose
residual norm is about 100 times the others', so it is kept out of every mean), and its residual
stream at one decoder layer's output (``hook_resid_post``) is averaged over the story's tokens,
skipping the first ``skip``. Per emotion, the mean over its stories; the vector is that mean minus
the mean over all emotions. Optionally the top ``n_pcs`` principal components of the neutral
stories' means are projected out (directions along which emotionless text varies anyway).
``vectors`` are raw: not normalised.

Reading (``score``, ``project``): the projection of a text's mean residual (over all its tokens) onto
each *unit* emotion vector, z-scored with the mean and standard deviation of the same read over the
neutral stories (``neutral_mean``, ``neutral_std``). A score of 2 means "two neutral-text standard
deviations along this emotion".

The mood ring reads ``project``: any residual activations [..., d_model] at ``layer`` to z-scores
[..., emotion], in the order of ``names``.
"""

import hashlib
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from ..core.interventions import Intervention
from ..core.layers import resolve_layer
from ..core.model import LanguageModel
from ..io import json_meta, load_tensors, model_metadata, save_tensors
from .activations import Span, span_means
from .stories import (
    NEUTRAL,
    Story,
    StorySettings,
    default_emotions,
    generate_stories,
    load_stories,
    story_topics,
)

KIND = "emotion_vectors"
DEFAULT_LAYER = 0.5  # depth fraction; chosen by held-out AUROC across depths (README, "Functional emotions")
DEFAULT_SKIP = 8  # story tokens left out at the start of each story, before the emotion is set up
DEFAULT_N_PCS = 0  # neutral principal components projected out


def reading_text(tokenizer: Any, text: str) -> tuple[str, Span]:
    """``text`` as ``span_means`` reads it: after the BOS token (if the tokenizer has one), and the
    character span of ``text`` inside it."""
    bos = getattr(tokenizer, "bos_token", None) or ""
    return bos + text, (len(bos), len(bos) + len(text))


@dataclass(frozen=True)
class EmotionVectors:
    """Emotion vectors at one layer: ``vectors`` [emotion, d_model] float32, raw, in ``names`` order.

    ``neutral_mean`` and ``neutral_std`` [emotion] calibrate ``project``/``score`` (z-scores).
    """

    names: list[str]
    layer: int
    vectors: Float[Tensor, "emotion d_model"]
    neutral_mean: Float[Tensor, " emotion"]
    neutral_std: Float[Tensor, " emotion"]
    model_name: str
    n_layers: int
    settings: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(set(self.names)) != len(self.names) or not self.names:
            raise ValueError(f"names must be distinct and non-empty, got {self.names}")
        if (
            isinstance(self.layer, bool)
            or not isinstance(self.layer, int)
            or not 0 <= self.layer < self.n_layers
        ):
            raise ValueError(f"layer {self.layer!r} must be a layer index of a {self.n_layers}-layer model")
        if self.vectors.dim() != 2 or self.vectors.shape[0] != len(self.names):
            raise ValueError(
                f"vectors has shape {tuple(self.vectors.shape)}, expected ({len(self.names)}, d_model)"
            )
        for name, t in (("vectors", self.vectors), ("neutral_mean", self.neutral_mean)):
            if not bool(torch.isfinite(t).all()):
                raise ValueError(f"{name} contains NaN or inf values")
        if bool((self.vectors.norm(dim=-1) == 0).any()):
            raise ValueError("an emotion vector is zero")
        for name, t in (("neutral_mean", self.neutral_mean), ("neutral_std", self.neutral_std)):
            if tuple(t.shape) != (len(self.names),):
                raise ValueError(f"{name} has shape {tuple(t.shape)}, expected ({len(self.names)},)")
        if not bool((self.neutral_std > 0).all()) or not bool(torch.isfinite(self.neutral_std).all()):
            raise ValueError("neutral_std must be finite and > 0")

    @property
    def d_model(self) -> int:
        return int(self.vectors.shape[-1])

    @property
    def fingerprint(self) -> str:
        """sha256 (first 16 hex digits) of the float32 vectors: ties a run's records to its vectors."""
        data = self.vectors.detach().float().cpu().contiguous().numpy().tobytes()
        return hashlib.sha256(data).hexdigest()[:16]

    @property
    def unit(self) -> Float[Tensor, "emotion d_model"]:
        """The vectors normalised to unit length (what ``project`` projects onto)."""
        return self.vectors / self.vectors.norm(dim=-1, keepdim=True)

    def index(self, name: str) -> int:
        if name in self.names:
            return self.names.index(name)
        raise KeyError(f"no emotion vector for {name!r}; emotions: {self.names}")

    def vector(self, name: str) -> Float[Tensor, " d_model"]:
        """The raw vector of emotion ``name``."""
        return self.vectors[self.index(name)]

    def get(self, name: str, layer: int | float) -> Float[Tensor, " d_model"]:
        """``vector(name)``, checking that ``layer`` (index or depth) is this set's layer (the
        lookup ``ConceptVectors.get`` offers, so a sweep can inject either)."""
        index = resolve_layer(self.n_layers, layer)
        if index != self.layer:
            raise KeyError(f"emotion vectors are at layer {self.layer}, not {index} (from {layer!r})")
        return self.vector(name)

    def project(self, acts: Float[Tensor, "*batch d_model"]) -> Float[Tensor, "*batch emotion"]:
        """Z-scores of residual activations read at ``layer``: (acts · unit − neutral_mean) / neutral_std.

        Computed in float64 on ``acts``' device and returned as float32. Calibrated on text means;
        single-token activations land on the same scale with a wider spread."""
        unit = self.unit.to(device=acts.device, dtype=torch.float64)
        mean = self.neutral_mean.to(device=acts.device, dtype=torch.float64)
        std = self.neutral_std.to(device=acts.device, dtype=torch.float64)
        return ((acts.to(torch.float64) @ unit.T - mean) / std).float()

    def score(
        self,
        model: LanguageModel,
        texts: Sequence[str],
        spans: Sequence[Span | None] | None = None,
        interventions: Sequence[Intervention] = (),
        batch_size: int = 16,
    ) -> Float[Tensor, "text emotion"]:
        """Z-scores [text, emotion] (order ``names``) of the mean residual over each text's tokens.

        Without ``spans``, each text is read alone after the BOS token, as the stories were. With
        ``spans`` (character ranges), the texts are read as given (e.g. a chat-formatted prompt)
        and averaged over the span. Batch- and padding-invariant (tested)."""
        if isinstance(texts, str):
            raise TypeError("texts must be a list of strings, not one string")
        if not texts:
            raise ValueError("texts must not be empty")
        if self.d_model != int(model.cfg.d_model) or self.n_layers != int(model.cfg.n_layers):
            raise ValueError(
                f"emotion vectors of {self.model_name!r} (d_model {self.d_model}, {self.n_layers} layers) "
                f"do not fit this model (d_model {model.cfg.d_model}, {model.cfg.n_layers} layers)"
            )
        if spans is None:
            read = [reading_text(model.tokenizer, t) for t in texts]
            texts, spans = [t for t, _ in read], [s for _, s in read]
        means = span_means(model, texts, [self.layer], spans, 0, interventions, batch_size)
        return self.project(means[:, 0])

    def save(self, path: str | os.PathLike) -> None:
        """Write safetensors with metadata: model, d_model, n_layers, layer and depth, names, recipe."""
        save_tensors(
            path,
            KIND,
            {
                "vectors": self.vectors.float(),
                "neutral_mean": self.neutral_mean.float(),
                "neutral_std": self.neutral_std.float(),
            },
            {
                "model": self.model_name,
                "d_model": str(self.d_model),
                "n_layers": str(self.n_layers),
                "layer": str(self.layer),
                "depth": str(self.layer / self.n_layers),
                "names": self.names,
                "settings": self.settings,
            },
        )

    @classmethod
    def load(cls, path: str | os.PathLike, model: LanguageModel | None = None) -> "EmotionVectors":
        """Read a file written by ``save``; given a model, check that d_model and layers fit it."""
        tensors, meta = load_tensors(path, KIND, model)
        missing = {"vectors", "neutral_mean", "neutral_std"} - set(tensors)
        if missing:
            raise ValueError(f"{path}: no {sorted(missing)} tensor(s) in an emotion-vector file")
        try:
            return cls(
                names=json_meta(meta, "names", path),
                layer=int(meta["layer"]),
                vectors=tensors["vectors"],
                neutral_mean=tensors["neutral_mean"],
                neutral_std=tensors["neutral_std"],
                model_name=meta.get("model", "unknown"),
                n_layers=int(meta["n_layers"]),
                settings=json_meta(meta, "settings", path),
            )
        except (KeyError, ValueError) as e:
            raise ValueError(f"{path}: inconsistent emotion-vector file ({e})") from e


def vectors_from_means(
    means: Float[Tensor, "story d_model"],
    labels: Sequence[str],
    names: Sequence[str],
    neutral: Float[Tensor, "neutral d_model"] | None = None,
    n_pcs: int = 0,
) -> Float[Tensor, "emotion d_model"]:
    """The recipe on per-story means: per emotion, the mean of its stories' means, minus the mean
    over emotions; then the top ``n_pcs`` principal components of ``neutral`` (story means)
    projected out. float64."""
    if len(labels) != means.shape[0]:
        raise ValueError(f"{len(labels)} labels for {means.shape[0]} story means")
    if len(names) < 2:
        raise ValueError(
            f"emotion vectors need at least two emotions (each is relative to their mean), got {list(names)}"
        )
    counts = {n: sum(1 for label in labels if label == n) for n in names}
    empty = [n for n, c in counts.items() if c == 0]
    if empty:
        raise ValueError(f"no stories for emotion(s) {empty}")
    per_emotion = torch.stack(
        [means[[i for i, label in enumerate(labels) if label == n]].double().mean(0) for n in names]
    )
    vectors = per_emotion - per_emotion.mean(0)
    if n_pcs:
        if neutral is None or neutral.shape[0] <= n_pcs:
            got = 0 if neutral is None else neutral.shape[0]
            raise ValueError(f"n_pcs={n_pcs} needs more than {n_pcs} neutral story means, got {got}")
        centred = neutral.double() - neutral.double().mean(0)
        pcs = torch.linalg.svd(centred, full_matrices=False).Vh[:n_pcs]  # [n_pcs, d_model], orthonormal
        vectors = vectors - (vectors @ pcs.T) @ pcs
    return vectors


def fit_vectors(
    means: Float[Tensor, "story d_model"],
    labels: Sequence[str],
    names: Sequence[str],
    neutral: Float[Tensor, "neutral d_model"],
    neutral_whole: Float[Tensor, "neutral d_model"],
    n_pcs: int = 0,
) -> tuple[Float[Tensor, "emotion d_model"], Float[Tensor, " emotion"], Float[Tensor, " emotion"]]:
    """``(vectors, neutral_mean, neutral_std)`` from story means: ``vectors_from_means`` on
    ``means`` (read with the skip; ``neutral`` for the PCs), and the calibration of the scores on
    ``neutral_whole`` (neutral stories read over all their tokens, as ``score`` reads a text)."""
    vectors = vectors_from_means(means, labels, names, neutral, n_pcs)
    projections = neutral_whole.double() @ (vectors / vectors.norm(dim=-1, keepdim=True)).T
    return vectors, projections.mean(0), projections.std(0)


def _check_emotions(emotions: Sequence[str] | None, known: Sequence[str], where: str) -> list[str]:
    if isinstance(emotions, str):
        raise TypeError(f"emotions must be a list of names, not one string ({emotions!r})")
    names = list(known) if emotions is None else list(emotions)
    if not names:
        raise ValueError("emotions must not be empty")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"emotions contains duplicates: {dupes}")
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown emotion(s) {unknown}: {where} has {list(known)}")
    if NEUTRAL in names:
        raise ValueError(f"{NEUTRAL!r} is the baseline, not an emotion")
    return names


@torch.no_grad()
def emotion_vectors(
    model: LanguageModel,
    emotions: Sequence[str] | None = None,
    layer: int | float = DEFAULT_LAYER,
    stories: str | os.PathLike | Sequence[Story] | None = None,
    topics: Sequence[str] | None = None,
    n_pcs: int = DEFAULT_N_PCS,
    skip: int = DEFAULT_SKIP,
    story_settings: StorySettings | None = None,
    cache_dir: Any = None,
    batch_size: int = 16,
    progress: bool = False,
) -> EmotionVectors:
    """Emotion vectors at ``layer`` (index or depth fraction), PROTOCOL §7.

    Args:
        emotions: names (default the ten shipped); each needs stories.
        stories: a JSONL file or ``Story`` list replacing the generated stories; it must hold
            stories for every emotion and neutral ones (emotion "neutral", for the calibration).
        topics: topics of generated stories (default the 24 shipped training topics; the other
            10 are held out for validation).
        n_pcs: neutral principal components projected out of the vectors.
        skip: tokens left out at the start of each story.
        story_settings, cache_dir: how stories are generated and where they are cached.
    """
    layer_index = resolve_layer(model, layer, "layer")
    settings = story_settings or StorySettings()
    if stories is None:
        names = _check_emotions(emotions, default_emotions(), "the shipped stimuli")
        topics = story_topics("train") if topics is None else list(topics)
        story_list = generate_stories(model, names, topics, settings, True, cache_dir, progress=progress)
        source: dict[str, Any] = {
            "stories": "generated",
            "topics": topics,
            "story_settings": asdict(settings),
        }
    else:
        story_list = load_stories(stories) if isinstance(stories, (str, os.PathLike)) else list(stories)
        if not story_list:
            raise ValueError("stories must not be empty")
        labelled = list(dict.fromkeys(s.emotion for s in story_list if s.emotion != NEUTRAL))
        names = _check_emotions(emotions if emotions is not None else labelled, labelled, "the stories")
        source = {"stories": "supplied"}
    neutral = [s for s in story_list if s.emotion == NEUTRAL]
    emotional = [s for s in story_list if s.emotion in names]
    if len(neutral) < 2:
        raise ValueError(
            f"{len(neutral)} neutral stories (emotion {NEUTRAL!r}): the scores' calibration needs at least 2"
        )
    read = [reading_text(model.tokenizer, s.text) for s in [*emotional, *neutral]]
    texts, spans = [t for t, _ in read], [s for _, s in read]
    means = span_means(model, texts, [layer_index], spans, skip, (), batch_size, progress, "emotion stories")
    whole = span_means(
        model, texts[len(emotional) :], [layer_index], spans[len(emotional) :], 0, (), batch_size
    )
    vectors, mean, std = fit_vectors(
        means[: len(emotional), 0],
        [s.emotion for s in emotional],
        names,
        means[len(emotional) :, 0],
        whole[:, 0],
        n_pcs,
    )
    meta = model_metadata(model)
    return EmotionVectors(
        names=names,
        layer=layer_index,
        vectors=vectors.float(),
        neutral_mean=mean.float(),
        neutral_std=std.float(),
        model_name=meta["model"],
        n_layers=int(meta["n_layers"]),
        settings={
            "recipe": "mean resid_post over story tokens, per emotion, minus the mean over emotions (§7)",
            "skip": skip,
            "n_pcs": n_pcs,
            "n_stories": {n: sum(1 for s in story_list if s.emotion == n) for n in [*names, NEUTRAL]},
            "model_dtype": str(model.cfg.dtype),
            **source,
        },
    )
