"""Tiny random Hugging Face models (Llama- and Gemma-3-style) saved with a word-level tokenizer, so
that every backend of ``moia.load_model`` can load them from a directory in well under a second."""

import pathlib

import torch

VOCAB = 101  # tokens "t0" .. "t100"; t0 is padding and unknown, t1 is EOS


def tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = Tokenizer(models.WordLevel({f"t{i}": i for i in range(VOCAB)}, unk_token="t0"))
    words.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=words, unk_token="t0", pad_token="t0", eos_token="t1")


def save_tiny(kind: str, path: pathlib.Path) -> pathlib.Path:
    """A 3-layer, d_model 64 random model of ``kind`` ("llama" or "gemma") saved under ``path``."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    common = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    if kind == "llama":
        hf = LlamaForCausalLM(LlamaConfig(**common, tie_word_embeddings=True))
    else:  # Gemma 3: norms after attention and MLP, scaled embedding, sliding-window layers
        layer_types = ["sliding_attention", "sliding_attention", "full_attention"]
        config = Gemma3TextConfig(**common, head_dim=16, sliding_window=4, layer_types=layer_types)
        hf = Gemma3ForCausalLM(config)
        with torch.no_grad():  # random norm gains, so that the post-norms matter
            for name, p in hf.named_parameters():
                if "norm" in name:
                    p.normal_(0.0, 0.5)
    hf.config.architectures = [type(hf).__name__]
    hf.save_pretrained(path)
    tokenizer().save_pretrained(path)
    return path
