"""Bake full directional ablation into the weights (PROTOCOL §4, [ARDITI] §4.1).

``W ← W - (W R̂ᵀ) R̂`` on the token embedding and on every matrix (and bias) that writes to the
residual stream -- attention output and MLP output -- gives the same model as ablating the
directions at every writer, at zero run-time cost. A tied unembedding is untied first; otherwise
projecting the shared embedding would change the logits too.

Not equivalent where a norm sits between a writer and the residual stream (Gemma 2/3's
post-attention and post-feed-forward norms): the norm's gain re-introduces the direction. Such
models are refused unless ``allow_post_norm=True``.
"""

from typing import Any

import torch
from torch import Tensor, nn

from .interventions import check_vectors, finite_tensor
from .linalg import orthonormal_rows
from .model import LanguageModel, d_model, hf_model, wraps_hf
from .sites import has_post_norms


def _project_rows(weight: Tensor, r: Tensor) -> None:
    """In place: remove span(r) from the last dimension of ``weight`` (r: (k, d) orthonormal)."""
    r = r.to(weight.device, weight.dtype)
    weight.sub_((weight @ r.T) @ r)


def _project_cols(weight: Tensor, r: Tensor) -> None:
    """In place: remove span(r) from the first dimension of an nn.Linear weight (out, in)."""
    r = r.to(weight.device, weight.dtype)
    weight.sub_(r.T @ (r @ weight))


@torch.no_grad()
def orthogonalize_weights(
    model: LanguageModel, directions: Any, allow_post_norm: bool = False
) -> LanguageModel:
    """Project ``directions`` ([d] or [k, d]) out of every residual-stream writer, in place.

    Returns the model. Equivalent to ``DirectionAblation(directions, site="writers")`` at every
    layer (tested on SmolLM2 to 1e-3 in the logits).
    """
    d = finite_tensor(directions, "directions")
    d = d[None, :] if d.dim() == 1 else d
    check_vectors(d, "directions", d_model(model))
    if has_post_norms(model) and not allow_post_norm:
        raise ValueError(
            "orthogonalize_weights: this model has post-attention/post-MLP norms (Gemma 2/3, OLMo-2); their "
            "gain re-introduces the direction, so weight orthogonalisation is not equivalent to "
            "ablation. Use moia.DirectionAblation, or pass allow_post_norm=True to proceed anyway"
        )
    basis, kept = orthonormal_rows(d)
    r = basis[kept].to(torch.float32)
    if wraps_hf(model):
        _orthogonalize_hf(hf_model(model), r)
    else:
        _orthogonalize_hooked(model, r)
    return model


def _orthogonalize_hooked(model: Any, r: Tensor) -> None:  # a HookedTransformer: embed, blocks
    # HookedTransformer keeps W_U separate from W_E, so nothing is tied here.
    _project_rows(model.embed.W_E.data, r)
    if hasattr(model, "pos_embed") and hasattr(model.pos_embed, "W_pos"):
        _project_rows(model.pos_embed.W_pos.data, r)
    for block in model.blocks:
        _project_rows(block.attn.W_O.data, r)  # (n_heads, d_head, d_model)
        _project_rows(block.attn.b_O.data[None, :], r)
        _project_rows(block.mlp.W_out.data, r)  # (d_mlp, d_model)
        _project_rows(block.mlp.b_out.data[None, :], r)


def _orthogonalize_hf(hf: Any, r: Tensor) -> None:
    out_emb = hf.get_output_embeddings()
    in_emb = hf.get_input_embeddings()
    if out_emb is not None and out_emb.weight is in_emb.weight:  # untie before projecting
        out_emb.weight = nn.Parameter(in_emb.weight.detach().clone())
        hf.config.tie_word_embeddings = False
        if hasattr(hf, "_tied_weights_keys"):
            hf._tied_weights_keys = []
    _project_rows(in_emb.weight.data, r)
    for layer in hf.model.layers:
        writers = [layer.self_attn.o_proj, layer.mlp.down_proj]
        for linear in writers:
            _project_cols(linear.weight.data, r)
            if linear.bias is not None:
                _project_rows(linear.bias.data[None, :], r)
