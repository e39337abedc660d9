"""Patching sites and the activations a sweep reads: which activation, over which axes, from which run.

Site names and result axes are TransformerLens' (``transformer_lens.patching``, PROTOCOL §9):

| site | activation | result axes |
|---|---|---|
| ``resid_pre`` / ``resid_mid`` / ``resid_post`` | ``blocks.L.hook_resid_*`` | layer × pos |
| ``attn_out`` / ``mlp_out`` | ``blocks.L.hook_attn_out`` / ``hook_mlp_out`` | layer × pos |
| ``attn_head_out_all_pos`` | ``blocks.L.attn.hook_z`` (one head, every position) | layer × head |
| ``attn_head_out_by_pos`` | ``blocks.L.attn.hook_z`` (one head at one position) | layer × pos × head |

(TransformerLens has no ``get_act_patch_resid_post``; the site is its ``generic_activation_patch``
with ``activation_name="resid_post"``.) A head's output is its ``z`` (the attention-weighted values
before ``W_O``), as TransformerLens patches it.

Prompts must have equal lengths, clean against corrupted, as TransformerLens requires: a patch moves
position p of one run into position p of the other. Several prompt pairs of different lengths share
one sweep when left-padded with an ``attention_mask``; positions are then those of the padded tensor.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..core.model import LanguageModel, device_of, is_bridge
from ..lm.decoding import final_logits


@dataclass(frozen=True)
class PatchSite:
    """A site of ``moia.patching.sweep``: TransformerLens' activation name and the result's axes."""

    name: str
    act: str  # resid_pre, resid_mid, resid_post, attn_out, mlp_out or z
    axes: tuple[str, ...]  # "layer" first, then "pos" and/or "head"

    @property
    def heads(self) -> bool:
        return self.act == "z"

    def legacy_name(self, layer: int) -> str:
        """TransformerLens' hook name (``utils.get_act_name``), the key of an ``ActivationCache``."""
        return f"blocks.{layer}.attn.hook_z" if self.heads else f"blocks.{layer}.hook_{self.act}"


PATCH_SITES = {
    s.name: s
    for s in (
        PatchSite("resid_pre", "resid_pre", ("layer", "pos")),
        PatchSite("resid_mid", "resid_mid", ("layer", "pos")),
        PatchSite("resid_post", "resid_post", ("layer", "pos")),
        PatchSite("attn_out", "attn_out", ("layer", "pos")),
        PatchSite("mlp_out", "mlp_out", ("layer", "pos")),
        PatchSite("attn_head_out_all_pos", "z", ("layer", "head")),
        PatchSite("attn_head_out_by_pos", "z", ("layer", "pos", "head")),
    )
}


def patch_site(site: str) -> PatchSite:
    if site not in PATCH_SITES:
        raise ValueError(f"site: unknown patching site {site!r}: expected one of {tuple(PATCH_SITES)}")
    return PATCH_SITES[site]


def hook_names(model: LanguageModel, site: PatchSite, layers: Sequence[int]) -> dict[int, str]:
    """{layer: the hook point to hook} (on the bridge the canonical name, so that hooks fire)."""
    hook_dict = model.hook_dict  # read once: the bridge rebuilds it on every access
    names = {}
    for layer in layers:
        legacy = site.legacy_name(layer)
        if legacy not in hook_dict:
            raise ValueError(f"site {site.name!r}: {type(model).__name__} has no hook point {legacy!r}")
        names[layer] = str(getattr(hook_dict[legacy], "name", None) or legacy)
    return names


# ------------------------------------------------------------------------------- prompts
def as_tokens(model: LanguageModel, tokens: Any, name: str) -> Int[Tensor, "n pos"]:
    """Token ids [n, pos] on the model's device from ids ([pos] or [n, pos]) or a text."""
    if isinstance(tokens, str):
        tokens = model.to_tokens(tokens)  # type: ignore[attr-defined]  # the model's own BOS rule
    if not isinstance(tokens, Tensor) or tokens.is_floating_point() or tokens.dim() not in (1, 2):
        got = tuple(tokens.shape) if isinstance(tokens, Tensor) else type(tokens).__name__
        raise ValueError(f"{name}: expected token ids [pos] or [batch, pos] (or a text), got {got}")
    tokens = tokens if tokens.dim() == 2 else tokens[None]
    if tokens.shape[1] == 0:
        raise ValueError(f"{name} has no tokens")
    return tokens.to(device_of(model), torch.long)


