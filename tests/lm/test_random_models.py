"""``random:NAME``: the shipped real-shape configs, built without weights, and a tiny one run for real."""

import pathlib

import pytest
import torch

import moia
from moia.lm.checkpoints import random_hf_model, random_model_names, random_model_spec

pytestmark = pytest.mark.slow
TINY = pathlib.Path(__file__).parents[2] / "benchmarks" / "tiny_gemma3.json"


def _gemma3_27b_parameters() -> int:
    d, mlp, layers, vocab, q, kv = 5376, 21504, 62, 262208, 32 * 128, 16 * 128
    per_layer = d * q + 2 * d * kv + q * d + 3 * d * mlp + 4 * d + 2 * 128  # + 4 norms, q/k norms
    return vocab * d + layers * per_layer + d  # tied unembedding; + the final norm


def test_shipped_configs_build_on_the_meta_device():
    assert random_model_names() == [
        "Qwen/Qwen2.5-7B-Instruct",
        "allenai/OLMo-2-0425-1B",
        "google/gemma-3-27b-it",
        "meta-llama/Llama-3.1-8B-Instruct",
    ]
    expected = {
        "google/gemma-3-27b-it": ("Gemma3ForCausalLM", 62, 5376, _gemma3_27b_parameters()),
        "meta-llama/Llama-3.1-8B-Instruct": ("LlamaForCausalLM", 32, 4096, 8_030_261_248),
        "Qwen/Qwen2.5-7B-Instruct": ("Qwen2ForCausalLM", 28, 3584, 7_615_616_512),
        "allenai/OLMo-2-0425-1B": ("Olmo2ForCausalLM", 16, 2048, 1_484_916_736),
    }
    for name, (cls, layers, width, parameters) in expected.items():
        hf, tok = random_hf_model(f"random:{name}", torch.bfloat16, torch.device("meta"))
        assert type(hf).__name__ == cls and hf.config.num_hidden_layers == layers
        assert hf.config.hidden_size == width
        assert sum(p.numel() for p in hf.parameters()) == parameters, name
        assert len(tok) <= hf.config.vocab_size and tok.chat_template
        assert next(hf.parameters()).dtype == torch.bfloat16
    assert random_model_spec("google/gemma-3-27b-it")["tokenizer"] == "gemma-3-270m"


def test_unknown_random_model_names_the_choices():
    with pytest.raises(
        ValueError, match=r"no shipped config for random model 'x/y': expected one of \['Qwen"
    ):
        moia.load_model("random:x/y")


def test_a_tiny_random_gemma3_runs_on_both_backends_and_repeats():
    bridge = moia.load_model(f"random:{TINY}", backend="bridge")
    again = moia.load_model(f"random:{TINY}", backend="hooked")
    assert bridge.moia_name == f"random:{TINY}"
    assert type(bridge.original_model).__name__ == "Gemma3ForCausalLM"
    ids = bridge.tokenizer(
        "<start_of_turn>user\nHi<end_of_turn>", return_tensors="pt", add_special_tokens=False
    )
    with torch.no_grad():  # same seed, same weights: the hooked twin equals the bridge
        torch.testing.assert_close(bridge(ids.input_ids), again(ids.input_ids), atol=1e-4, rtol=1e-4)
    reply = moia.generate(bridge, "Hello", max_new_tokens=3)[0]
    assert isinstance(reply, str)
