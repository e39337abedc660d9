"""THE decoding engine: batched, left-padded, KV-cached generation with interventions, both backends.

One ``Stepper`` owns the KV cache (and, on the bridge, the cache keyword of the installed
transformers, the attention mask so far and the position ids derived from it), feeds tokens and
returns the logits of the last position only. On Hugging Face models the cache appends into storage
reserved for the tokens to come (``kv_cache``), not by concatenating on every step. One ``decode``
loop picks tokens (greedy, or sampled with per-row seeds) until every row stops. On top of them:

- ``generate_tokens``: left-padded prompts, one prefill forward, then one cached forward per token;
- ``generate_shared_prefix``: rows that share a prompt prefix run it once at batch 1, repeat its
  cache over the batch, then run their own suffixes (left-padded *after* the prefix);
- ``generate``: chat-format strings or message lists, generate, decode the replies.

Rows of different lengths share one batch: each row's reply equals the reply it gets alone (tested).
Interventions see absolute positions of the unpadded prompt through ``PositionState``.

Sampling is batch-invariant: row i draws its Gumbel noise from its own generator seeded with
``seeds[i]``, so its sample depends on its seed only, not on the rows it shares a batch with
(PROTOCOL §2, "Sampling"). Temperature, then top-k, then top-p are applied in that order, as Hugging
Face's ``generate`` applies a model's generation config.
"""

import functools
import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..core.compile import intervene
from ..core.interventions import Intervention, Recorder
from ..core.model import LanguageModel, device_of, hf_model, n_layers, wraps_hf
from .chat import Messages, format_chat, stop_token_ids
from .native import execution_model


# ------------------------------------------------------------------------------- tokens
def pad_token_id(tokenizer: Any) -> int:
    """The tokenizer's padding id, else its EOS id (padding is masked out, never attended)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("the tokenizer has neither a padding nor an end-of-sequence token")
    return int(pad)


def batch_pad_id(model: LanguageModel) -> int:
    """The id padded positions hold: the tokenizer's, or 0 for a model without a tokenizer (tiny test
    models). Padded positions are masked out, so their id never reaches a result."""
    tokenizer = getattr(model, "tokenizer", None)
    return 0 if tokenizer is None else pad_token_id(tokenizer)


def left_pad(
    rows: Sequence[Sequence[int]], pad_id: int, device: Any = None
) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"]]:
    """Left-pad token id lists: ``(tokens, attention_mask)``, both [batch, max length]."""
    if not rows or any(len(r) == 0 for r in rows):
        raise ValueError("every row needs at least one token")
    width = max(len(r) for r in rows)
    tokens = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        tokens[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r) :] = 1
    return tokens.to(device), mask.to(device)


def token_ids(model: LanguageModel, text: str) -> list[int]:
    """The ids of an already formatted text (special tokens are in the text, none are added)."""
    return list(model.tokenizer(text, add_special_tokens=False).input_ids)


def tokenize_prompts(
    model: LanguageModel, texts: Sequence[str], device: Any = None
) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"]]:
    """Left-pad already formatted texts: ``(tokens, attention_mask)``, both [batch, pos]."""
    rows = [token_ids(model, t) for t in texts]
    if any(len(r) == 0 for r in rows):
        raise ValueError("prompts must not be empty")
    check_context(model, max(len(r) for r in rows))
    return left_pad(rows, pad_token_id(model.tokenizer), device)


def check_context(model: LanguageModel, length: int) -> None:
    """A sequence longer than the model's context is an error here, not an IndexError deep inside."""
    n_ctx = getattr(model.cfg, "n_ctx", None)
    if n_ctx and length > int(n_ctx):
        raise ValueError(f"a sequence of {length} tokens exceeds the model's context of {n_ctx} tokens")


