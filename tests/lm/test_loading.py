"""Offline loading of the real default models: HF numerics on both backends, caches, local dirs."""

import pathlib

import pytest
import torch

import moia
from moia.core.sites import hook_name
from moia.lm.chat import format_chat
from moia.lm.loading import cache_dir, load_hf

pytestmark = pytest.mark.slow

TEXT = "The quick brown fox jumps over the lazy dog. Interpretability researchers inject thoughts."


def _hf_layer_outputs(hf, ids):
    """Output of every decoder layer, captured by forward hooks on the HF model itself.

    ``hidden_states[L + 1]`` is the same tensor for L < n_layers - 1; HF applies the final norm to
    the last entry, so the last layer's raw output is taken from the hook instead.
    """
    outs = []
    handles = [
        layer.register_forward_hook(lambda m, i, o: outs.append(o[0] if isinstance(o, tuple) else o))
        for layer in hf.model.layers
    ]
    try:
        result = hf(ids, output_hidden_states=True)
    finally:
        for h in handles:
            h.remove()
    return result, outs


def _scaled_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| per position, divided by max(1, max |b|) at that position.

    Residual norms reach 1e4-1e5 at "massive activation" positions (BOS); fp32 resolves them only
    to ~1e-3 absolute, so the absolute bound is applied relative to the position's magnitude.
    """
    err = (a - b).abs().amax(-1)
    return float((err / b.abs().amax(-1).clamp(min=1.0)).max())


@pytest.mark.parametrize("name", ["smollm2-135m-instruct", "gemma-3-270m"])
@pytest.mark.parametrize("backend", ["hooked", "bridge"])
def test_hf_numerics(request, name, backend):
    fixture = {"smollm2-135m-instruct": "smollm2", "gemma-3-270m": "gemma"}[name]
    model = request.getfixturevalue(fixture if backend == "hooked" else f"{fixture}_bridge")
    hf, tok = load_hf(name)
    ids = tok(TEXT, return_tensors="pt").input_ids
    with torch.no_grad():
        ref, layer_outputs = _hf_layer_outputs(hf, ids)
        logits, cache = model.run_with_cache(ids)
    assert (logits - ref.logits).abs().max() <= 1e-3
    for layer in range(model.cfg.n_layers):
        ours = cache[hook_name(model, "resid_post", layer)]
        if layer < model.cfg.n_layers - 1:
            torch.testing.assert_close(ref.hidden_states[layer + 1], layer_outputs[layer], atol=0, rtol=0)
        assert _scaled_error(ours, layer_outputs[layer]) <= 1e-5, f"layer {layer}"
        small = layer_outputs[layer].abs().amax(-1) < 1e3  # ordinary positions: absolute bound
        if small.any():
            assert (ours - layer_outputs[layer]).abs().amax(-1)[small].max() <= 1e-3, f"layer {layer}"


def test_converted_weights_are_cached_as_safetensors(smollm2):
    target = cache_dir() / "models" / "smollm2-135m-instruct"
    assert (target / "config.json").exists()
    assert list(target.glob("*.safetensors"))
    assert not list(target.glob("*.bin"))
    hf, _ = load_hf("smollm2-135m-instruct")
    assert not hasattr(hf.config, "quantization_config")


def test_local_hf_directory(tmp_path: pathlib.Path, smollm2):
    """Any local HF model directory loads, on both backends, with the same numerics."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=smollm2.cfg.d_vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path)
    smollm2.tokenizer.save_pretrained(tmp_path)
    hooked = moia.load_model(str(tmp_path), backend="hooked")
    bridge = moia.load_model(str(tmp_path), backend="bridge")
    ids = torch.tensor([[1, 5, 9, 200, 3000]])
    with torch.no_grad():
        torch.testing.assert_close(hooked(ids), bridge(ids), atol=1e-4, rtol=1e-4)
    assert hooked.moia_name == tmp_path.name


def test_bridge_kv_cache_generation_matches_uncached(smollm2_bridge):
    """The known trap: with transformers >= 5.24 the bridge ignored the KV cache (keyword ``cache``)
    so cached generation emitted garbage. moia patches it; cached greedy must equal uncached."""
    model = smollm2_bridge
    prompt = format_chat(model, "Name three colours.")
    ids = model.tokenizer(prompt, return_tensors="pt", add_special_tokens=False).input_ids
    # native=False: the bridge's own KV cache (the default would run its native twin)
    cached = moia.generate(model, "Name three colours.", max_new_tokens=12, native=False)[0]
    seq = ids
    with torch.no_grad():
        for _ in range(12):
            nxt = model.original_model(seq, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            if int(nxt) == model.tokenizer.eos_token_id:
                break
            seq = torch.cat([seq, nxt], dim=1)
    uncached = model.tokenizer.decode(seq[0, ids.shape[1] :], skip_special_tokens=True)
    assert cached == uncached
    assert len(cached.split()) >= 3


def test_default_backend_generates_on_the_native_path(tiny_hf_dirs, monkeypatch):
    """load_model's default is the bridge, so moia.generate on a default-loaded model runs on the
    native twin (HF speed), with the tokens of the bridge's own hook points."""
    from moia.lm.decoding import Stepper
    from moia.lm.native import NativeModel

    model = moia.load_model(tiny_hf_dirs["llama"])
    assert type(model).__name__ == "TransformerBridge"
    ran_on: list[str] = []
    original = Stepper.__init__

    def spy(self, m, *args, **kwargs):
        ran_on.append(type(m).__name__)
        original(self, m, *args, **kwargs)

    from moia.lm.decoding import generate_tokens, tokenize_prompts

    r = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(1))
    tokens, mask = tokenize_prompts(model, ["Hi there", "What is two plus two?"], torch.device("cpu"))
    monkeypatch.setattr(Stepper, "__init__", spy)
    native = generate_tokens(model, tokens, mask, moia.DirectionAblation(r), max_new_tokens=6)
    bridge = generate_tokens(model, tokens, mask, moia.DirectionAblation(r), max_new_tokens=6, native=False)
    assert ran_on == [NativeModel.__name__, "TransformerBridge"]
    # the same token ids, and some (the tiny model's tokens decode to empty text: compare ids)
    assert native == bridge and sum(map(len, native)) >= 6
