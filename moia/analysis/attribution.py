"""Attribution patching: every cell of a patching sweep estimated from one forward and one backward.

The first-order Taylor expansion of the metric around the corrupted run (PROTOCOL §9)::

    metric(patch cell c) ≈ metric(corrupted) + Σ_{i ∈ c} (clean_i − corrupted_i) · ∂metric/∂act_i

where i runs over the activation entries the cell replaces (a position's d_model entries, a head's
d_head entries at one or every position; with several prompts, all of them). One forward of the
corrupted prompt with the activations kept, one backward of the metric to all of them at once, and
one product per cell give the whole grid -- the same grid ``sweep`` computes exactly with one
patched run per cell. It is a cheap first pass: where the metric is far from linear in a site (a
residual-stream position carrying the whole answer) the estimate can be far off; the README and
the tests report its correlation with the exact sweep.
"""

from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from ..core.layers import layer_list
from ..core.model import LanguageModel
from ..core.sites import hook_name
from .sites import as_tokens, check_mask, clean_activations, forward, hook_names, patch_site


def attribution(
    model: LanguageModel,
    corrupted_tokens: Any,
    clean_cache_or_tokens: Any,
    metric: Any,
    site: str | Sequence[str] = "resid_pre",
    *,
    layers: Sequence[int | float] | None = None,
    attention_mask: Tensor | None = None,
) -> Float[Tensor, "..."] | dict[str, Tensor]:
    """The attribution-patching estimate of ``sweep(model, corrupted, clean, metric, site)``.

    Arguments as ``moia.patching.sweep``; ``metric`` maps the corrupted run's logits to one
    differentiable value (a scalar or shape [1]). Several sites share the one forward and backward;
    then a dict {site: estimate} is returned. Estimates are in the metric's units (the corrupted
    value plus the linear change), cell for cell comparable with the sweep.
    """
    specs = [patch_site(s) for s in ([site] if isinstance(site, str) else site)]
    corrupted = as_tokens(model, corrupted_tokens, "corrupted_tokens")
    mask = check_mask(attention_mask, corrupted)
    layer_ids = layer_list(model, layers, "layers")
    by_act = {spec.act: spec for spec in specs}
    clean = {
        act: clean_activations(model, clean_cache_or_tokens, spec, layer_ids, corrupted, mask)
        for act, spec in by_act.items()
    }
    names = {act: hook_names(model, spec, layer_ids) for act, spec in by_act.items()}
    captured: dict[str, Tensor] = {}

    def capture(x: Tensor, hook: Any) -> None:
        captured[hook.name] = x

    def needs_grad(x: Tensor, hook: Any) -> Tensor:  # a model with frozen weights still gets a graph
        return x if x.requires_grad else x.detach().requires_grad_()

    hooks: list[tuple[str, Any]] = [(hook_name(model, "embed"), needs_grad)]
    hooks += [(name, capture) for per_layer in names.values() for name in per_layer.values()]
    with torch.enable_grad(), model.hooks(fwd_hooks=hooks):
        value = metric(forward(model, corrupted, mask))
        if not isinstance(value, Tensor) or value.numel() != 1 or not value.requires_grad:
            got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(
                f"attribution needs a metric with one differentiable value for the corrupted run "
                f"(a scalar or shape [1]), got {got}"
            )
        wrt = [captured[name] for per_layer in names.values() for name in per_layer.values()]
        grads = torch.autograd.grad(value.sum(), wrt, allow_unused=True)
    grad = dict(zip([n for per_layer in names.values() for n in per_layer.values()], grads, strict=True))
    base = value.detach().float().reshape(())
    out = {}
    for spec in specs:
        rows = []
        for layer in layer_ids:
            name = names[spec.act][layer]
            g = grad[name]
            act = captured[name].detach()
            change = torch.zeros_like(act) if g is None else (clean[spec.act][layer].to(act.dtype) - act) * g
            per_entry = change.sum(-1).sum(0)  # [pos] or [pos, head]: summed over d and prompts
            rows.append(per_entry.sum(0) if spec.axes == ("layer", "head") else per_entry)
        out[spec.name] = base + torch.stack(rows).float()
    return out[specs[0].name] if isinstance(site, str) else out
