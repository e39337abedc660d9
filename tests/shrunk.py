"""Shrunk random checkpoints of real architectures, saved as Hugging Face model folders.

Each family keeps its real architecture class and its distinguishing features (Gemma 3's
multimodal wrapper, local/global layers, post-norms, query_pre_attn_scalar that is not the head
size, linear RoPE scaling; Llama 3's RoPE scaling; Qwen2's QKV biases; Qwen3's explicit head size
and QK norms; OLMo-2's norms after each block), with tiny widths. Tokenizers are the embedded
models' (Gemma 3's for Gemma, SmolLM2's for the others), so trial prompts tokenize for real.
"""

import pathlib
import shutil

import torch

from moia.lm.loading import load_hf

FAMILIES = ("gemma3", "llama", "qwen2", "qwen3", "olmo2")
SMOLLM2_VOCAB = 49152


def _config(family: str):
    from transformers import Gemma3Config, LlamaConfig, Olmo2Config, Qwen2Config, Qwen3Config

    small = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=SMOLLM2_VOCAB,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    if family == "gemma3":
        text = dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=7,  # layers 0-4 and 6 local (sliding window), 5 global
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=16,
            query_pre_attn_scalar=24,  # not the head size: catches a wrong attention scale
            sliding_window=8,  # shorter than the trial prompt: local attention is exercised
            rope_scaling={"factor": 8.0, "rope_type": "linear"},
            vocab_size=262208,
            max_position_embeddings=512,
        )
        vision = dict(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=28,
            patch_size=14,
        )
        return Gemma3Config(
            text_config=text, vision_config=vision, mm_tokens_per_image=4, eos_token_id=[1, 106]
        )
    if family == "llama":
        rope = {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
            "rope_theta": 500000.0,
        }
        return LlamaConfig(**small, rope_parameters=rope, tie_word_embeddings=False)
    if family == "qwen2":
        return Qwen2Config(**small, tie_word_embeddings=True)
    if family == "qwen3":
        return Qwen3Config(**small, head_dim=32, tie_word_embeddings=False)
    if family == "olmo2":
        return Olmo2Config(**{**small, "num_key_value_heads": 4}, tie_word_embeddings=False)
    raise ValueError(family)


def save_shrunk(family: str, folder: pathlib.Path) -> pathlib.Path:
    """Save a shrunk random ``family`` checkpoint with a tokenizer to ``folder``; return it."""
    import transformers

    classes = {
        "gemma3": "Gemma3ForConditionalGeneration",
        "llama": "LlamaForCausalLM",
        "qwen2": "Qwen2ForCausalLM",
        "qwen3": "Qwen3ForCausalLM",
        "olmo2": "Olmo2ForCausalLM",
    }
    torch.manual_seed(0)
    model = getattr(transformers, classes[family])(_config(family))
    with torch.no_grad():  # random init std 0.02 gives near-uniform logits; widen to make argmax robust
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(5.0)
    model.save_pretrained(folder)
    source = "gemma-3-270m" if family == "gemma3" else "smollm2-135m-instruct"
    load_hf(source, tokenizer_only=True)  # make sure the embedded model's cache exists
    from moia.lm.loading import cache_dir

    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (cache_dir() / "models" / source / name).exists():
            shutil.copy(cache_dir() / "models" / source / name, folder / name)
    if family == "gemma3":
        template = pathlib.Path(__file__).parents[1] / "moia" / "data" / "gemma3_it_chat_template.jinja"
        shutil.copy(template, folder / "chat_template.jinja")
    return folder
