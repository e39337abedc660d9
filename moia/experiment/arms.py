"""The arms of the injected-thought sweep and what they need, cached in the output folder.

- ``baseline``: the model as it is.
- ``ablation``: refusal directions ablated at every layer (PROTOCOL §4): [ARDITI]'s selected
  direction, fully, at every writer (``kind="selected"``), or [MOIA]'s one direction per layer
  (position −2), weighted, at each decoder layer's output (``kind="per_layer"``). The weights are
  named by ``moia.directions.ablation_weights`` ([MOIA]'s region weights mapped by depth, its
  uniform fallback, a number, or a file) and recorded per layer.
- ``bias``: a trained content-agnostic bias vector added at one layer in every trial (PROTOCOL
  §5; a ``moia.directions.bias`` file). Without a bias file the bias arms are skipped with a message.
- ``ablation+bias``: both.

Concept vectors and refusal directions are extracted once and cached in the output folder
(``concept_vectors.safetensors``, ``refusal_directions.safetensors``), so a resumed run injects
the very same vectors.
"""

import hashlib
import pathlib
from dataclasses import asdict, dataclass
from typing import Any

from ..core.interventions import AdditiveVector, Intervention
from ..core.model import LanguageModel
from ..directions.ablation_weights import ablation_weights, check_weights_spec
from ..directions.bias import BiasVector
from ..directions.concepts import ConceptVectors, concept_vectors
from ..directions.prompts import load_prompts
from ..directions.refusal import RefusalDirections, refusal_directions

NO_BIAS = "no bias file (train one with `moia train-bias`, then pass --bias FILE)"
CONCEPT_FILE = "concept_vectors.safetensors"
REFUSAL_FILE = "refusal_directions.safetensors"


@dataclass(frozen=True)
class AblationSpec:
    """How the ablation arm ablates refusal directions (PROTOCOL §4)."""

    kind: str = "per_layer"  # "selected" ([ARDITI]) or "per_layer" ([MOIA])
    weights: str = "moia-regions"  # see ``moia.directions.ablation_weights``; "1" = full ablation
    site: str = "resid_post"  # "writers" ([ARDITI]), "resid_post" ([MOIA]) or "resid_pre"
    position: int = -2  # the post-instruction position of the per-layer directions

    def __post_init__(self) -> None:
        if self.kind not in ("selected", "per_layer"):
            raise ValueError(f"ablation kind must be 'selected' or 'per_layer', got {self.kind!r}")
        check_weights_spec(self.weights)  # a bad name, number or file fails here, before any model

    def layer_weights(self, n_layers: int) -> list[float]:
        return ablation_weights(self.weights, n_layers)


def cached_concept_vectors(
    model: LanguageModel,
    words: list[str],
    layers: list[int],
    out_dir: Any,
    capitalize: bool = True,
    progress: bool = True,
) -> ConceptVectors:
    """The cached concept vectors if they cover ``words`` × ``layers``, else extract (the union
    with what the cache held) and cache them."""
    path = pathlib.Path(out_dir) / CONCEPT_FILE
    if path.exists():
        cached = ConceptVectors.load(path, model)
        for key, value in (("capitalize", capitalize), ("system", None)):
            if cached.settings.get(key, "missing") != value:
                raise ValueError(
                    f"{path} was extracted with {key}={cached.settings.get(key, 'missing')!r}, not "
                    f"{value!r} (PROTOCOL §1); use another output folder"
                )
        if set(words) <= set(cached.words) and set(layers) <= set(cached.layers):
            return cached
        words = [*cached.words, *[w for w in words if w not in cached.words]]
        layers = sorted(set(cached.layers) | set(layers))
    cv = concept_vectors(model, words, layers, capitalize=capitalize, progress=progress)
    cv.save(path)
    return cv


def cached_refusal_directions(
    model: LanguageModel, out_dir: Any, select: bool, progress: bool = True, **kwargs: Any
) -> RefusalDirections:
    """The cached refusal directions (with a selection if ``select``), else extract and cache
    them from the shipped harmful/harmless instructions."""
    path = pathlib.Path(out_dir) / REFUSAL_FILE
    if path.exists():
        cached = RefusalDirections.load(path, model)
        if not select or cached.selected_layer is not None:
            return cached
    rd = refusal_directions(
        model, load_prompts("harmful"), load_prompts("harmless"), select=select, progress=progress, **kwargs
    )
    rd.save(path)
    return rd


def bias_arm(model: LanguageModel, path: Any) -> tuple[AdditiveVector, dict[str, Any]]:
    """The bias arm's intervention from a ``moia.directions.bias`` file, checked against ``model``, and the
    settings recorded for it (file, sha256, layer, site)."""
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"bias file not found: {path}")
    bias = BiasVector.load(path, model)
    settings = {
        "file": str(path),
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "layer": bias.layer,
        "site": bias.site,
    }
    return bias.intervention(), settings


def prepare_arms(
    model: LanguageModel,
    arms: list[str],
    out_dir: Any,
    ablation: AblationSpec | None = None,
    bias_path: Any = None,
    progress: bool = True,
) -> tuple[dict[str, list[Intervention]], dict[str, Any], dict[str, str]]:
    """Build the interventions of each arm: ``(interventions, settings, skipped)``, where
    ``settings`` maps arm -> its recorded settings and ``skipped`` arm -> why it will not run."""
    ablation = ablation or AblationSpec()
    interventions: dict[str, list[Intervention]] = {}
    settings: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    bias = bias_settings = None
    if any("bias" in arm for arm in arms):
        if bias_path is None:
            for arm in arms:
                if "bias" in arm:
                    skipped[arm] = NO_BIAS
        else:
            bias, bias_settings = bias_arm(model, bias_path)
            bias.site_ops(model)  # check the site exists on this model now
    ablate = None
    weights: list[float] = []
    if any("ablation" in arm for arm in arms if arm not in skipped):
        weights = ablation.layer_weights(int(model.cfg.n_layers))
        rd = cached_refusal_directions(model, out_dir, select=ablation.kind == "selected", progress=progress)
        ablate = rd.ablation(
            ablation.kind, weights=dict(enumerate(weights)), site=ablation.site, position=ablation.position
        )
    for arm in arms:
        if arm in skipped:
            continue
        interventions[arm] = [
            *([ablate] if ablate is not None and "ablation" in arm else []),
            *([bias] if bias is not None and "bias" in arm else []),
        ]
        settings[arm] = {
            **({"ablation": {**asdict(ablation), "layer_weights": weights}} if "ablation" in arm else {}),
            **({"bias": bias_settings} if "bias" in arm else {}),
        }
    return interventions, settings, skipped