def position_ids(mask: Int[Tensor, "batch pos"]) -> Int[Tensor, "batch pos"]:
    """Rotary positions from an attention mask: 0 at each row's first token, padding clamped to 0."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


# ------------------------------------------------------------------------------- stepper
@functools.cache
def _cache_keyword(hf_class: Any) -> str:
    # transformers >= 5.24 renamed the forward's KV-cache keyword from past_key_values to cache
    params = inspect.signature(hf_class.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


@functools.cache
def _reserved_layer_class() -> Any:
    """``transformers``' ``DynamicLayer`` that appends in place (defined on first use: importing
    transformers is slow and the HookedTransformer path never needs it)."""
    from transformers.cache_utils import DynamicLayer

    class ReservedLayer(DynamicLayer):  # type: ignore[misc]
        """A ``DynamicLayer`` whose keys and values are views of storage reserved ahead.

        ``DynamicLayer`` concatenates every step, copying the whole cache each time (and holding two
        copies of a layer while it does): at 32 rows x 160 positions that was ~10% of a SmolLM2 decode
        step on the CPU (``benchmarks/RESULTS.md``), and the copy grows with the context. Here a
        step writes its new positions into storage with room for ``headroom`` more tokens; only
        outgrowing it copies (to the length needed plus ``headroom`` again). What attention sees is
        the same tensor values (tested against ``DynamicCache``). It concatenates as
        ``DynamicLayer`` does under autograd (the bias trainer backpropagates through the cache:
        writing in place would overwrite tensors saved for the backward pass), and where new states
        do not match the cached ones in rows, heads, width, dtype or device (``DynamicCache``'s
        error or type promotion then). Unlike ``DynamicLayer``'s, keys returned before a ``crop`` or
        ``reset`` are overwritten by later updates: nothing in moia or HF holds them that long.
        """

        def __init__(self, headroom: int = 0) -> None:
            super().__init__()
            self.headroom = headroom
            self.storage: tuple[Tensor, Tensor] | None = None

        def update(self, key_states: Tensor, value_states: Tensor, *args: Any, **kwargs: Any) -> Any:
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            n, new = self.get_seq_length(), key_states.shape[-2]
            if torch.is_grad_enabled() or not (
                n == 0 or (_like(self.keys, key_states) and _like(self.values, value_states))
            ):
                self.storage = None
                return super().update(key_states, value_states, *args, **kwargs)
            if not self._fits(n + new, key_states, value_states):
                self._reserve(n + new + self.headroom, key_states, value_states)
            assert self.storage is not None
            keys, values = self.storage
            keys[..., n : n + new, :].copy_(key_states)
            values[..., n : n + new, :].copy_(value_states)
            self.keys, self.values = keys[..., : n + new, :], values[..., : n + new, :]
            return self.keys, self.values

        def _fits(self, length: int, new_keys: Tensor, new_values: Tensor) -> bool:
            """Whether the storage holds the current keys and values (not replaced since by a batch
            repeat, selection or reorder; a crop keeps a prefix of it) and has room for ``length``
            positions of the new states' shapes. (With states cached, ``update`` has checked that
            the new ones match them, and so the storage they are a prefix of.)"""
            if self.storage is None or self.keys is None or self.values is None:
                return False
            empty = self.keys.numel() == 0
            return all(
                _prefix_of(current, store) and store.shape[-2] >= length and (not empty or _like(store, new))
                for current, store, new in zip(
                    (self.keys, self.values), self.storage, (new_keys, new_values), strict=True
                )
            )

        def _reserve(self, capacity: int, new_keys: Tensor, new_values: Tensor) -> None:
            n = self.get_seq_length()
            storage = []
            for current, new in ((self.keys, new_keys), (self.values, new_values)):
                store = new.new_empty((*new.shape[:2], capacity, new.shape[-1]))
                if n and current is not None:
                    store[..., :n, :].copy_(current)
                storage.append(store)
            self.storage = (storage[0], storage[1])
            self.keys, self.values = storage[0][..., :n, :], storage[1][..., :n, :]

        def reset(self) -> None:
            self.storage = None
            super().reset()

    return ReservedLayer


def _like(a: Tensor | None, b: Tensor) -> bool:
    """Whether cached states ``a`` and new states ``b`` agree in rows, heads, width, dtype and device."""
    return (
        a is not None
        and a.shape[:2] == b.shape[:2]
        and a.shape[-1] == b.shape[-1]
        and a.dtype == b.dtype
        and a.device == b.device
    )


def _prefix_of(view: Tensor, store: Tensor) -> bool:
    """Whether ``view`` is ``store[..., :n, :]`` for some n (the same memory and layout; checked by
    pointer and strides, which also holds under ``torch.inference_mode``, where views have no base)."""
    if view.numel() == 0:
        return True
    same_memory = view.data_ptr() == store.data_ptr() and view.stride() == store.stride()
    return same_memory and view.shape[:2] == store.shape[:2] and view.shape[-1] == store.shape[-1]


def kv_cache(headroom: int = 0) -> Any:
    """An empty Hugging Face ``DynamicCache`` whose layers append in place (``ReservedLayer``),
    reserving room for ``headroom`` more tokens whenever they (re)allocate."""
    from transformers import DynamicCache

    cache = DynamicCache()
    cache.layer_class_to_replicate = functools.partial(_reserved_layer_class(), headroom)  # type: ignore[assignment]
    return cache


class Stepper:
    """A KV-cached forward on either backend that returns last-position logits.

    ``forward(tokens, mask)`` feeds [batch, new] tokens whose [batch, new] mask marks padding;
    ``repeat(n)`` repeats a batch-1 cache n times (a shared prefix). Only the last position is
    unembedded: at a 49k vocabulary, unembedding every prompt position costs a quarter of a forward.
    ``headroom``: the tokens still to come after each forward (``max_new_tokens`` when generating),
    so that the HF cache reserves them once instead of growing every step (``kv_cache``).
    """

    def __init__(self, model: LanguageModel, batch: int = 1, headroom: int = 0) -> None:
        self.model, self.on_hf = model, wraps_hf(model)
        self.mask: Tensor | None = None  # [batch, positions so far]
        device = device_of(model)
        if self.on_hf:
            self.hf = hf_model(model)
            self.cache: Any = kv_cache(headroom)
            self.cache_kw = _cache_keyword(type(self.hf))  # type: ignore[arg-type]
        else:
            from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

            self.cache = TransformerLensKeyValueCache.init_cache(model.cfg, device, batch)

    def forward(
        self, tokens: Int[Tensor, "batch new"], mask: Int[Tensor, "batch new"], keep: int | None = None
    ) -> Tensor:
        """Logits [batch, vocab] of the last position after feeding ``tokens`` (float32), or with
        ``keep`` those of the last ``keep`` positions, [batch, keep, vocab] (the model's dtype)."""
        self.mask = mask if self.mask is None else torch.cat([self.mask, mask], dim=1)
        check_context(self.model, self.mask.shape[1])
        k = 1 if keep is None else keep
        if self.on_hf:
            out = self.hf(
                input_ids=tokens,
                attention_mask=self.mask,
                position_ids=position_ids(self.mask)[:, -tokens.shape[1] :],
                use_cache=True,
                logits_to_keep=k,
                **{self.cache_kw: self.cache},
            )
            logits = out.logits[:, -k:]
        else:
            resid = self.model(
                tokens, attention_mask=mask, past_kv_cache=self.cache, stop_at_layer=n_layers(self.model)
            )
            logits = unembed(self.model, resid[:, -k:])
        return logits[:, -1].float() if keep is None else logits

    def step(self, tokens: Int[Tensor, "batch 1"]) -> Tensor:
        """One decode step: feed one new token per row, return the next last-position logits."""
        return self.forward(tokens, torch.ones_like(tokens))

    def repeat(self, batch: int) -> None:
        """Repeat the batch-1 cache ``batch`` times."""
        assert self.mask is not None and self.mask.shape[0] == 1, "repeat a batch-1 cache after a forward"
        self.mask = self.mask.expand(batch, -1)
        if self.on_hf:
            self.cache.batch_repeat_interleave(batch)
            return
        for entry in self.cache.entries:
            entry.past_keys = entry.past_keys.expand(batch, -1, -1, -1)
            entry.past_values = entry.past_values.expand(batch, -1, -1, -1)
        self.cache.previous_attention_mask = self.cache.previous_attention_mask.expand(batch, -1)


def unembed(model: LanguageModel, resid: Float[Tensor, "batch pos d_model"]) -> Tensor:
    """Final norm and unembedding of HookedTransformer residuals (at the positions given only)."""
    if model.cfg.normalization_type is not None:
        resid = model.ln_final(resid)  # type: ignore[attr-defined]
    return model.unembed(resid)  # type: ignore[attr-defined,no-any-return]


def final_logits(
    model: LanguageModel, tokens: Int[Tensor, "batch pos"], mask: Int[Tensor, "batch pos"], keep: int = 1
) -> Float[Tensor, "batch keep vocab"]:
    """Logits of the last ``keep`` positions of a left-padded batch, in one uncached forward that
    unembeds only those positions (with whatever interventions are installed)."""
    if wraps_hf(model):
        hf = hf_model(model)
        out = hf(input_ids=tokens, attention_mask=mask, position_ids=position_ids(mask), logits_to_keep=keep)
        return out.logits[:, -keep:]  # type: ignore[no-any-return]
    resid = model(tokens, attention_mask=mask, stop_at_layer=n_layers(model))
    return unembed(model, resid[:, -keep:])


# ------------------------------------------------------------------------------- sampling
@dataclass(frozen=True)
class Sampling:
    """How ``decode`` picks tokens: greedy (temperature 0), or sampled with per-row seeds.

    ``top_k`` / ``top_p`` None means off; ``moia.lm.loading.generation_defaults`` reads a model's own.
    """

    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature)):
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature!r}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 is greedy), got {self.temperature}")
        if self.top_k is not None and (
            isinstance(self.top_k, bool) or int(self.top_k) != self.top_k or self.top_k < 1
        ):
            raise ValueError(f"top_k must be an integer >= 1 or None, got {self.top_k!r}")
        if self.top_p is not None and not (0 < self.top_p <= 1):
            raise ValueError(f"top_p must lie in (0, 1] or be None, got {self.top_p!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def filter(self, logits: Float[Tensor, "batch vocab"]) -> Tensor:
        """Temperature, top-k and top-p (Hugging Face's order and tie rules) on [batch, vocab]."""
        logits = logits / self.temperature
        if self.top_k is not None and self.top_k < logits.shape[-1]:
            kth = torch.topk(logits, self.top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, -math.inf)
        if self.top_p is not None and self.top_p < 1:
            sorted_logits, order = torch.sort(logits, descending=False, dim=-1)
            cumulative = sorted_logits.softmax(-1).cumsum(-1)
            remove = cumulative <= 1 - self.top_p
            remove[:, -1] = False  # always keep the most likely token
            logits = logits.masked_fill(remove.scatter(1, order, remove), -math.inf)
        return logits


GREEDY = Sampling()


class _RowNoise:
    """Per-row Gumbel noise: row i's draws depend on ``seeds[i]`` and the step only."""

    def __init__(self, seeds: Sequence[int], device: torch.device) -> None:
        self.generators = []
        for s in seeds:
            g = torch.Generator(device=device)
            g.manual_seed(int(s) % 2**63)
            self.generators.append(g)

    def sample(self, logits: Tensor) -> Tensor:
        u = torch.stack(
            [
                torch.rand(logits.shape[-1], generator=g, device=logits.device, dtype=torch.float64)
                for g in self.generators
            ]
        )
        gumbel = -torch.log(-torch.log(u.clamp(min=1e-300)))
        return (logits.double() + gumbel).argmax(-1)


def decode(
    model: LanguageModel,
    logits: Float[Tensor, "batch vocab"],
    step: Callable[[Tensor], Tensor],
    max_new_tokens: int,
    sampling: Sampling = GREEDY,
    seeds: Sequence[int] | None = None,
    feed_last: bool = False,
) -> list[list[int]]:
    """Pick a token per row from ``logits``, feed it to ``step`` (one cached forward of [batch, 1]
    returning the next logits), until every row has emitted a stop token or ``max_new_tokens``.
    Returns each row's tokens, stop token excluded.

    The last token picked is fed only with ``feed_last`` (a recorder, the mood ring, reads every
    token, so it needs that forward; nothing else does: Hugging Face's ``generate`` does not run it
    either, and at 32 new tokens it was 1/33 of the time)."""
    batch, device = logits.shape[0], logits.device
    stops = torch.tensor(stop_token_ids(model.tokenizer), device=device)
    noise = None
    if not sampling.greedy:
        if seeds is None:
            raise ValueError("sampling needs one seed per row (seeds=...)")
        if len(seeds) != batch:
            raise ValueError(f"seeds has {len(seeds)} entries for {batch} rows")
        noise = _RowNoise(seeds, device)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    out: list[list[int]] = [[] for _ in range(batch)]
    for n in range(max_new_tokens):
        nxt = logits.argmax(-1) if noise is None else noise.sample(sampling.filter(logits))
        done |= torch.isin(nxt, stops)
        picked = nxt.tolist()  # one transfer per step, not one per row
        for i in (~done).nonzero()[:, 0].tolist():
            out[i].append(picked[i])
        if bool(done.all()) or (n == max_new_tokens - 1 and not feed_last):
            break
        logits = step(nxt[:, None])
    return out


def _check_generation(
    max_new_tokens: int, sampling: Sampling, seeds: Sequence[int] | None, batch: int
) -> None:
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
    if seeds is not None and len(seeds) != batch:
        raise ValueError(f"seeds has {len(seeds)} entries for {batch} rows")


def row_seeds(seed: int | Sequence[int] | None, batch: int) -> list[int] | None:
    """Per-row seeds from one seed (row i gets seed + i) or a list; None stays None."""
    if seed is None:
        return None
    if isinstance(seed, int):
        return [seed + i for i in range(batch)]
    return [int(s) for s in seed]


# ----------------------------------------------------------------------------- generation
@torch.no_grad()
def generate_tokens(
    model: LanguageModel,
    tokens: Int[Tensor, "batch pos"],
    attention_mask: Int[Tensor, "batch pos"],
    *interventions: Intervention,
    max_new_tokens: int = 100,
    sampling: Sampling = GREEDY,
    seeds: Sequence[int] | None = None,
    native: bool | None = None,
) -> list[list[int]]:
    """Generate from left-padded ``tokens``; returns each row's new token ids, stop token excluded.

    ``native``: run on the model's native twin (``moia.lm.native``; None: ``NATIVE_BY_DEFAULT``
    where the model wraps a Hugging Face model). The tokens are the same either way (tested).
    """
    _check_generation(max_new_tokens, sampling, seeds, tokens.shape[0])
    model = execution_model(model, native)
    stepper, records = Stepper(model, tokens.shape[0], max_new_tokens), _records(interventions)
    with intervene(model, *interventions, attention_mask=attention_mask) as state:
        state.manual = True  # prefill, then one-token steps: offsets follow the tokens fed
        logits = stepper.forward(tokens, attention_mask)
        new = decode(model, logits, stepper.step, max_new_tokens, sampling, seeds, records)
    if records:
        prompts = [row[m.bool()].tolist() for row, m in zip(tokens, attention_mask, strict=True)]
        finish_recorders(interventions, prompts, new)
    return new


def _records(interventions: Sequence[Intervention]) -> bool:
    """Whether a recording intervention (the mood ring) is among ``interventions``."""
    return any(isinstance(i, Recorder) for i in interventions)


def finish_recorders(
    interventions: Sequence[Intervention], prompts: list[list[int]], generated: list[list[int]]
) -> None:
    """Hand each recording intervention (the mood ring) the rows' prompt and generated token ids."""
    for intervention in interventions:
        if isinstance(intervention, Recorder):
            intervention.finish(prompts, generated)


@torch.no_grad()
def generate_shared_prefix(
    model: LanguageModel,
    prefix: Sequence[int],
    suffixes: Sequence[Sequence[int]],
    shared: Sequence[Intervention] = (),
    per_row: Sequence[Intervention] = (),
    max_new_tokens: int = 100,
    sampling: Sampling = GREEDY,
    seeds: Sequence[int] | None = None,
    native: bool | None = None,
) -> list[list[int]]:
    """Generate from prompts ``prefix + suffixes[i]``, running the prefix once; new ids per row.

    Row i's layout is ``[prefix (P)] [pad_i] [suffix_i]``: positions come from the cumulative mask
    (0..P-1, then P.. for the suffix), and ``PositionState`` maps a padded position t >= P to the
    unpadded t - pad_i, so injection starts (>= P) need no change.

    Args:
        shared: interventions that act the same on every row (ablation, bias); they also act on
            the prefix.
        per_row: interventions that may differ per row (``ConceptInjection``); they must not act
            inside the prefix (their starts must be >= its length).
        native: as ``generate_tokens``.
    """
    model = execution_model(model, native)
    if not prefix or not suffixes or any(not s for s in suffixes):
        raise ValueError("the prefix and every suffix must hold at least one token")
    _check_generation(max_new_tokens, sampling, seeds, len(suffixes))
    for inj in per_row:
        start = getattr(inj, "start", None)
        if start is None or int(torch.as_tensor(start).min()) < len(prefix):
            raise ValueError(f"a per-row intervention acts inside the shared prefix ({len(prefix)} tokens)")
    device = device_of(model)
    tokens, mask = left_pad(suffixes, pad_token_id(model.tokenizer), device)
    full_mask = torch.cat(
        [torch.ones((len(suffixes), len(prefix)), dtype=torch.long, device=device), mask], 1
    )
    stepper = Stepper(model, 1, max_new_tokens)
    head = torch.tensor([list(prefix)], device=device)
    with intervene(model, *shared):
        stepper.forward(head, torch.ones_like(head))
    stepper.repeat(len(suffixes))
    with intervene(model, *shared, *per_row, attention_mask=full_mask) as state:
        state.manual, state.seen = True, len(prefix)  # the prefix is already in the cache
        logits = stepper.forward(tokens, mask)
        records = _records([*shared, *per_row])
        new = decode(model, logits, stepper.step, max_new_tokens, sampling, seeds, records)
    finish_recorders([*shared, *per_row], [[*prefix, *s] for s in suffixes], new)
    return new


def generate(
    model: LanguageModel,
    prompts: Sequence[str | Messages] | str,
    *interventions: Intervention,
    max_new_tokens: int = 100,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | Sequence[int] | None = None,
    system: str | None = "",
    prefill: str | None = None,
    native: bool | None = None,
) -> list[str]:
    """Chat-format ``prompts``, generate a batch with the interventions active, decode the replies.

    Args:
        prompts: strings (one user turn each) or message lists; one string is one prompt.
        interventions: ``DirectionAblation``, ``AdditiveVector``, ``ConceptInjection`` ... (per-row
            arguments follow the order of ``prompts``; ``start`` counts tokens of the formatted,
            unpadded prompt).
        temperature, top_k, top_p: 0 is greedy; otherwise sampled (see ``Sampling``).
        seed: with sampling, row i uses ``seed + i`` (default 0), or one seed per row (a list).
        system: the system turn ("" an explicit empty one, None none; ``moia.lm.chat``).
        prefill: text that starts every reply (not included in the returned text).
        native: run on the native path (HF modules with torch hooks, ``moia.lm.native``); None:
            ``NATIVE_BY_DEFAULT`` where the model wraps a Hugging Face model. Same replies.
    """
    if isinstance(prompts, str):
        prompts = [prompts]
    if isinstance(prompts, Tensor) or not isinstance(prompts, Sequence):
        raise TypeError(
            f"prompts must be a string or a sequence of strings or chat message lists, got "
            f"{type(prompts).__name__} (token ids go to moia.lm.decoding.generate_tokens)"
        )
    if not prompts:
        raise ValueError("prompts must not be empty")
    sampling = Sampling(temperature, top_k, top_p)
    texts = [format_chat(model, p, system=system, prefill=prefill) for p in prompts]
    tokens, mask = tokenize_prompts(model, texts, device_of(model))
    seeds = None if sampling.greedy else row_seeds(0 if seed is None else seed, len(texts))
    new = generate_tokens(
        model,
        tokens,
        mask,
        *interventions,
        max_new_tokens=max_new_tokens,
        sampling=sampling,
        seeds=seeds,
        native=native,
    )
    return [model.tokenizer.decode(ids, skip_special_tokens=True) for ids in new]
