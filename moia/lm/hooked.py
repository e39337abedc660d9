"""HookedTransformer from any Hugging Face model of a family TransformerLens converts, configured
from the model's own config.

TransformerLens converts the weights of Llama, Qwen2, Qwen3, OLMo-2 and Gemma 3 models, but
configures Gemma 3 and OLMo-2 only from tables keyed by official name, and reads a local
folder's path as a name (a folder whose path contains "llama" is taken for a Llama). So a local or
shrunk model of those families cannot go through ``HookedTransformer.from_pretrained``. Here the
``HookedTransformerConfig`` is built from the HF config's fields, the weights are converted by
TransformerLens' own converter for the family, and nothing is folded or centred (HF numerics).

One difference from TransformerLens' own table matters for MoIA: Gemma3-27B scales attention by
``query_pre_attn_scalar ** -0.5`` (168, not its head size 128); TransformerLens 3.9's table for
``google/gemma-3-27b*`` sets no ``attn_scale`` and so divides by √128. Built here, the scale comes
from the config (tested on a shrunk config whose scalar differs from its head size).
"""

import math
from typing import Any

import torch

NO_PROCESSING = dict(
    fold_ln=False, center_writing_weights=False, center_unembed=False, fold_value_biases=False
)
FAMILIES = ("llama", "qwen2", "qwen3", "olmo2", "gemma3_text")
ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "olmo2": "Olmo2ForCausalLM",
    "gemma3_text": "Gemma3ForCausalLM",
}


def _rope(c: Any, layer_type: str | None = None) -> dict[str, Any]:
    """The RoPE parameters of one layer type (transformers >= 5: ``rope_parameters``)."""
    params = getattr(c, "rope_parameters", None) or {}
    if layer_type is not None and layer_type in params:
        params = params[layer_type] or {}
    if "rope_theta" not in params and getattr(c, "rope_theta", None) is not None:
        params = {**params, "rope_theta": c.rope_theta}
    return dict(params)


def _head_dim(c: Any) -> int:
    head_dim = getattr(c, "head_dim", None)
    return int(head_dim) if head_dim else c.hidden_size // c.num_attention_heads


def config_dict(c: Any) -> dict[str, Any]:
    """``HookedTransformerConfig`` fields for the HF text config ``c`` (one of ``FAMILIES``)."""
    family = c.model_type
    if family not in FAMILIES:
        raise ValueError(
            f"backend='hooked' cannot convert a {family!r} model here (families: {list(FAMILIES)}); "
            "use backend='bridge'"
        )
    d_head = _head_dim(c)
    rope = _rope(c, "full_attention" if family == "gemma3_text" else None)
    kv = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    cfg: dict[str, Any] = dict(
        d_model=c.hidden_size,
        d_head=d_head,
        n_heads=c.num_attention_heads,
        n_key_value_heads=kv if kv != c.num_attention_heads else None,
        d_mlp=c.intermediate_size,
        n_layers=c.num_hidden_layers,
        n_ctx=min(int(c.max_position_embeddings), 8192),
        eps=c.rms_norm_eps,
        d_vocab=c.vocab_size,
        act_fn=getattr(c, "hidden_activation", None) or c.hidden_act,
        normalization_type="RMS",
        positional_embedding_type="rotary",
        rotary_adjacent_pairs=False,
        rotary_dim=d_head,
        rotary_base=rope.get("rope_theta", 10000.0),
        final_rms=True,
        gated_mlp=True,
        original_architecture=ARCHITECTURES[family],
        model_name=str(getattr(c, "name_or_path", "") or family).rstrip("/").split("/")[-1],
        default_prepend_bos=False,
        tokenizer_prepends_bos=False,
        initializer_range=getattr(c, "initializer_range", 0.02),
    )
    if rope.get("rope_type") == "llama3":
        cfg.update(
            use_NTK_by_parts_rope=True,
            NTK_by_parts_factor=float(rope["factor"]),
            NTK_by_parts_low_freq_factor=float(rope["low_freq_factor"]),
            NTK_by_parts_high_freq_factor=float(rope["high_freq_factor"]),
            NTK_original_ctx_len=int(rope["original_max_position_embeddings"]),
        )
    elif rope.get("rope_type") not in (None, "default", "linear"):
        raise ValueError(
            f"backend='hooked': RoPE type {rope['rope_type']!r} is not converted; use backend='bridge'"
        )
    if family == "qwen3":
        cfg["use_qk_norm"] = True
    if family == "gemma3_text":
        local = _rope(c, "sliding_attention")
        linear = rope.get("rope_type") == "linear"
        cfg.update(
            attn_scale=math.sqrt(c.query_pre_attn_scalar),
            use_normalization_before_and_after=True,
            use_qk_norm=True,
            use_local_attn=True,
            window_size=c.sliding_window,
            attn_types=["local" if t == "sliding_attention" else "global" for t in c.layer_types],
            rotary_base_local=local.get("rope_theta", 10000.0),
            rotary_scaling_factor=float(rope.get("factor", 1.0)) if linear else 1.0,
        )
        if c.final_logit_softcapping:
            cfg["output_logits_soft_cap"] = float(c.final_logit_softcapping)
        if c.attn_logit_softcapping:
            cfg["attn_scores_soft_cap"] = float(c.attn_logit_softcapping)
    return cfg


def _convert(hf: Any, cfg: Any) -> dict[str, torch.Tensor]:
    from transformer_lens.pretrained.weight_conversions import (
        convert_gemma_weights,
        convert_llama_weights,
        convert_olmo2_weights,
        convert_qwen2_weights,
        convert_qwen3_weights,
    )

    convert = {
        "LlamaForCausalLM": convert_llama_weights,
        "Qwen2ForCausalLM": convert_qwen2_weights,
        "Qwen3ForCausalLM": convert_qwen3_weights,
        "Olmo2ForCausalLM": convert_olmo2_weights,
        "Gemma3ForCausalLM": convert_gemma_weights,
    }[cfg.original_architecture]
    return convert(hf, cfg)  # type: ignore[no-any-return]


def hooked_from_hf(hf: Any, tokenizer: Any, dtype: torch.dtype, device: Any) -> Any:
    """A ``HookedTransformer`` with the HF model's weights and numerics (no folding or centring).

    The HookedTransformer is built on the HF model's device in fp32 and cast afterwards only when
    the HF model is fp32 (embedded models); a model loaded in bfloat16 converts in bfloat16.
    """
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    source_dtype = next(hf.parameters()).dtype
    cfg = HookedTransformerConfig(
        **config_dict(hf.config), dtype=source_dtype, device=str(next(hf.parameters()).device)
    )
    model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
    model.load_and_process_state_dict(_convert(hf, cfg), **NO_PROCESSING)  # type: ignore[arg-type]
    if dtype != source_dtype:
        model = model.to(dtype)  # updates cfg.dtype too
    if torch.device(device) != next(model.parameters()).device:
        model = model.to(device)
    return model
