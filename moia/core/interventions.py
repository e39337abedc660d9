"""The three interventions: directional ablation, additive vectors, concept injection.

Each says *what* to do at which hook sites (``site_ops``); ``moia.core.compile`` turns any number of
them into one hook per hook point, each a single call of the fused op (``moia.kernels``)::

    out[i, t] = x[i, t] - Σ_j w_j (x[i, t]·R_j) R_j + b + s_i V_i · 1[t >= t0_i]

Arguments are checked here, when the intervention is built (finite values, integer positions,
layer indices or depth fractions); shapes against the model when it is compiled. Directions are
orthonormalised, cast and stacked once, never per call, and no d×d matrix is formed.

A read-only op (``SiteOp.readout``, the mood ring of ``moia.core.readout``) adds coefficients to the
same fused op and hands them to its ``Reader``; it never changes an activation.
"""

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from jaxtyping import Float
from torch import Tensor

from .layers import layer_list, resolve_layer
from .linalg import orthonormal_rows
from .model import LanguageModel, d_model, device_of
from .sites import ABLATION_SITES, SITES, check_site, hook_name


@dataclass(frozen=True)
class SiteOp:
    """One intervention's contribution at one hook point (already on the model's dtype/device)."""

    directions: Tensor | None = None  # (k, d) or (B, k, d): orthonormal rows, zero rows are no-ops
    weights: Tensor | None = None  # (k,) or (B, k)
    bias: Tensor | None = None  # (d,)
    bias_scale: float = 1.0  # applied per call to a trainable (live) bias only
    vectors: Tensor | None = None  # (n, d), n = batch or 1
    strengths: Tensor | None = None  # (n,)
    starts: Tensor | None = None  # (n,) int64, in unpadded-prompt positions
    readout: Tensor | None = None  # (m, d) read-only directions: their coefficients go to ``reader``
    reader: "Reader | None" = None


@runtime_checkable
class Intervention(Protocol):
    """What ``moia.intervene`` accepts: anything that says what it does at which hook points."""

    def site_ops(self, model: LanguageModel) -> list[tuple[str, SiteOp]]: ...


@runtime_checkable
class Reader(Protocol):
    """Receives a readout's coefficients at every forward through its hook point.

    ``coeffs`` [batch, pos, m] (float32) belong to padded positions ``offset .. offset + pos - 1`` of
    the current sequence (``offset == 0``: a new sequence starts); ``mask`` is the attention mask of
    the sequence's first forward ([batch, width], 1 = token, 0 = padding; None: no padding).
    Positions at or beyond ``width`` are generated tokens, never padding.
    """

    def record(self, coeffs: Tensor, offset: int, mask: Tensor | None) -> None: ...


@runtime_checkable
class Recorder(Protocol):
    """An intervention that wants the token ids of a finished generation (``moia.lm.decoding`` calls
    ``finish`` with each row's unpadded prompt ids and generated ids, stop token excluded)."""

    def finish(self, prompts: list[list[int]], generated: list[list[int]]) -> None: ...


# ------------------------------------------------------------------------------------- checks
def finite_tensor(value: Any, name: str) -> Tensor:
    """``value`` as a detached tensor, or a ValueError naming ``name`` if it holds NaN or inf."""
    try:
        t = value if isinstance(value, Tensor) else torch.as_tensor(value, dtype=torch.float32)
    except (TypeError, ValueError, RuntimeError) as e:
        raise TypeError(f"{name}: expected numbers or a tensor, got {type(value).__name__}") from e
    if not t.is_floating_point():
        t = t.float()
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or inf values")
    return t.detach()