def check_mask(mask: Tensor | None, tokens: Tensor) -> Tensor | None:
    """A left-padding attention mask for ``tokens`` (1 = token, 0 = padding), or None."""
    if mask is None:
        return None
    if mask.shape != tokens.shape:
        raise ValueError(
            f"attention_mask has shape {tuple(mask.shape)}; the prompts are {tuple(tokens.shape)}"
        )
    if bool(((mask != 0) & (mask != 1)).any()) or not bool(mask[:, -1].all()):
        raise ValueError("attention_mask must hold 0 (padding) and 1 (tokens), padding on the left only")
    return mask.to(tokens.device, torch.long)


def equal_lengths(clean: Tensor, corrupted: Tensor) -> None:
    """The clean run must have the corrupted run's shape [n, pos] (TransformerLens requires it)."""
    if clean.shape[0] != corrupted.shape[0]:
        raise ValueError(f"{clean.shape[0]} clean prompts for {corrupted.shape[0]} corrupted ones")
    if clean.shape[1] != corrupted.shape[1]:
        raise ValueError(
            f"unequal prompt lengths: clean {clean.shape[1]} tokens, corrupted {corrupted.shape[1]}. "
            "Patching (as in TransformerLens) moves position p of the clean run into position p of "
            "the corrupted run, so both must have the same length; reword one, or left-pad several "
            "pairs to one width and pass attention_mask"
        )


# ------------------------------------------------------------------------------- forwards
def forward(
    model: LanguageModel,
    tokens: Int[Tensor, "batch pos"],
    mask: Tensor | None,
    start: int = 0,
    resid: Float[Tensor, "batch pos d_model"] | None = None,
) -> Float[Tensor, "batch pos vocab"]:
    """Logits of every position, with whatever hooks are installed.

    On a HookedTransformer a forward can start at block ``start`` from the residual ``resid`` that
    enters it (``start_at_layer``): a row that patches layer L computes layers < L exactly as the
    corrupted run did, so they are read from it, not recomputed. The bridge has no such entry
    point and runs every layer; with a mask it gets rotary positions from the mask, as moia's
    decoding does, so left padding shifts nothing.
    """
    if is_bridge(model):
        if mask is None:
            return model(tokens)  # type: ignore[no-any-return]
        return final_logits(model, tokens, mask, keep=tokens.shape[1])
    if start == 0 or resid is None:
        return model(tokens, attention_mask=mask)  # type: ignore[no-any-return]
    return model(resid, start_at_layer=start, attention_mask=mask)  # type: ignore[no-any-return]


@torch.no_grad()
def read_activations(
    model: LanguageModel, tokens: Tensor, mask: Tensor | None, names: Sequence[str]
) -> dict[str, Tensor]:
    """The activations at ``names`` (hook points) in one forward of ``tokens``."""
    captured: dict[str, Tensor] = {}

    def capture(x: Tensor, hook: Any) -> None:
        captured[hook.name] = x.detach().clone()

    with model.hooks(fwd_hooks=[(name, capture) for name in dict.fromkeys(names)]):
        forward(model, tokens, mask)
    return captured


def clean_activations(
    model: LanguageModel,
    clean: Any,
    site: PatchSite,
    layers: Sequence[int],
    corrupted: Tensor,
    mask: Tensor | None,
) -> dict[int, Tensor]:
    """{layer: the clean run's activation [n, pos, ...]} from clean tokens (one forward) or a cache.

    A cache is anything indexable by TransformerLens' hook names (``ActivationCache``, a dict).
    """
    if isinstance(clean, (Tensor, str)):
        tokens = as_tokens(model, clean, "clean tokens")
        equal_lengths(tokens, corrupted)
        names = hook_names(model, site, layers)
        acts = read_activations(model, tokens, mask, list(names.values()))
        return {layer: acts[names[layer]] for layer in layers}
    if not isinstance(clean, Mapping) and not (hasattr(clean, "keys") and hasattr(clean, "__getitem__")):
        raise TypeError(
            f"clean_cache_or_tokens: expected an ActivationCache, a dict of activations or token ids, "
            f"got {type(clean).__name__}"
        )
    out = {}
    for layer in layers:
        key = site.legacy_name(layer)
        try:
            act = clean[key]
        except KeyError:
            raise ValueError(
                f"clean cache has no {key!r} (cache it, e.g. run_with_cache without a names_filter, "
                "or pass the clean tokens)"
            ) from None
        equal_lengths(act, corrupted)
        out[layer] = act.detach().to(device_of(model))
    return out
