"""Concept vectors for the injected-thought experiment (PROTOCOL §1; [LINDSEY], [MOIA]).

v(word, L) = act(word, L) − mean over the baseline words of act(baseline, L), where act is the
output of decoder layer L (``hook_resid_post``) at the last token of the chat-formatted prompt
``Tell me about {word}`` with the generation prompt. Not normalised. Extract at the layer the
vector is later injected at. No system message is sent, as in [MOIA]'s code
(``src/vector_utils.py``, ``extract_concept_vectors_batch``): on SmolLM2 an explicit empty system
turn instead moves the vectors by a median 82% of their norm (PROTOCOL §1).

[MOIA] keeps the word capitalised ("Dust", ``capitalize=True``, the default); [LINDSEY]
lowercases it (``capitalize=False``). The baseline words get the same casing as the concept words.
The default baseline is the 100 words of [LINDSEY] shipped in ``moia/data/concepts.json``
("Butterflies" twice, kept: the mean weighs it double, as in the source).
"""

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from ..core.layers import depth_fractions, resolve_layers
from ..core.model import LanguageModel
from ..io import json_meta, load_tensors, model_metadata, save_tensors
from ..lm.chat import format_chat
from .activations import residual_stream

KIND = "concept_vectors"
DEFAULT_PROMPT = "Tell me about {word}"


@cache
def _concepts_json() -> dict[str, Any]:
    return json.loads(resources.files("moia").joinpath("data", "concepts.json").read_text(encoding="utf-8"))


def concept_words(name: str = "test") -> list[str]:
    """A shipped word list: "baseline" (100), "test" (50), "extra" (450, all categories), or one
    category of "extra" (e.g. "animals")."""
    data = _concepts_json()
    if name in ("baseline", "test", "avoid"):
        return list(data[name])
    if name == "extra":
        return [w for words in data["extra"].values() for w in words]
    if name in data["extra"]:
        return list(data["extra"][name])
    raise KeyError(
        f"unknown word list {name!r}: expected baseline, test, extra or one of {sorted(data['extra'])}"
    )


def apply_casing(word: str, capitalize: bool) -> str:
    """[MOIA]: first letter upper-cased ("dust" -> "Dust"); [LINDSEY]: all lower-case."""
    return word[:1].upper() + word[1:] if capitalize else word.lower()


@dataclass(frozen=True)
class ConceptVectors:
    """Concept vectors for ``words`` × ``layers``; ``vectors`` is [word, layer, d_model] float32.

    ``cv["Dust", 18]`` or ``cv.get("Dust", 0.6)`` (a depth) gives one [d_model] vector.
    """

    words: list[str]
    layers: list[int]
    vectors: Float[Tensor, "word layer d_model"]
    model_name: str
    n_layers: int
    settings: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        bad = [
            x
            for x in self.layers
            if isinstance(x, bool) or not isinstance(x, int) or not 0 <= x < self.n_layers
        ]
        if bad or len(set(self.layers)) != len(self.layers):
            raise ValueError(
                f"layers {self.layers} must be distinct layer indices of a {self.n_layers}-layer model"
            )
        if not bool(torch.isfinite(self.vectors).all()):
            raise ValueError("concept vectors contain NaN or inf values")
        expected = (len(self.words), len(self.layers))
        if tuple(self.vectors.shape[:2]) != expected or self.vectors.dim() != 3:
            raise ValueError(
                f"vectors has shape {tuple(self.vectors.shape)}, expected {expected} + (d_model,)"
            )

    @property
    def d_model(self) -> int:
        return int(self.vectors.shape[-1])

    def __getitem__(self, key: Any) -> Float[Tensor, " d_model"]:  # (word, layer), checked below
        if not (isinstance(key, tuple) and len(key) == 2):
            raise KeyError(
                f"index with (word, layer), e.g. cv[{self.words[0]!r}, {self.layers[0]}]; got {key!r}"
            )
        return self.get(*key)

    def get(self, word: str, layer: int | float) -> Float[Tensor, " d_model"]:
        """The vector of ``word`` (exact, else case-insensitive) at ``layer`` (index or depth)."""
        return self.vectors[self._word_index(word), self._layer_index(layer)]

    def _word_index(self, word: str) -> int:
        if word in self.words:
            return self.words.index(word)
        folded = [i for i, w in enumerate(self.words) if w.lower() == str(word).lower()]
        if len(folded) == 1:
            return folded[0]
        shown = self.words if len(self.words) <= 20 else [*self.words[:20], "..."]
        raise KeyError(f"no concept vector for word {word!r}; words: {shown}")

    def _layer_index(self, layer: int | float) -> int:
        try:
            (index,) = resolve_layers(self.n_layers, [layer])
        except (TypeError, ValueError) as e:
            raise KeyError(f"{e}; layers with vectors: {self.layers}") from None
        if index not in self.layers:
            raise KeyError(f"no concept vectors at layer {index} (from {layer!r}); layers: {self.layers}")
        return self.layers.index(index)

    def save(self, path: str | os.PathLike) -> None:
        """Write safetensors with metadata: model, d_model, n_layers, layers and depths, words, recipe."""
        save_tensors(
            path,
            KIND,
            {"vectors": self.vectors.float()},
            {
                "model": self.model_name,
                "d_model": str(self.d_model),
                "n_layers": str(self.n_layers),
                "layers": self.layers,
                "depths": depth_fractions(self.layers, self.n_layers),
                "words": self.words,
                "settings": self.settings,
            },
        )

    @classmethod
    def load(cls, path: str | os.PathLike, model: LanguageModel | None = None) -> "ConceptVectors":
        """Read a file written by ``save``; given a model, check that d_model and layers fit it."""
        tensors, meta = load_tensors(path, KIND, model)
        if "vectors" not in tensors:
            raise ValueError(f"{path}: no 'vectors' tensor in a concept-vector file")
        vectors = tensors["vectors"]
        if vectors.dim() != 3 or str(vectors.shape[-1]) != meta.get("d_model"):
            raise ValueError(
                f"{path}: vectors shape {tuple(vectors.shape)} disagrees with d_model={meta.get('d_model')}"
            )
        try:
            return cls(
                words=json_meta(meta, "words", path),
                layers=json_meta(meta, "layers", path),
                vectors=vectors,
                model_name=meta.get("model", "unknown"),
                n_layers=int(meta["n_layers"]),
                settings=json_meta(meta, "settings", path),
            )
        except (KeyError, ValueError) as e:
            raise ValueError(f"{path}: inconsistent concept-vector file ({e})") from e


