"""The native path on the two embedded models (SmolLM2-135M-Instruct, Gemma 3 270M): the same
logits, greedy replies and sampled replies as HookedTransformer with every intervention kind in a
left-padded batch, and the same logits as the TransformerBridge at Gemma's mlp_pre_norm bias site."""

import pytest
import torch

import moia
from moia.lm.chat import format_chat
from moia.lm.decoding import tokenize_prompts
from moia.lm.native import native_model

pytestmark = pytest.mark.slow

PROMPTS = ["What is the capital of France?", "Hi", "Write one sentence about the sea in winter."]


def _interventions(d: int) -> tuple:
    g = torch.Generator().manual_seed(1)
    return (
        moia.DirectionAblation(torch.randn(d, generator=g)),  # every writer of every layer
        moia.DirectionAblation(
            torch.randn(3, d, generator=g), layers=[3, 4], weights=0.5, per_row=True, site="resid_post"
        ),
        moia.AdditiveVector(torch.randn(d, generator=g), 5, scale=2.0),
        moia.ConceptInjection(torch.randn(3, d, generator=g) * 2, 6, [4.0, 0.0, 2.0], [3, 5, 1]),
    )


@pytest.mark.parametrize("name", ["smollm2", "gemma"])
def test_native_equals_hooked(request, name):
    hooked, native = request.getfixturevalue(name), request.getfixturevalue(f"{name}_hf")
    tokens, mask = tokenize_prompts(hooked, [format_chat(hooked, p) for p in PROMPTS])
    real = mask.bool()
    logits = []
    with torch.no_grad():
        for model in (native, hooked):
            with moia.intervene(model, *_interventions(hooked.cfg.d_model), attention_mask=mask):
                logits.append(model(tokens, attention_mask=mask)[real])
        plain = native(tokens, attention_mask=mask)[real]
    assert (logits[0] - logits[1]).abs().max() <= 1e-3  # the README's bound for HF numerics
    assert (logits[0] - plain).abs().max() > 0.1
    for kwargs in (dict(), dict(temperature=0.8, seed=3)):
        replies = [
            moia.generate(m, PROMPTS, *_interventions(hooked.cfg.d_model), max_new_tokens=6, **kwargs)
            for m in (native, hooked)
        ]
        assert replies[0] == replies[1] and all(replies[0])


def test_native_twin_equals_the_bridge_at_gemmas_bias_site(gemma_bridge):
    native = native_model(gemma_bridge)
    tokens, mask = tokenize_prompts(native, [format_chat(native, p) for p in PROMPTS])
    bias = moia.AdditiveVector(torch.randn(native.cfg.d_model) * 4, 9, site="mlp_pre_norm")
    with torch.no_grad():
        out = []
        for model in (native, gemma_bridge):
            with moia.intervene(model, bias, attention_mask=mask):
                out.append(model(tokens, attention_mask=mask)[mask.bool()])
        plain = native(tokens, attention_mask=mask)[mask.bool()]
    assert (out[0] - out[1]).abs().max() <= 1e-3
    assert (out[0] - plain).abs().max() > 0.1
