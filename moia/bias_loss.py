"""Teacher-forced target loss of a batch of trials, with the bias and injections live (PROTOCOL §5).

Each row is its trial prompt followed by its target in one forward; the loss is next-token
cross-entropy on the target tokens only ([MOIA] masks the prompt with label -100). The injection
starts at the row's start token and covers the target tokens too.

Two ways to compute it, equal up to float rounding (tested):

- ``"full"``: every row is one left-padded sequence. Works on HookedTransformer and
  TransformerBridge; the path used on a GPU.
- ``"shared_prefix"`` (HookedTransformer): all trial prompts share their text up to the injection
  start (about 120 of 170 tokens on SmolLM2), and nothing before the start is injected, so the
  prefix is run once per step at batch 1 -- with the bias, which acts at every position -- into a
  KV cache that keeps its autograd graph; the cache is expanded to the batch and the right-padded
  suffixes (the rest of the prompt and the target) run on top of it. Gradients reach b through
  both. About 3x fewer token-forwards on the [MOIA] prompt at batch 8.

Only the final residual at positions that predict target tokens goes through the final norm and
unembedding.
"""

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .bias_data import Batch
from .generation import left_pad
from .hooks import ConceptInjection, injections_by_layer
from .intervene import intervene
from .models import is_bridge

PATHS = ("auto", "full", "shared_prefix")


def _injections(batch: Batch, starts: Tensor) -> list[ConceptInjection]:
    """One ConceptInjection per distinct injection layer; rows at other layers get strength 0."""
    layers = [layer if layer >= 0 else None for layer in batch.layers]
    return injections_by_layer(list(batch.vectors), layers, batch.strengths, starts)


def _unembed(model: Any, resid: Tensor) -> Tensor:
    """Final norm and unembedding of [n, d_model] residuals (HookedTransformer)."""
    x = resid[None]
    if model.cfg.normalization_type is not None:
        x = model.ln_final(x)
    return model.unembed(x)[0]


def _device(model: Any) -> torch.device:
    return next(model.parameters()).device


def _shares_prefix(batch: Batch, length: int) -> bool:
    first = batch.prompts[0][:length]
    return length > 0 and all(p[:length] == first for p in batch.prompts)


def target_losses(model: Any, batch: Batch, bias: Any, path: str = "auto") -> tuple[Tensor, Tensor]:
    """Per-row summed target cross-entropy [B] and target token counts [B].

    Args:
        bias: the intervention that applies b (an ``AdditiveVector`` holding a live parameter).
        path: "full", "shared_prefix", or "auto" (shared_prefix on HookedTransformer when every row
            shares its prompt up to the earliest injection start, else full).
    """
    if path not in PATHS:
        raise ValueError(f"unknown loss path {path!r}: expected one of {PATHS}")
    prefix = min(batch.starts)
    if path == "auto":
        path = "full" if is_bridge(model) or not _shares_prefix(batch, prefix) else "shared_prefix"
    if path == "shared_prefix":
        if is_bridge(model):
            raise ValueError("path='shared_prefix' needs a HookedTransformer; use path='full'")
        if not _shares_prefix(batch, prefix):
            raise ValueError("path='shared_prefix': the rows' prompts differ before the injection start")
        return _shared_prefix_losses(model, batch, bias, prefix)
    return _full_losses(model, batch, bias)


def _row_losses(logits: Tensor, labels: Tensor, rows: Tensor, batch_size: int) -> Tensor:
    ce = F.cross_entropy(logits.float(), labels, reduction="none")
    return torch.zeros(batch_size, device=ce.device, dtype=ce.dtype).index_add(0, rows, ce)


def _full_losses(model: Any, batch: Batch, bias: Any) -> tuple[Tensor, Tensor]:
    device = _device(model)
    seqs = [p + t for p, t in zip(batch.prompts, batch.targets, strict=True)]
    width = max(len(s) for s in seqs)
    tokens, mask = left_pad(seqs, 0, device)
    # target token j of row i sits at padded position width - len(target) + j; the logits that
    # predict it sit one position earlier
    rows, pos, labels = _target_index(batch, [width] * len(seqs), device)
    injections = _injections(batch, torch.tensor(batch.starts))
    with intervene(model, bias, *injections, attention_mask=mask):
        if is_bridge(model):
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            out = model.original_model(input_ids=tokens, attention_mask=mask, position_ids=positions)
            logits = out.logits[rows, pos - 1]
        else:
            resid = model(tokens, attention_mask=mask, stop_at_layer=model.cfg.n_layers)
            logits = _unembed(model, resid[rows, pos - 1])
    return _row_losses(logits, labels, rows, len(batch)), _counts(batch, device)


def _shared_prefix_losses(model: Any, batch: Batch, bias: Any, prefix: int) -> tuple[Tensor, Tensor]:
    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

    device, n = _device(model), len(batch)
    head = torch.tensor(batch.prompts[0][:prefix], device=device)[None]
    cache = TransformerLensKeyValueCache.init_cache(model.cfg, device, 1)
    with intervene(model, bias):  # no injection before the start: the prefix sees only b
        model(
            head, attention_mask=torch.ones_like(head), past_kv_cache=cache, stop_at_layer=model.cfg.n_layers
        )
    for entry in cache.entries:  # the graph back to b stays attached
        entry.past_keys = entry.past_keys.expand(n, -1, -1, -1)
        entry.past_values = entry.past_values.expand(n, -1, -1, -1)
    cache.previous_attention_mask = torch.ones(n, prefix, dtype=torch.long, device=device)
    cache.freeze()
    tails = [p[prefix:] + t for p, t in zip(batch.prompts, batch.targets, strict=True)]
    width = max(len(s) for s in tails)
    tokens = torch.zeros(n, width, dtype=torch.long)
    mask = torch.zeros(n, width, dtype=torch.long)
    for i, s in enumerate(tails):  # right padding: causal attention never lets a row see its pads
        tokens[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    tokens, mask = tokens.to(device), mask.to(device)
    rows, pos, labels = _target_index(batch, [len(s) for s in tails], device, tokens)
    injections = _injections(batch, torch.tensor(batch.starts) - prefix)
    with intervene(model, bias, *injections):
        resid = model(tokens, attention_mask=mask, past_kv_cache=cache, stop_at_layer=model.cfg.n_layers)
    logits = _unembed(model, resid[rows, pos - 1])
    return _row_losses(logits, labels, rows, n), _counts(batch, device)


def _target_index(
    batch: Batch, ends: list[int], device: torch.device, tokens: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """(row, position, label) of every target token, the target ending at ``ends[row]``."""
    rows: list[int] = []
    pos: list[int] = []
    labels: list[int] = []
    for i, target in enumerate(batch.targets):
        first = ends[i] - len(target)
        rows += [i] * len(target)
        pos += range(first, ends[i])
        labels += target
    out = (
        torch.tensor(rows, device=device),
        torch.tensor(pos, device=device),
        torch.tensor(labels, device=device),
    )
    if tokens is not None:
        assert torch.equal(tokens[out[0], out[1]], out[2]), "target positions do not hold the targets"
    return out


def _counts(batch: Batch, device: torch.device) -> Tensor:
    return torch.tensor([len(t) for t in batch.targets], device=device, dtype=torch.float32)
