"""Activation patching as batched runs: TransformerLens' patching sweeps, one fused op per hook point.

A patching sweep (PROTOCOL §9) runs the corrupted prompt once per cell of a grid -- every layer and
position, or every layer and head -- with that one activation replaced by the clean run's, and
records a metric of the logits. ``transformer_lens.patching`` runs one batch-1 forward per cell
with one Python hook. Here each **batch row patches its own cell**: a forward of k rows covers k
cells, and at each hook point one call of moia's fused op (``moia.kernels.fused_intervention``)
copies, per row, the positions that row patches (a [rows, pos] mask) from the clean activation.

**The patch is a copy, not an injection of clean − corrupted.** ``x + (c − x)`` rounds twice in
floating point (``c − x`` and the sum), so it differs from ``c`` in the last bits -- by ~1e-3 at
the residual stream's "massive" positions of ~1e4 in fp32 -- and it also needs the corrupted
activation, which a batched forward computes again with its own rounding. A copy writes c exactly,
as TransformerLens' patch setter does (``act[:, pos] = clean[:, pos]``), and needs no corrupted
read at all. The corrupted activation at a row's site is in any case the corrupted run's own:
each row patches one site only, so nothing upstream of it in that row is changed. Rows are in
TransformerLens' order (layer first); on a HookedTransformer a batch starts at the lowest layer it
patches, from the corrupted run's residual there (layers below it are the corrupted run's).

Results equal ``transformer_lens.patching``'s to ≤ 1e-4 on SmolLM2 on both backends, and left
padding and the batch size change no cell (tested). ``attribution`` is the one-forward, one-backward
linear estimate of every cell (``moia.analysis.attribution``); ``heatmap`` draws a result.
"""

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from ..core.layers import layer_list
from ..core.model import LanguageModel, device_of, is_bridge
from ..kernels import fused_intervention
from .attribution import attribution
from .heatmap import heatmap
from .sites import (
    PATCH_SITES,
    PatchSite,
    as_tokens,
    check_mask,
    clean_activations,
    forward,
    hook_names,
    patch_site,
    read_activations,
)

Metric = Callable[[Tensor], Any]
MEMORY_BUDGET = 512 * 2**20  # bytes of logits and activations one patching forward may hold
MAX_ROWS = {"cpu": 64, "cuda": 1024}  # beyond ~64 rows a CPU forward gains no throughput


