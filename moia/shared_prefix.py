"""Batched generation whose rows share a prompt prefix: the prefix is run once, its KV cache reused.

Every trial of an arm has the same prompt up to its injection start (the token before
``"Trial {n}"``, PROTOCOL §2): about 120 of SmolLM2's 150 prompt tokens. Nothing is injected
there, and an arm's ablation or bias acts the same on every row, so the prefix's keys and values
are the same in every row. ``generate_shared_prefix`` runs the prefix once (batch 1, with the
arm's interventions), repeats its cache over the batch, and runs only the per-row suffixes (left-
padded *after* the prefix) and the new tokens with every intervention, as ``generate_tokens``
does. On a CPU, where the prompt forward is compute-bound, this cuts the prompt cost of a batch
by the prefix's share of the prompt.

Layout of row i: ``[prefix (P)] [pad_i] [suffix_i]``. Rotary positions come from the cumulative
attention mask (0..P-1, then P.. for the suffix, on both backends), and ``PositionState`` maps a
padded position t >= P to the unpadded position t - pad_i, as it does with left padding, so
``ConceptInjection`` starts (>= P) need no change. Each reply equals that of ``generate_tokens``
on the unpadded prompt (tested).
"""

from typing import Any

import torch
from torch import Tensor

from .generation import decode, left_pad, pad_token_id
from .intervene import intervene
from .models import is_bridge


class _PrefixStepper:
    """A KV-cached forward on either backend, whose cache can be repeated over the batch."""

    def __init__(self, model: Any, device: Any) -> None:
        self.model, self.bridge = model, is_bridge(model)
        if self.bridge:
            from transformers import DynamicCache

            self.cache: Any = DynamicCache()
        else:
            from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

            self.cache = TransformerLensKeyValueCache.init_cache(model.cfg, device, 1)
        self.mask: Tensor | None = None  # [batch, positions so far]; bridge only

    def repeat(self, batch: int) -> None:
        """Repeat the batch-1 cache ``batch`` times."""
        if self.bridge:
            self.cache.batch_repeat_interleave(batch)
            assert self.mask is not None
            self.mask = self.mask.expand(batch, -1)
            return
        for entry in self.cache.entries:
            entry.past_keys = entry.past_keys.expand(batch, -1, -1, -1)
            entry.past_values = entry.past_values.expand(batch, -1, -1, -1)
        self.cache.previous_attention_mask = self.cache.previous_attention_mask.expand(batch, -1)

    def forward(self, tokens: Tensor, mask: Tensor) -> Tensor:
        """Logits of the last position after feeding ``tokens`` ([batch, new], mask of the same
        shape). Only the last position is unembedded: at 49k tokens of vocabulary the unembedding
        of every prompt position would cost a quarter of the prompt forward."""
        if not self.bridge:
            n = int(self.model.cfg.n_layers)
            resid = self.model(tokens, attention_mask=mask, past_kv_cache=self.cache, stop_at_layer=n)
            return self.model.unembed(self.model.ln_final(resid[:, -1:]))[:, -1].float()
        self.mask = mask if self.mask is None else torch.cat([self.mask, mask], dim=1)
        positions = (self.mask.cumsum(-1) - 1).clamp(min=0)[:, -tokens.shape[1] :]
        out = self.model.original_model(
            input_ids=tokens,
            attention_mask=self.mask,
            position_ids=positions,
            past_key_values=self.cache,
            use_cache=True,
            logits_to_keep=1,
        )
        return out.logits[:, -1].float()


@torch.no_grad()
def generate_shared_prefix(
    model: Any,
    prefix: list[int],
    suffixes: list[list[int]],
    shared: tuple[Any, ...] = (),
    per_row: tuple[Any, ...] = (),
    max_new_tokens: int = 100,
    temperature: float = 0.0,
    seed: int | None = None,
) -> list[list[int]]:
    """Generate from prompts ``prefix + suffixes[i]``; returns each row's new token ids.

    Args:
        shared: interventions that act the same on every row (ablation, bias); they also act on
            the prefix.
        per_row: interventions that may differ per row (``ConceptInjection``); their starts must
            lie at or after the prefix (positions count tokens of the unpadded prompt).
        temperature, seed: as ``moia.generation.generate_tokens``.
    """
    if not prefix or not suffixes or any(not s for s in suffixes):
        raise ValueError("the prefix and every suffix must hold at least one token")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    for inj in per_row:
        if int(torch.as_tensor(inj.start).min()) < len(prefix):
            raise ValueError(f"an injection starts inside the shared prefix ({len(prefix)} tokens)")
    device = next(model.parameters()).device
    batch = len(suffixes)
    tokens, mask = left_pad(suffixes, pad_token_id(model.tokenizer), device)
    full_mask = torch.cat([torch.ones((batch, len(prefix)), dtype=torch.long, device=device), mask], dim=1)

    stepper = _PrefixStepper(model, device)
    with intervene(model, *shared):
        stepper.forward(
            torch.tensor([prefix], device=device),
            torch.ones((1, len(prefix)), dtype=torch.long, device=device),
        )
    stepper.repeat(batch)

    with intervene(model, *shared, *per_row, attention_mask=full_mask) as state:
        state.manual, state.seen = True, len(prefix)  # the prefix is already in the cache
        logits = stepper.forward(tokens, mask)
        return decode(
            model,
            logits,
            lambda nxt: stepper.forward(nxt, torch.ones_like(nxt)),
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            seed=seed,
        )
