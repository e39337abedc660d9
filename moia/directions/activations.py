"""Activation reads: the residual stream at chosen layers and positions of formatted prompts.

``residual_stream`` reads the output of decoder layers (``hook_resid_post``, HF ``hidden_states[L+1]``)
at positions counted from the end of each prompt, in left-padded batches sorted by length, running the
model only up to the last layer it needs. Concept vectors (PROTOCOL §1), refusal directions
(PROTOCOL §4) and emotion vectors are all built on it.
"""

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from ..core.model import LanguageModel, device_of
from ..core.sites import hook_name
from ..lm.decoding import tokenize_prompts


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