@torch.no_grad()
def concept_vectors(
    model: LanguageModel,
    words: Sequence[str],
    layers: Any,
    baseline_words: Sequence[str] | None = None,
    capitalize: bool = True,
    prompt: str = DEFAULT_PROMPT,
    system: str | None = None,
    batch_size: int = 16,
    progress: bool = False,
) -> ConceptVectors:
    """Concept vectors for ``words`` at ``layers`` (indices or depth fractions), PROTOCOL §1.

    Every requested layer comes from one forward per batch of prompts (concept and baseline words
    batched together), stopped after the deepest requested layer.

    Args:
        words: the concepts; must be distinct.
        layers: decoder layer indices and/or depth fractions (see ``resolve_layers``).
        baseline_words: the words whose mean activation is subtracted (default: the 100 shipped).
        capitalize: True for [MOIA]'s "Dust", False for [LINDSEY]'s "dust".
        prompt: the user turn, with ``{word}``.
        system: the system turn; None (default) sends no system message, as [MOIA]'s code does, so
            a template's own default system prompt applies (SmolLM2's); "" an explicit empty one.
    """
    if isinstance(words, str):
        raise TypeError(f"words must be a list of words, not one string ({words!r})")
    words = list(words)
    if not words:
        raise ValueError("words must not be empty")
    duplicates = sorted({w for w in words if words.count(w) > 1})
    if duplicates:
        raise ValueError(f"words contains duplicates: {duplicates}")
    if "{word}" not in prompt:
        raise ValueError(f"prompt must contain '{{word}}', got {prompt!r}")
    baseline = concept_words("baseline") if baseline_words is None else list(baseline_words)
    if not baseline:
        raise ValueError("baseline_words must not be empty (None uses the 100 shipped baseline words)")
    layer_ids = resolve_layers(model, layers)
    texts = [
        format_chat(model, prompt.format(word=apply_casing(w, capitalize)), system=system)
        for w in [*words, *baseline]
    ]
    acts = torch.empty(len(texts), len(layer_ids), int(model.cfg.d_model), dtype=torch.float64)
    for idx, batch in residual_stream(
        model, texts, layer_ids, (-1,), batch_size, progress=progress, desc="concept vectors"
    ):
        acts[idx] = batch[:, 0].to(device="cpu", dtype=torch.float64)
    vectors = acts[: len(words)] - acts[len(words) :].mean(0)  # float64, then stored as float32
    meta = model_metadata(model)
    return ConceptVectors(
        words=words,
        layers=layer_ids,
        vectors=vectors.float(),
        model_name=meta["model"],
        n_layers=int(meta["n_layers"]),
        settings={
            "recipe": "resid_post at the last prompt token minus the baseline mean (PROTOCOL §1)",
            "prompt": prompt,
            "system": system,
            "capitalize": capitalize,
            "baseline_words": baseline,
            "model_dtype": str(model.cfg.dtype),
        },
    )