def default_batch_size(model: LanguageModel, n_prompts: int, n_pos: int) -> int:
    """Patched runs per forward when ``batch_size`` is None: what fits MEMORY_BUDGET, capped.

    The seam for a memory planner: until moia.lm has one, a row is costed as its logits plus a few
    residual-sized activations (pos × (d_vocab + 8·d_model) elements), which dominates on small models.
    """
    cfg = model.cfg
    itemsize = torch.finfo(cfg.dtype).bits // 8
    per_run = n_prompts * n_pos * (int(cfg.d_vocab) + 8 * int(cfg.d_model)) * itemsize
    cap = MAX_ROWS["cuda" if device_of(model).type == "cuda" else "cpu"]
    return max(1, min(cap // n_prompts or 1, MEMORY_BUDGET // per_run))


class PatchHook:
    """The hook at one hook point for one batch: row r copies ``mask[r]`` from clean row ``index[r]``.

    Head outputs z [batch, pos, head, d_head] are patched as [batch, pos·head, d_head], so a head at
    a position is one row of the op, and a head at every position one row every n_heads.
    """

    def __init__(self, clean: Tensor, mask: Tensor, index: Tensor | None, heads: bool) -> None:
        self.clean = clean.reshape(clean.shape[0], -1, clean.shape[-1]) if heads else clean
        self.mask, self.index, self.heads = mask, index, heads

    def __call__(self, x: Tensor, hook: Any = None) -> Tensor:
        x3 = x.reshape(x.shape[0], -1, x.shape[-1]) if self.heads else x
        out = fused_intervention(x3, patch=self.clean, patch_mask=self.mask, patch_index=self.index)
        # Written in place, as TransformerLens' patch setter writes: on the bridge ``resid_mid`` is
        # the input of ln2, the very tensor the Hugging Face layer keeps as its residual, so a
        # returned copy would reach the MLP branch alone and leave the residual stream unpatched.
        return x.copy_(out.view(x.shape))


class MetricValues:
    """Calls the metric on a batch's logits and returns one value per patched run.

    A metric that returns one value per run (shape [k] for k runs) is called once per batch. One
    that returns a scalar (a TransformerLens metric such as ``logit_diff(logits).mean()``) is then
    called once per run on that run's rows -- the forward is still batched, only the metric loops.
    """

    def __init__(self, metric: Any) -> None:  # Any: the callable check below is the message
        if not callable(metric):
            raise TypeError(f"metric must be callable, got {type(metric).__name__}")
        self.metric, self.per_run = metric, False

    def __call__(self, logits: Tensor, k: int, n: int) -> Tensor:
        if not self.per_run:
            out = self._value(self.metric(logits))
            if out.shape == (k,) or (k == 1 and out.dim() == 0):
                return out.reshape(k)
            if out.dim() != 0:
                raise ValueError(
                    f"metric returned shape {tuple(out.shape)} for the logits of {k} patched runs "
                    f"({k * n} rows): expected one value per run, shape ({k},), or a scalar (a "
                    "TransformerLens-style metric, then applied run by run)"
                )
            self.per_run = True  # a scalar for several runs: the metric reduces over rows
        values = []
        for run in range(k):
            value = self._value(self.metric(logits[run * n : (run + 1) * n]))
            if value.numel() != 1:
                raise ValueError(
                    f"metric returned shape {tuple(value.shape)} for one patched run ({n} rows): "
                    "expected a scalar"
                )
            values.append(value.reshape(()))
        return torch.stack(values)

    @staticmethod
    def _value(out: Any) -> Tensor:
        try:
            return torch.as_tensor(out).detach().float()
        except (TypeError, ValueError, RuntimeError) as e:
            raise TypeError(f"metric must return a tensor or a number, got {type(out).__name__}") from e


def _grid(site: PatchSite, n_layers_: int, n_pos: int, n_heads: int) -> tuple[list[int], int, int]:
    """(result shape, cells per layer, view positions): z is viewed as [batch, pos·head, d_head]."""
    per_axis = {"pos": n_pos, "head": n_heads}
    rest = [per_axis[a] for a in site.axes[1:]]
    per_layer = 1
    for size in rest:
        per_layer *= size
    return [n_layers_, *rest], per_layer, n_pos * n_heads if site.heads else n_pos


def _cell_masks(site: PatchSite, cells: Tensor, per_layer: int, n_view: int, n_heads: int) -> Tensor:
    """[cells, n_view] bool: the view positions each cell patches (cells in TransformerLens order)."""
    rest = cells % per_layer  # resid: the position; by_pos: pos·n_heads + head; all_pos: the head
    t = torch.arange(n_view, device=cells.device)
    if site.axes == ("layer", "head"):
        return t[None, :] % n_heads == rest[:, None]
    return t[None, :] == rest[:, None]


@torch.no_grad()
def sweep(
    model: LanguageModel,
    corrupted_tokens: Any,
    clean_cache_or_tokens: Any,
    metric: Metric,
    site: str = "resid_pre",
    batch_size: int | None = None,
    *,
    layers: Sequence[int | float] | None = None,
    attention_mask: Tensor | None = None,
    progress: bool = False,
) -> Float[Tensor, "..."]:
    """The patching sweep TransformerLens' ``get_act_patch_<site>`` returns, as batched runs.

    Args:
        model: a HookedTransformer or TransformerBridge.
        corrupted_tokens: token ids [pos] or [n, pos] (or a text): the run that is patched.
        clean_cache_or_tokens: the clean run's ``ActivationCache`` (or a dict keyed by
            TransformerLens hook names), or its token ids / text (then one forward reads it).
        metric: logits [runs·n, pos, d_vocab] of a batch of patched runs (each run's n rows
            together) -> one value per run, shape [runs]; or TransformerLens' kind, logits
            [n, pos, d_vocab] -> a scalar, which is then applied run by run (slower: one call per
            run, not per batch).
        site: one of ``PATCH_SITES`` (see ``moia.analysis.sites``).
        batch_size: patched runs per forward (each of n rows); None: ``default_batch_size``.
        layers: the layers to sweep (indices or depth fractions, in this order); None: all. The
            result's first axis follows it.
        attention_mask: [n, pos] left padding of several prompt pairs (the clean run's too).
        progress: a progress bar over batches.

    Returns:
        float32 on the model's device: [layers, pos], [layers, head] or [layers, pos, head].
    """
    spec = patch_site(site)
    corrupted = as_tokens(model, corrupted_tokens, "corrupted_tokens")
    mask = check_mask(attention_mask, corrupted)
    layer_ids = layer_list(model, layers, "layers")
    n, n_pos = corrupted.shape
    if batch_size is None:
        batch_size = default_batch_size(model, n, n_pos)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    evaluate = MetricValues(metric)
    clean = clean_activations(model, clean_cache_or_tokens, spec, layer_ids, corrupted, mask)
    names = hook_names(model, spec, layer_ids)
    n_heads = int(model.cfg.n_heads)
    shape, per_layer, n_view = _grid(spec, len(layer_ids), n_pos, n_heads)
    n_cells = len(layer_ids) * per_layer
    batches = [(b, min(b + batch_size, n_cells)) for b in range(0, n_cells, batch_size)]
    starts = _start_layers(model, layer_ids, per_layer, batches)
    resid = _corrupted_resid(model, corrupted, mask, sorted(set(starts)))
    device = device_of(model)
    results = torch.zeros(n_cells, device=device)
    for (b0, b1), start in tqdm(list(zip(batches, starts, strict=True)), disable=not progress, desc=site):
        k = b1 - b0
        cells = torch.arange(b0, b1, device=device)
        cell_layers = cells // per_layer  # positions in layer_ids
        masks = _cell_masks(spec, cells, per_layer, n_view, n_heads).repeat_interleave(n, 0)
        row_layers = cell_layers.repeat_interleave(n)
        index = None if n == 1 else torch.arange(n, device=device).repeat(k)
        hooks = []
        for i in sorted(set(cell_layers.tolist())):  # one hook per layer this batch patches
            layer = layer_ids[i]
            here = masks & (row_layers == i)[:, None]
            hooks.append((names[layer], PatchHook(clean[layer], here, index, spec.heads)))
        with model.hooks(fwd_hooks=hooks):
            logits = forward(
                model,
                corrupted.repeat(k, 1),
                None if mask is None else mask.repeat(k, 1),
                start,
                None if start not in resid else resid[start].repeat(k, 1, 1),
            )
        results[b0:b1] = evaluate(logits, k, n).to(device)
    return results.view(shape)


def _start_layers(model: LanguageModel, layer_ids: list[int], per_layer: int, batches: list) -> list[int]:
    """The block each batch's forward starts at: its lowest patched layer (0 on the bridge)."""
    if is_bridge(model):
        return [0] * len(batches)
    return [min(layer_ids[c // per_layer] for c in range(b0, b1)) for b0, b1 in batches]


def _corrupted_resid(
    model: LanguageModel, corrupted: Tensor, mask: Tensor | None, starts: list[int]
) -> dict[int, Tensor]:
    """{layer: the corrupted run's residual entering block layer} for the batches' start layers."""
    starts = [s for s in starts if s > 0]
    if not starts:
        return {}
    names = {s: f"blocks.{s}.hook_resid_pre" for s in starts}
    acts = read_activations(model, corrupted, mask, list(names.values()))
    return {s: acts[name] for s, name in names.items()}


def _tl_named(site: str) -> Callable[..., Tensor]:
    fn = partial(sweep, site=site)
    fn.__doc__ = f"``sweep(..., site={site!r})``: TransformerLens' ``get_act_patch_{site}``, batched."
    return fn


get_act_patch_resid_pre = _tl_named("resid_pre")
get_act_patch_resid_mid = _tl_named("resid_mid")
get_act_patch_resid_post = _tl_named("resid_post")  # TransformerLens has no such function
get_act_patch_attn_out = _tl_named("attn_out")
get_act_patch_mlp_out = _tl_named("mlp_out")
get_act_patch_attn_head_out_all_pos = _tl_named("attn_head_out_all_pos")
get_act_patch_attn_head_out_by_pos = _tl_named("attn_head_out_by_pos")

__all__ = [
    "MEMORY_BUDGET",
    "PATCH_SITES",
    "attribution",
    "default_batch_size",
    "get_act_patch_attn_head_out_all_pos",
    "get_act_patch_attn_head_out_by_pos",
    "get_act_patch_attn_out",
    "get_act_patch_mlp_out",
    "get_act_patch_resid_mid",
    "get_act_patch_resid_post",
    "get_act_patch_resid_pre",
    "heatmap",
    "sweep",
]
