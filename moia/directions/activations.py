"""Activation reads: the residual stream at chosen layers and positions of formatted prompts.

``residual_stream`` reads the output of decoder layers (``hook_resid_post``, HF ``hidden_states[L+1]``)
at positions counted from the end of each prompt, in left-padded batches sorted by length, running the
model only up to the last layer it needs. Concept vectors (PROTOCOL §1), refusal directions
(PROTOCOL §4) and emotion vectors are all built on it.

``span_means`` reads the same hook point averaged over the tokens of a character span of each text
(a whole story, a scenario inside a chat prompt): emotion vectors and their ``score`` (PROTOCOL §7).
"""

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from ..core.compile import intervene
from ..core.interventions import Intervention
from ..core.model import LanguageModel, device_of
from ..core.sites import hook_name
from ..lm.decoding import batch_pad_id, check_context, left_pad, tokenize_prompts


@torch.no_grad()
def residual_stream(
    model: LanguageModel,
    texts: Sequence[str],
    layers: Sequence[int | tuple[str, int]],
    positions: Sequence[int] = (-1,),
    batch_size: int = 16,
    progress: bool = False,
    desc: str = "residual stream",
) -> Iterator[tuple[list[int], Float[Tensor, "batch pos layer d_model"]]]:
    """Yield ``(indices, acts)`` per batch: the output of each decoder layer in ``layers`` at
    ``positions`` (negative, from the last prompt token: -1 is the last) of each formatted text.
    An entry of ``layers`` may also name its hook site, ``("resid_pre", 0)``: the input of block 0.

    Texts are batched by length (less padding) and left-padded, so a position counted from the
    end is the same token in every row; ``indices`` say which texts a batch holds. The forward
    stops after ``max(layers)``; only the requested hook points and positions are kept.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not texts:
        raise ValueError("texts must not be empty")
    if any(p >= 0 for p in positions):
        raise ValueError(
            f"positions count from the end of the prompt and must be negative, got {list(positions)}"
        )
    tok = model.tokenizer
    lengths = [len(tok(t, add_special_tokens=False).input_ids) for t in texts]
    if min(lengths) < -min(positions):
        raise ValueError(f"position {min(positions)} lies before the start of a {min(lengths)}-token prompt")
    order = sorted(range(len(texts)), key=lambda i: lengths[i])
    points = [p if isinstance(p, tuple) else ("resid_post", p) for p in layers]
    names = [hook_name(model, site, layer) for site, layer in points]
    pos = list(positions)
    captured: dict[str, Tensor] = {}

    def capture(x: Tensor, hook: Any) -> None:
        captured[hook.name] = x[:, pos]  # [batch, n_pos, d_model]

    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    for idx in tqdm(batches, desc=desc, disable=not progress):
        tokens, mask = tokenize_prompts(model, [texts[i] for i in idx], device_of(model))
        captured.clear()
        with model.hooks(fwd_hooks=[(name, capture) for name in names]):  # not held across yields
            model(tokens, attention_mask=mask, stop_at_layer=max(layer for _, layer in points) + 1)
        yield idx, torch.stack([captured[name] for name in names], dim=2)


Span = tuple[int, int]


def span_token_range(tokenizer: Any, text: str, span: Span | None) -> tuple[list[int], int, int]:
    """``(ids, first, end)``: the token ids of ``text`` (no special tokens added) and the range of
    tokens ``[first, end)`` that overlap the character span ``[start, stop)`` (None: the whole text).

    Uses the fast tokenizer's character offsets, so a span boundary inside a token keeps that token.
    """
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(encoding["input_ids"]), encoding.get("offset_mapping")
    if not ids:
        raise ValueError(f"text {text[:60]!r} has no tokens")
    if span is None:
        return ids, 0, len(ids)
    start, stop = span
    if not 0 <= start < stop <= len(text):
        raise ValueError(f"span {span} is not a non-empty character range of a {len(text)}-character text")
    if offsets is None:
        raise ValueError("reading a span needs a fast tokenizer (character offsets)")
    inside = [i for i, (a, b) in enumerate(offsets) if b > start and a < stop and b > a]
    if not inside:
        raise ValueError(f"span {span} of text {text[:60]!r} holds no token")
    return ids, inside[0], inside[-1] + 1


@torch.no_grad()
def span_means(
    model: LanguageModel,
    texts: Sequence[str],
    layers: Sequence[int],
    spans: Sequence[Span | None] | None = None,
    skip: int = 0,
    interventions: Sequence[Intervention] = (),
    batch_size: int = 16,
    progress: bool = False,
    desc: str = "span means",
) -> Float[Tensor, "text layer d_model"]:
    """The mean of the output of each decoder layer in ``layers`` (``hook_resid_post``) over the
    tokens of a character span of each text, float64 on the CPU.

    ``spans[i]`` is ``(start, stop)`` in characters of ``texts[i]`` (None or no ``spans``: every
    token of the text); the first ``skip`` tokens of each span are left out. Texts are tokenized
    as they are (no special tokens added), sorted by length and left-padded; padding never enters a
    mean, so a text's mean does not depend on its batch (tested). ``interventions`` are active in
    every forward (an arm's ablation, say). Emotion vectors (PROTOCOL §7) are read with it.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if isinstance(skip, bool) or not isinstance(skip, int) or skip < 0:
        raise ValueError(f"skip must be an integer >= 0, got {skip!r}")
    if not texts:
        raise ValueError("texts must not be empty")
    if spans is not None and len(spans) != len(texts):
        raise ValueError(f"spans has {len(spans)} entries for {len(texts)} texts")
    if not layers:
        raise ValueError("layers must not be empty")
    rows, ranges = [], []
    for i, text in enumerate(texts):
        ids, first, end = span_token_range(model.tokenizer, text, None if spans is None else spans[i])
        if end - first <= skip:
            raise ValueError(
                f"text {i} ({text[:60]!r}...) has {end - first} tokens in its span; skip={skip} leaves none"
            )
        rows.append(ids)
        ranges.append((first + skip, end))
    names = [hook_name(model, "resid_post", layer) for layer in layers]
    order = sorted(range(len(texts)), key=lambda i: len(rows[i]))
    out = torch.empty(len(texts), len(layers), int(model.cfg.d_model), dtype=torch.float64)
    captured: dict[str, Tensor] = {}

    def capture(x: Tensor, hook: Any) -> None:
        captured[hook.name] = x

    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    for idx in tqdm(batches, desc=desc, disable=not progress):
        check_context(model, max(len(rows[i]) for i in idx))
        tokens, mask = left_pad([rows[i] for i in idx], batch_pad_id(model), device_of(model))
        weights = torch.zeros(tokens.shape, dtype=torch.float64)  # [batch, pos]: 1/n on span tokens
        for j, i in enumerate(idx):
            shift = tokens.shape[1] - len(rows[i])  # left padding
            first, end = ranges[i]
            weights[j, shift + first : shift + end] = 1.0 / (end - first)
        captured.clear()
        with (
            intervene(model, *interventions, attention_mask=mask),
            model.hooks(fwd_hooks=[(name, capture) for name in names]),
        ):
            model(tokens, attention_mask=mask, stop_at_layer=max(layers) + 1)
        for k, name in enumerate(names):
            acts = captured[name].to(device="cpu", dtype=torch.float64)  # [batch, pos, d_model]
            out[idx, k] = torch.einsum("bp,bpd->bd", weights, acts)
    return out
