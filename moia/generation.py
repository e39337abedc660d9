"""Batched, left-padded, KV-cached generation with interventions, on both backends.

Rows of different lengths share one batch: prompts are left-padded, the attention mask hides the
padding and positions are counted per row, so each row's reply equals the reply it gets alone
(tested). Interventions see absolute positions through ``PositionState``: the prompt is one
forward, then every generated token is one cached forward of one position.
"""

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from .chat import Messages, format_chat, stop_token_ids
from .intervene import intervene
from .models import is_bridge


def tokenize_prompts(model: Any, texts: list[str], device: Any = None) -> tuple[Tensor, Tensor]:
    """Left-pad already formatted texts: ``(tokens, attention_mask)``, both [batch, pos]."""
    tok = model.tokenizer
    rows = [tok(t, add_special_tokens=False).input_ids for t in texts]
    if any(len(r) == 0 for r in rows):
        raise ValueError("prompts must not be empty")
    return left_pad(rows, pad_token_id(tok), device)


def pad_token_id(tokenizer: Any) -> int:
    return int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)


def left_pad(rows: Sequence[Sequence[int]], pad_id: int, device: Any = None) -> tuple[Tensor, Tensor]:
    """Left-pad token id lists: ``(tokens, attention_mask)``, both [batch, max length]."""
    width = max(len(r) for r in rows)
    tokens = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        tokens[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r) :] = 1
    return tokens.to(device), mask.to(device)


class _Stepper:
    """One prefill forward, then one cached forward per new token, returning last logits."""

    def __init__(self, model: Any, tokens: Tensor, mask: Tensor) -> None:
        self.model, self.mask = model, mask
        if is_bridge(model):
            from transformers import DynamicCache

            self.hf = model.original_model
            self.cache: Any = DynamicCache()
            # transformers >= 5.24 renamed the forward's cache keyword to ``cache``
            params = inspect.signature(type(self.hf).forward).parameters
            self.cache_kw = "cache" if "cache" in params else "past_key_values"
        else:
            from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

            self.cache = TransformerLensKeyValueCache.init_cache(model.cfg, mask.device, mask.shape[0])

    def forward(self, tokens: Tensor, first: bool) -> Tensor:
        new_mask = self.mask if first else torch.ones_like(tokens)
        if is_bridge(self.model):
            if not first:
                self.mask = torch.cat([self.mask, new_mask], dim=1)
            positions = (self.mask.cumsum(-1) - 1).clamp(min=0)[:, -tokens.shape[1] :]
            out = self.hf(
                input_ids=tokens,
                attention_mask=self.mask,
                position_ids=positions,
                **{self.cache_kw: self.cache},
                use_cache=True,
            )
            return out.logits[:, -1].float()
        logits = self.model(tokens, attention_mask=new_mask, past_kv_cache=self.cache)
        return logits[:, -1].float()


@torch.no_grad()
def generate_tokens(
    model: Any,
    tokens: Tensor,
    attention_mask: Tensor,
    *interventions: Any,
    max_new_tokens: int = 100,
    temperature: float = 0.0,
    seed: int | None = None,
) -> list[list[int]]:
    """Generate from left-padded ``tokens``; returns each row's new token ids, stop token excluded."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    stepper = _Stepper(model, tokens, attention_mask)
    with intervene(model, *interventions, attention_mask=attention_mask) as state:
        state.manual = True  # prefill then one-token steps: offsets follow the tokens fed
        logits = stepper.forward(tokens, first=True)
        return decode(
            model,
            logits,
            lambda nxt: stepper.forward(nxt, first=False),
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            seed=seed,
        )


def decode(
    model: Any,
    logits: Tensor,
    step: Callable[[Tensor], Tensor],
    max_new_tokens: int,
    temperature: float = 0.0,
    seed: int | None = None,
) -> list[list[int]]:
    """The decode loop: pick a token per row from ``logits`` [batch, vocab], feed it to ``step``
    (one cached forward of [batch, 1] returning the next logits), until every row has emitted a
    stop token or ``max_new_tokens``. Returns each row's tokens, stop token excluded."""
    device = logits.device
    stops = torch.tensor(stop_token_ids(model.tokenizer), device=device)
    generator = None
    if temperature > 0:
        generator = torch.Generator(device=device)
        generator.manual_seed(0 if seed is None else seed)
    batch = logits.shape[0]
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    out: list[list[int]] = [[] for _ in range(batch)]
    for _ in range(max_new_tokens):
        if temperature > 0:
            probs = torch.softmax(logits / temperature, dim=-1)
            nxt = torch.multinomial(probs, 1, generator=generator)[:, 0]
        else:
            nxt = logits.argmax(-1)
        done |= torch.isin(nxt, stops)
        for i in (~done).nonzero()[:, 0].tolist():
            out[i].append(int(nxt[i]))
        if bool(done.all()):
            break
        logits = step(nxt[:, None])
    return out


def generate(
    model: Any,
    prompts: Sequence[str | Messages] | str,
    *interventions: Any,
    max_new_tokens: int = 100,
    temperature: float = 0.0,
    seed: int | None = None,
    system: str | None = "",
    prefill: str | None = None,
) -> list[str]:
    """Chat-format ``prompts``, generate a batch with the interventions active, decode the replies.

    Args:
        prompts: strings (one user turn each) or message lists; one string is one prompt.
        interventions: ``DirectionAblation``, ``AdditiveVector``, ``ConceptInjection`` ... (per-row
            arguments follow the order of ``prompts``; ``start`` counts tokens of the formatted,
            unpadded prompt).
        temperature: 0 is greedy; otherwise sampling with ``seed``.
        system: the system turn ("" explicit empty, None none); see ``moia.chat.format_chat``.
        prefill: text that starts every reply (not included in the returned text).
    """
    if isinstance(prompts, str):
        prompts = [prompts]
    if not prompts:
        raise ValueError("prompts must not be empty")
    texts = [format_chat(model, p, system=system, prefill=prefill) for p in prompts]
    device = next(model.parameters()).device
    tokens, mask = tokenize_prompts(model, texts, device)
    new = generate_tokens(
        model,
        tokens,
        mask,
        *interventions,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        seed=seed,
    )
    return [model.tokenizer.decode(ids, skip_special_tokens=True) for ids in new]
