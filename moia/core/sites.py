"""Hook sites: moia's site names, and the hook point each names on a model, resolved once.

Sites (per decoder layer unless noted):

- ``embed`` (no layer): the token embedding;
- ``resid_pre`` / ``resid_mid`` / ``resid_post``: the residual stream before the block, between
  attention and MLP, and after the block (the decoder layer's output, HF ``hidden_states[L + 1]``);
- ``attn_out`` / ``mlp_out``: what the attention / MLP block adds to the residual stream (after
  Gemma's post-norms);
- ``mlp_pre_norm``: the MLP's down-projection output before Gemma's post-feed-forward norm — [MOIA]'s
  bias site (PROTOCOL §5); before OLMo-2's norm likewise (OLMo-2 normalises each block's output
  instead of its input, with norms named ``ln1``/``ln2``); the same as ``mlp_out`` on models
  without such a norm.

``hook_name`` and ``hook_point`` are cached per model: the bridge rebuilds ``hook_dict`` on every
access (tens of ms each: it re-resolves ~1,700 aliases).
"""

import weakref
from typing import Any

from .layers import resolve_layer
from .model import LanguageModel, is_bridge

# architectures whose only norms sit after the attention / MLP blocks (named ln1 / ln2)
POST_NORM_ONLY = ("Olmo2ForCausalLM", "Olmo3ForCausalLM")
SITES = ("embed", "resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "mlp_pre_norm")
ABLATION_SITES = ("writers", "resid_post", "resid_pre")

_NAMES: "weakref.WeakKeyDictionary[Any, dict[tuple[str, int | None], str]]" = weakref.WeakKeyDictionary()
_POINTS: "weakref.WeakKeyDictionary[Any, dict[str, Any]]" = weakref.WeakKeyDictionary()


def check_site(site: str, allowed: tuple[str, ...] = SITES, name: str = "site") -> str:
    if site not in allowed:
        raise ValueError(f"{name}: unknown hook site {site!r}: expected one of {allowed}")
    return site


def hook_name(model: LanguageModel, site: str, layer: int | float | None = None) -> str:
    """The hook point for ``site`` at ``layer`` (index or depth fraction) on this model.

    On the bridge this is the canonical hook name (not an alias), so that hooks added under it fire.
    """
    check_site(site)
    index = None if site == "embed" else resolve_layer(model, layer)
    cache = _NAMES.setdefault(model, {})
    key = (site, index)
    if key not in cache:
        cache[key] = _resolve(model, site, index)
    return cache[key]


def hook_point(model: LanguageModel, name: str) -> Any:
    """The hook point object named ``name`` on this model (cached; ``hook_dict`` is read once)."""
    points = _POINTS.get(model)
    if points is None or name not in points:
        points = _POINTS[model] = dict(model.hook_dict)
        if name not in points:
            raise ValueError(f"unknown hook name {name!r} on {type(model).__name__}")
    return points[name]


def _resolve(model: LanguageModel, site: str, layer: int | None) -> str:
    if site == "resid_mid" and is_bridge(model):
        raise ValueError(
            "site 'resid_mid' has no hook point on TransformerBridge: its blocks.L.hook_resid_mid is the "
            "input of the MLP's norm, and a change there never reaches the residual stream; use "
            "backend='hf' or 'hooked'"
        )
    hook_dict = model.hook_dict  # read once: the bridge rebuilds it on every access
    if site == "embed":
        legacy = "hook_embed"
    elif site == "mlp_pre_norm":
        norm = "ln2" if architecture(model) in POST_NORM_ONLY else "ln2_post"
        legacy = f"blocks.{layer}.{norm}.hook_in"
        if legacy not in hook_dict:
            if f"blocks.{layer}.{norm}.hook_scale" in hook_dict:
                raise ValueError(
                    "site 'mlp_pre_norm' has no hook point on this HookedTransformer (the input of "
                    "ln2_post is not hooked); use backend='bridge'"
                )
            legacy = f"blocks.{layer}.hook_mlp_out"
    else:
        legacy = f"blocks.{layer}.hook_{site}"
    hook_point = hook_dict.get(legacy)
    if hook_point is None:
        raise ValueError(f"unknown hook name {legacy!r} on {type(model).__name__}")
    return str(getattr(hook_point, "name", None) or legacy)


def architecture(model: LanguageModel) -> str | None:
    """The Hugging Face architecture name the model was built from (either backend), if known."""
    cfg = model.cfg
    return getattr(cfg, "original_architecture", None) or getattr(cfg, "architecture", None)


def has_post_norms(model: LanguageModel) -> bool:
    """Whether a norm sits between the attention / MLP output and the residual stream (Gemma 2/3,
    OLMo-2/3)."""
    if architecture(model) in POST_NORM_ONLY:
        return True
    return any("ln1_post" in name or "ln2_post" in name for name in model.hook_dict)