def finite_scalar(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def check_vectors(t: Tensor, name: str, width: int) -> None:
    if t.shape[-1] != width:
        raise ValueError(f"{name} has last dimension {t.shape[-1]}, expected d_model={width} of this model")
    if bool((t.norm(dim=-1) == 0).any()):
        raise ValueError(f"{name} contains a zero-norm vector")


def positions(value: Any, name: str) -> Tensor:
    """Integer positions >= 0 (a float such as 2.7 is an error, not truncated)."""
    t = value if isinstance(value, Tensor) else torch.as_tensor(value)
    if t.is_floating_point() or t.dtype == torch.bool or t.is_complex():
        raise TypeError(f"{name} must be integer positions, got {value!r}")
    t = t.to(torch.int64)
    if t.dim() > 1:
        raise ValueError(f"{name} must be a scalar or one position per row, got shape {tuple(t.shape)}")
    if bool((t < 0).any()):
        raise ValueError(f"{name} must be >= 0 (positions in the unpadded prompt), got {value!r}")
    return t


# --------------------------------------------------------------------------------- ablation
class DirectionAblation:
    """Project out k directions per layer, fully (weight 1) or softly ([MOIA]'s w_l) (PROTOCOL §4).

    Args:
        directions: [d] one direction; [k, d] k directions shared by all layers; [n, k, d] or a
            dict {layer: [k, d] or [d]} one set per layer (n = len(layers)); with ``per_row=True``,
            [batch, d] or [batch, k, d]: each batch row ablates its own directions. A set is
            orthonormalised once, in order; a direction in the span of earlier ones is dropped
            (its span is already removed) — with full weights only: weighted ablation of dependent
            directions has no single meaning and is an error.
        layers: layer indices or depth fractions (default all; the keys of a dict).
        weights: scalar, [k] per direction, or (with per-layer sets) {layer: weight} / [n] per layer.
        site: "writers" ([ARDITI]: the input of the first ablated block and every attention and MLP
            output, so the direction never enters the residual stream), "resid_post" ([MOIA]: each
            decoder layer's output) or "resid_pre".
    """

    def __init__(
        self,
        directions: Any,
        layers: Any = None,
        weights: Any = 1.0,
        site: str = "writers",
        per_row: bool = False,
    ) -> None:
        self.site = check_site(site, ABLATION_SITES, "DirectionAblation site")
        self.per_row = bool(per_row)
        if isinstance(directions, dict):
            layers = list(directions) if layers is None else layers
            try:
                directions = [directions[k] for k in layers]
            except KeyError as e:
                raise ValueError(f"directions: no direction given for layer {e.args[0]!r}") from None
        if isinstance(directions, (list, tuple)):
            directions = torch.stack([finite_tensor(d, "directions") for d in directions])
            if directions.dim() == 2:  # one direction per layer
                directions = directions[:, None, :]
        self.directions = finite_tensor(directions, "directions")
        if not 1 <= self.directions.dim() <= 3:
            raise ValueError(
                f"directions must be [d], [k, d] or [n, k, d], got {tuple(self.directions.shape)}"
            )
        self.layers_arg = layers
        if isinstance(weights, dict):
            self.weights: Any = {k: finite_tensor(w, "weights") for k, w in weights.items()}
        else:
            self.weights = finite_tensor(weights, "weights")

    def _weight(self, layer: int, i: int, n: int, k: int) -> Tensor:
        w = self.weights
        if isinstance(w, dict):
            if layer not in w:
                raise ValueError(f"weights: no weight for layer {layer}")
            w = w[layer]
        elif w.dim() == 1 and w.shape[0] == n and k == 1 and n > 1:  # one weight per layer
            w = w[i]
        w = w.to(torch.float32)
        if w.dim() == 0:
            w = w.expand(k)
        if w.shape[-1] != k:
            raise ValueError(f"weights has {w.shape[-1]} entries for {k} directions at layer {layer}")
        return w

    def per_layer(self, model: LanguageModel) -> dict[int, tuple[Tensor, Tensor]]:
        """{layer: (orthonormal directions, weights)} on the CPU in float64 / float32."""
        d = self.directions
        check_vectors(d, "directions", d_model(model))
        layers = layer_list(model, self.layers_arg, "DirectionAblation layers")
        if self.per_row:
            sets = {layer: d if d.dim() == 3 else d[:, None, :] for layer in layers}
        elif d.dim() == 3:
            if d.shape[0] != len(layers):
                raise ValueError(
                    f"directions has {d.shape[0]} per-layer sets but layers has {len(layers)} entries"
                )
            sets = dict(zip(layers, d, strict=True))
        else:
            shared = d if d.dim() == 2 else d[None, :]
            sets = dict.fromkeys(layers, shared)
        out, done = {}, {}  # a set shared by several layers is orthonormalised once
        for i, (layer, r) in enumerate(sets.items()):
            w = self._weight(layer, i, len(layers), r.shape[-2])
            key = (id(r), tuple(w.reshape(-1).tolist()))
            if key not in done:
                basis, kept = orthonormal_rows(r)
                if not bool(kept.all()) and not bool((w == 1).all()):
                    raise ValueError(
                        f"DirectionAblation at layer {layer}: directions "
                        f"{(~kept).nonzero()[:, -1].tolist()} lie in the span of earlier ones; weighted "
                        "ablation of linearly dependent directions has no single meaning (use full "
                        "weights, or independent directions)"
                    )
                done[key] = (basis, w)
            out[layer] = done[key]
        return out

    def site_ops(self, model: LanguageModel) -> list[tuple[str, SiteOp]]:
        sets = self.per_layer(model)
        dtype, device = model.cfg.dtype, device_of(model)
        ops, made = [], {}  # one SiteOp per distinct set: hooks that share it share one prepared op
        for layer, (r, w) in sets.items():
            if (id(r), id(w)) not in made:
                made[id(r), id(w)] = SiteOp(directions=r.to(device, dtype), weights=w.to(device, dtype))
            op = made[id(r), id(w)]
            if self.site == "writers":
                sites = ["attn_out", "mlp_out"]
                if layer - 1 not in sets:  # the previous block's writers already keep it out
                    sites.insert(0, "resid_pre")
            else:
                sites = [self.site]
            ops += [(hook_name(model, s, layer), op) for s in sites]
        return ops


# ---------------------------------------------------------------------------------- additive
class AdditiveVector:
    """Add ``scale * vector`` at every position of ``site`` at ``layer`` (a bias or a steering vector).

    A ``vector`` that requires grad (an ``nn.Parameter`` being trained, PROTOCOL §5) stays live: the
    hook reads it on every call, gradients flow to it, and a non-finite value is an error there.
    """

    def __init__(self, vector: Any, layer: int | float, scale: float = 1.0, site: str = "resid_post") -> None:
        self.site = check_site(site, SITES, "AdditiveVector site")
        self.trainable = isinstance(vector, Tensor) and vector.requires_grad
        self.vector = vector if self.trainable else finite_tensor(vector, "vector")
        if self.vector.dim() != 1:
            raise ValueError(f"vector must be 1-D [d_model], got shape {tuple(self.vector.shape)}")
        self.scale = finite_scalar(scale, "scale")
        if not self.trainable and not bool(torch.isfinite(self.scale * self.vector.double()).all()):
            raise ValueError(f"scale * vector overflows (scale={scale!r})")
        resolve_layer(10**9, layer, "AdditiveVector layer")  # type and form now; range when compiled
        self.layer = layer

    @classmethod
    def load(cls, path: Any, model: LanguageModel | None = None, scale: float = 1.0) -> "AdditiveVector":
        """The bias stored in a moia bias-vector file (``moia train-bias``), at its layer and site."""
        from ..io import load_tensors

        tensors, meta = load_tensors(path, "bias_vector", model)
        if "bias" not in tensors or "layer" not in meta or "site" not in meta:
            raise ValueError(
                f"{path}: a bias-vector file needs a 'bias' tensor and 'layer' and 'site' metadata"
            )
        return cls(tensors["bias"].float(), int(meta["layer"]), scale=scale, site=meta["site"])

    def site_ops(self, model: LanguageModel) -> list[tuple[str, SiteOp]]:
        name = hook_name(model, self.site, self.layer)
        if self.vector.shape[-1] != d_model(model):
            check_vectors(self.vector.detach(), "vector", d_model(model))
        if self.trainable:
            return [(name, SiteOp(bias=self.vector, bias_scale=self.scale))]
        bias = (self.scale * self.vector.double()).to(device_of(model), model.cfg.dtype)
        if not bool(torch.isfinite(bias).all()):
            raise ValueError(f"scale * vector overflows {model.cfg.dtype} (scale={self.scale!r})")
        return [(name, SiteOp(bias=bias))]


# --------------------------------------------------------------------------------- injection
class ConceptInjection:
    """Add ``strength * vector`` from position ``start`` on, generated tokens included (PROTOCOL §2).

    Args:
        vectors: [d] one vector for every row, or [batch, d] one per row.
        layer: the decoder layer (index or depth fraction) whose output (``site``) receives it.
        strengths: a scalar or [batch]; 0 makes a control row.
        start: integer positions in each unpadded prompt, a scalar or [batch] (the token before
            "Trial n" in the injected-thought trial; 0 injects at every position).
    """

    def __init__(
        self,
        vectors: Float[Tensor, "*batch d_model"] | Any,
        layer: int | float,
        strengths: Any = 1.0,
        start: Any = 0,
        site: str = "resid_post",
    ) -> None:
        self.site = check_site(site, SITES, "ConceptInjection site")
        self.vectors = finite_tensor(vectors, "vectors")
        if self.vectors.dim() not in (1, 2):
            raise ValueError(f"vectors must be [d] or [batch, d], got shape {tuple(self.vectors.shape)}")
        self.strengths = finite_tensor(strengths, "strengths").to(torch.float64)
        if self.strengths.dim() > 1:
            raise ValueError(
                f"strengths must be a scalar or [batch], got shape {tuple(self.strengths.shape)}"
            )
        self.start = positions(start, "start")
        resolve_layer(10**9, layer, "ConceptInjection layer")
        self.layer = layer
        sizes = {
            n: t.shape[0]
            for n, t in (
                ("vectors", self.vectors if self.vectors.dim() == 2 else None),
                ("strengths", self.strengths if self.strengths.dim() == 1 else None),
                ("start", self.start if self.start.dim() == 1 else None),
            )
            if t is not None
        }
        if len(set(sizes.values())) > 1:
            raise ValueError(f"per-row arguments disagree on the batch size: {sizes}")
        self.batch = next(iter(sizes.values()), None)

    def site_ops(self, model: LanguageModel) -> list[tuple[str, SiteOp]]:
        name = hook_name(model, self.site, self.layer)
        v = self.vectors if self.vectors.dim() == 2 else self.vectors[None, :]
        check_vectors(v, "vectors", d_model(model))
        n = self.batch or 1
        device, dtype = device_of(model), model.cfg.dtype
        op = SiteOp(
            vectors=v.expand(n, -1).to(device, dtype).contiguous(),
            strengths=self.strengths.reshape(-1).expand(n).to(device, dtype).contiguous(),
            starts=self.start.reshape(-1).expand(n).to(device).contiguous(),
        )
        return [(name, op)]


def injections_by_layer(
    vectors: Sequence[Tensor | None],
    layers: Sequence[int | None],
    strengths: Sequence[float] | Tensor,
    starts: Any,
    site: str = "resid_post",
) -> list[ConceptInjection]:
    """Per-row injections at per-row layers: one ``ConceptInjection`` per distinct layer.

    Row i is injected with ``strengths[i] * vectors[i]`` at ``layers[i]`` (None: a control row,
    injected nowhere). At every other layer a row carries strength 0, so trials of different layers
    and control trials share one batch.
    """
    if not len(vectors) == len(layers) == len(strengths):
        raise ValueError(
            f"vectors, layers and strengths must have one entry per row, got "
            f"{len(vectors)}, {len(layers)} and {len(strengths)}"
        )
    injected = [v for v, layer in zip(vectors, layers, strict=True) if v is not None and layer is not None]
    if not injected:
        return []
    filler = injected[0]  # any non-zero vector where the strength is 0
    stacked = torch.stack([filler if v is None else v for v in vectors]).float()
    s = torch.as_tensor(strengths, dtype=torch.float32)
    out = []
    for layer in sorted({layer for layer in layers if layer is not None}):
        here = torch.tensor([row_layer == layer for row_layer in layers])
        out.append(ConceptInjection(stacked, layer, s * here, starts, site=site))
    return out
