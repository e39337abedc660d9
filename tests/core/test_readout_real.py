"""The mood ring on the real SmolLM2 (PROTOCOL §8), both backends: readings recorded during batched,
left-padded, KV-cached ``moia.generate`` equal the projections of one uncached ``run_with_cache`` on
each full sequence; tokens and logits are identical with and without the ring."""

import pytest
import torch

import moia
from moia.core.sites import hook_name
from moia.lm.chat import format_chat
from moia.lm.decoding import Stepper, tokenize_prompts

pytestmark = pytest.mark.slow

PROMPTS = ["Hi", "Describe a storm at sea in two sentences.", "What is 2+2?"]
LAYER = 18


def _unit(e: torch.Tensor) -> torch.Tensor:
    return e / e.norm(dim=-1, keepdim=True)


def test_readings_equal_an_uncached_run_with_cache(smollm2_any):
    model = smollm2_any
    e = torch.randn(4, model.cfg.d_model)
    ring = moia.MoodRing(e, layer=LAYER)
    replies = moia.generate(model, PROMPTS, ring, max_new_tokens=12)
    lengths = [len(t) - p for t, p in zip(ring.tokens, ring.prompt_lengths, strict=True)]
    assert len(set(ring.prompt_lengths)) == 3 and min(lengths) >= 1  # padded rows, tokens generated
    name = hook_name(model, "resid_post", LAYER)
    worst = 0.0
    for i, tokens in enumerate(ring.tokens):
        ids = torch.tensor([tokens])
        assert (
            model.tokenizer.decode(tokens[ring.prompt_lengths[i] :], skip_special_tokens=True) == replies[i]
        )
        with torch.no_grad():
            _, cache = model.run_with_cache(ids, attention_mask=torch.ones_like(ids), names_filter=[name])
        x = cache[name][0].double()
        ref = x @ _unit(e).double().T
        assert ring.raw[i].shape == ref.shape
        # relative to the position's own scale (|x·ê| <= ||x||): SmolLM2's first position reaches 1e3
        err = (ring.raw[i].double() - ref).abs() / x.norm(dim=-1, keepdim=True)
        worst = max(worst, float(err.max()))
    assert worst <= 1e-4, worst


def test_tokens_and_logits_identical_with_and_without_the_ring(smollm2):
    model = smollm2
    e = torch.randn(3, model.cfg.d_model)
    r = torch.randn(model.cfg.d_model)
    texts = [format_chat(model, p) for p in PROMPTS]
    tokens, mask = tokenize_prompts(model, texts)
    for others in ([], [moia.DirectionAblation(r, layers=[LAYER], site="resid_post", weights=0.1)]):
        runs = []
        for ring in ([], [moia.MoodRing(e, layer=LAYER)]):
            stepper = Stepper(model, tokens.shape[0])
            with torch.no_grad(), moia.intervene(model, *others, *ring, attention_mask=mask) as state:
                state.manual = True
                logits = [stepper.forward(tokens, mask)]
                for _ in range(6):
                    logits.append(stepper.step(logits[-1].argmax(-1)[:, None]))
            runs.append(
                (torch.stack(logits), moia.generate(model, PROMPTS, *others, *ring, max_new_tokens=10))
            )
        assert torch.equal(runs[0][0], runs[1][0])
        assert runs[0][1] == runs[1][1]


KERNEL_SCRIPT = """
import json, sys, torch, moia
torch.set_grad_enabled(False)
model = moia.load_model("smollm2-135m-instruct", backend="hooked")
g = torch.Generator().manual_seed(0)
e, r = torch.randn(3, model.cfg.d_model, generator=g), torch.randn(model.cfg.d_model, generator=g)
ring = moia.MoodRing(e, layer=14)
tokens = torch.randint(100, 40000, (2, 6), generator=g)
ablation = moia.DirectionAblation(r, layers=[14], site="resid_post", weights=0.5)
with moia.intervene(model, ablation, ring):
    model(tokens)
json.dump([t.tolist() for t in ring.raw], sys.stdout)
"""


def test_the_kernel_records_the_twins_readings_in_the_model(smollm2):
    """Through the Triton kernel (interpreted on CPU, in a subprocess), beside an ablation at the
    same hook point, the ring records what the twin records."""
    import json
    import os
    import subprocess
    import sys

    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "MOIA_FORCE_TRITON": "1"}
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run(
        [sys.executable, "-c", KERNEL_SCRIPT], env=env, cwd=root, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    kernel = [torch.tensor(t) for t in json.loads(out.stdout.strip().splitlines()[-1])]
    g = torch.Generator().manual_seed(0)
    e, r = torch.randn(3, smollm2.cfg.d_model, generator=g), torch.randn(smollm2.cfg.d_model, generator=g)
    ring = moia.MoodRing(e, layer=14)
    tokens = torch.randint(100, 40000, (2, 6), generator=g)
    with torch.no_grad(), moia.intervene(smollm2, moia.DirectionAblation(r, [14], 0.5, "resid_post"), ring):
        smollm2(tokens)
    for got, want in zip(kernel, ring.raw, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-3)
