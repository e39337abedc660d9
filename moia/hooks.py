"""Intervention hook modules: directional ablation, additive vectors and concept injection.

Each intervention describes *what* to do at which sites; ``moia.intervene`` / ``moia.fwd_hooks``
compile any number of them into exactly one hook per hook point, each a single call of the fused
op ``moia.kernels.fused_intervention`` (PROTOCOL §2, §4, §5)::

    out[i, t] = x[i, t] - Σ_j w_j (x[i, t]·R_j) R_j + b + s_i V_i · 1[t >= t0_i]

Directions are normalised, cast and stacked once when the hooks are built, never per call, and no
d×d projection matrix is ever formed.

Positions. ``ConceptInjection(start=...)`` takes absolute positions in each *unpadded* prompt. At
run time a shared ``PositionState`` turns them into positions of the tensor the hook sees: it adds
the row's left padding (from the attention mask given to ``intervene``/``generate``) and subtracts
the position of the tensor's first token, which the state tracks from the embedding hook: a forward
of several tokens starts a new sequence, a one-token forward continues the previous one (cached
decoding). ``moia.generate`` drives the state explicitly.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

SITES = ("embed", "resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "mlp_pre_norm")
ABLATION_SITES = ("writers", "resid_post", "resid_pre")


# --------------------------------------------------------------------------------------- checks
def _d_model(model: Any) -> int:
    return int(model.cfg.d_model)


def _as_tensor(value: Any, name: str) -> Tensor:
    t = value if isinstance(value, Tensor) else torch.as_tensor(value, dtype=torch.float32)
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or inf values")
    return t.detach()


def _check_vectors(t: Tensor, name: str, d_model: int) -> None:
    if t.shape[-1] != d_model:
        raise ValueError(f"{name} has last dimension {t.shape[-1]}, expected d_model={d_model} of this model")
    if (t.norm(dim=-1) == 0).any():
        raise ValueError(f"{name} contains a zero-norm vector")


def _layers(model: Any, layers: Any, name: str = "layers") -> list[int]:
    n = int(model.cfg.n_layers)
    if layers is None:
        return list(range(n))
    out = [int(layers)] if isinstance(layers, int) else [int(x) for x in layers]
    for layer in out:
        if not 0 <= layer < n:
            raise ValueError(f"{name}: layer {layer} out of range for a model with {n} layers")
    return out


def hook_name(model: Any, site: str, layer: int | None = None) -> str:
    """The hook point for ``site`` at ``layer`` on this model (canonical name on the bridge).

    ``attn_out`` / ``mlp_out`` are what enters the residual stream (after Gemma's post-norms);
    ``mlp_pre_norm`` is the MLP's down-projection output before the post-feed-forward norm
    ([MOIA]'s bias site; the same as ``mlp_out`` on models without that norm).
    """
    if site not in SITES:
        raise ValueError(f"unknown hook site {site!r}: expected one of {SITES}")
    if site == "embed":
        legacy = "hook_embed"
    elif site == "mlp_pre_norm":
        legacy = f"blocks.{layer}.ln2_post.hook_in"
        if legacy not in model.hook_dict:
            if f"blocks.{layer}.ln2_post.hook_scale" in model.hook_dict:
                raise ValueError(
                    "site 'mlp_pre_norm' has no hook point on this HookedTransformer (the input of "
                    "ln2_post is not hooked); use backend='bridge'"
                )
            legacy = f"blocks.{layer}.hook_mlp_out"
    else:
        legacy = f"blocks.{layer}.hook_{site}"
    if site != "embed":
        _layers(model, [layer])
    hook_point = model.hook_dict.get(legacy)
    if hook_point is None:
        raise ValueError(f"unknown hook name {legacy!r} on {type(model).__name__}")
    return str(getattr(hook_point, "name", None) or legacy)


# ------------------------------------------------------------------------------ interventions
@dataclass(frozen=True)
class SiteOp:
    """One intervention's contribution at one hook point (already on the model's dtype/device)."""

    directions: Tensor | None = None  # (k, d) or (B, k, d), orthonormal
    weights: Tensor | None = None  # (k,) or (B, k)
    bias: Tensor | None = None  # (d,)
    bias_scale: float = 1.0  # applied per call to a trainable (live) bias only
    vectors: Tensor | None = None  # (n, d), n = batch or 1
    strengths: Tensor | None = None  # (n,)
    starts: Tensor | None = None  # (n,) int64, in unpadded-prompt positions


def _orthonormal(directions: Tensor) -> Tensor:
    """Orthonormalise the rows of (..., k, d) in order (the first keeps its direction)."""
    q, r = torch.linalg.qr(directions.transpose(-1, -2).double())
    signs = torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))
    signs[signs == 0] = 1
    return (q * signs.unsqueeze(-2)).transpose(-1, -2)


class DirectionAblation:
    """Project out k directions per layer, fully (weight 1) or softly (MoIA's w_l) (PROTOCOL §4).

    Args:
        directions: [d] one direction; [k, d] k directions shared by all layers; [n, k, d] or a
            dict {layer: [k, d] or [d]} one set per layer (n = len(layers)); with ``per_row=True``,
            [batch, d] or [batch, k, d]: each batch row ablates its own directions (for evaluating
            many candidate directions in one forward). Directions are normalised (and a set of k is
            orthonormalised in order) once, here.
        layers: the layers (default all; keys of a dict).
        weights: scalar, [k] per direction, or (with per-layer sets) {layer: weight} / [n] per layer.
        site: "writers" ([ARDITI]: input of the first ablated block and every attention and MLP
            output, so the direction never enters the residual stream), "resid_post" ([MOIA]: each
            decoder layer's output), or "resid_pre".
    """

    def __init__(
        self,
        directions: Any,
        layers: Any = None,
        weights: Any = 1.0,
        site: str = "writers",
        per_row: bool = False,
    ) -> None:
        if site not in ABLATION_SITES:
            raise ValueError(f"unknown ablation site {site!r}: expected one of {ABLATION_SITES}")
        self.site, self.per_row = site, per_row
        if isinstance(directions, dict):
            layers = list(directions) if layers is None else layers
            directions = [directions[k] for k in layers]
        if isinstance(directions, (list, tuple)):
            directions = torch.stack([_as_tensor(d, "directions") for d in directions])
            if directions.dim() == 2:  # one direction per layer
                directions = directions[:, None, :]
        self.directions = _as_tensor(directions, "directions")
        self.layers_arg = layers
        self.weights = weights

    def _per_layer(self, model: Any) -> dict[int, tuple[Tensor, Tensor]]:
        d = self.directions
        _check_vectors(d, "directions", _d_model(model))
        layers = _layers(model, self.layers_arg)
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
        out = {}
        for i, (layer, r) in enumerate(sets.items()):
            w = self.weights
            if isinstance(w, dict):
                w = w[layer]
            elif isinstance(w, (list, tuple)) and len(w) == len(layers) and r.shape[-2] == 1:
                w = w[i]
            w = _as_tensor(w, "weights").to(torch.float32)
            k = r.shape[-2]
            if w.dim() == 0:
                w = w.expand(k)
            if w.shape[-1] != k:
                raise ValueError(f"weights has {w.shape[-1]} entries for {k} directions at layer {layer}")
            out[layer] = (_orthonormal(r), w)
        return out

    def site_ops(self, model: Any) -> list[tuple[str, SiteOp]]:
        sets = self._per_layer(model)
        dtype, device = model.cfg.dtype, _device(model)
        ops = []
        for layer, (r, w) in sets.items():
            op = SiteOp(directions=r.to(device, dtype), weights=w.to(device, dtype))
            if self.site == "writers":
                sites = ["attn_out", "mlp_out"]
                if layer - 1 not in sets:  # the previous block's writers already keep it out
                    sites.insert(0, "resid_pre")
            else:
                sites = [self.site]
            ops += [(hook_name(model, s, layer), op) for s in sites]
        return ops


class AdditiveVector:
    """Add ``scale * vector`` at every position of ``site`` at ``layer`` (bias or steering).

    A ``vector`` that requires grad (an ``nn.Parameter`` being trained, PROTOCOL §5) stays live:
    the hook reads it on every call and gradients flow to it.
    """

    def __init__(self, vector: Any, layer: int, scale: float = 1.0, site: str = "resid_post") -> None:
        if site not in SITES:
            raise ValueError(f"unknown hook site {site!r}: expected one of {SITES}")
        self.trainable = isinstance(vector, Tensor) and vector.requires_grad
        self.vector = vector if self.trainable else _as_tensor(vector, "vector")
        if self.vector.dim() != 1:
            raise ValueError(f"vector must be 1-D [d_model], got shape {tuple(self.vector.shape)}")
        self.layer, self.scale, self.site = layer, float(scale), site

    def site_ops(self, model: Any) -> list[tuple[str, SiteOp]]:
        if self.trainable:
            if self.vector.shape[-1] != _d_model(model):
                _check_vectors(self.vector.detach(), "vector", _d_model(model))
            return [
                (hook_name(model, self.site, self.layer), SiteOp(bias=self.vector, bias_scale=self.scale))
            ]
        if self.vector.shape[-1] != _d_model(model):  # a zero bias is a valid no-op (PROTOCOL §5: b = 0)
            _check_vectors(self.vector, "vector", _d_model(model))
        bias = (self.scale * self.vector.double()).to(_device(model), model.cfg.dtype)
        return [(hook_name(model, self.site, self.layer), SiteOp(bias=bias))]


class ConceptInjection:
    """Add ``strength * vector`` from position ``start`` on, generated tokens included (PROTOCOL §2).

    Args:
        vectors: [d] one vector for every row, or [batch, d] one per row.
        layer: the decoder layer whose output (``site``) receives the injection.
        strengths: a scalar or [batch]; 0 makes a control row.
        start: a scalar or [batch] absolute position in each unpadded prompt (the token before
            "Trial n" in the injected-thought trial); must lie inside the prompt.
    """

    def __init__(
        self, vectors: Any, layer: int, strengths: Any = 1.0, start: Any = 0, site: str = "resid_post"
    ) -> None:
        if site not in SITES:
            raise ValueError(f"unknown hook site {site!r}: expected one of {SITES}")
        self.vectors = _as_tensor(vectors, "vectors")
        self.strengths = _as_tensor(strengths, "strengths").to(torch.float64)
        self.start = torch.as_tensor(start, dtype=torch.int64)
        self.layer, self.site = layer, site
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
        if (self.start < 0).any():
            raise ValueError("start must be >= 0 (a position in the unpadded prompt)")

    def site_ops(self, model: Any) -> list[tuple[str, SiteOp]]:
        v = self.vectors if self.vectors.dim() == 2 else self.vectors[None, :]
        _check_vectors(v, "vectors", _d_model(model))
        n = self.batch or 1
        device, dtype = _device(model), model.cfg.dtype
        op = SiteOp(
            vectors=v.expand(n, -1).to(device, dtype).contiguous(),
            strengths=self.strengths.reshape(-1).expand(n).to(device, dtype).contiguous(),
            starts=self.start.reshape(-1).expand(n).to(device).contiguous(),
        )
        return [(hook_name(model, self.site, self.layer), op)]


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


def _device(model: Any) -> torch.device:
    return next(model.parameters()).device


# ---------------------------------------------------------------------------- position state
@dataclass
class PositionState:
    """Tracks where the tensor a hook sees sits in each row's unpadded sequence."""

    pad: Tensor | None = None  # (B,) left-padding per row, on the model's device
    prompt_lengths: Tensor | None = None  # (B,) unpadded prompt lengths, for checking starts
    offset: int = 0  # padded position of x[:, 0]
    seen: int = 0  # tokens processed in the current sequence
    manual: bool = False  # True while moia.generate drives the state

    def set_attention_mask(self, attention_mask: Tensor | None) -> None:
        if attention_mask is None:
            self.pad = self.prompt_lengths = None
            return
        mask = attention_mask.to(torch.int64)
        self.prompt_lengths = mask.sum(-1)
        self.pad = mask.shape[-1] - self.prompt_lengths
        self.seen = 0

    def on_forward(self, q_len: int) -> None:
        """Called once per forward (from the embedding hook) with its number of new positions."""
        if not self.manual and q_len > 1:  # several new tokens: a new sequence
            self.seen = 0
        self.offset = self.seen
        self.seen += q_len
