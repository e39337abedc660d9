"""Model-level overhead: forward and greedy generation of the default models with refusal ablation at
every layer (site "writers") + a bias + a per-row injection, against no hooks and against naive
TransformerLens-style Python hooks doing the same thing op by op.

    pytest benchmarks/bench_model.py --benchmark-enable [--benchmark-json out.json]

Each hooked figure records its ratio to the un-hooked figure measured in the same run
(``extra_info["ratio_vs_plain"]``). Targets: fused hooks ≤ 1.02× un-hooked on CPU (SmolLM2, 8×64),
≤ 1.05× on GPU.
"""

import os

import pytest
import torch

import moia
from moia.lm.decoding import generate_tokens

os.environ.setdefault("HF_HUB_OFFLINE", "1")
CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
DTYPE = torch.bfloat16 if CUDA else torch.float32
MODELS = ["smollm2-135m-instruct"] + (["gemma-3-270m"] if CUDA or os.environ.get("MOIA_BENCH_GEMMA") else [])
_plain: dict[tuple, float] = {}


@pytest.fixture(scope="module", params=MODELS)
def model(request):
    torch.set_grad_enabled(False)
    return moia.load_model(request.param, backend="hooked", dtype=DTYPE, device=DEVICE)


def _setup(model, batch=8, pos=64):
    g = torch.Generator().manual_seed(0)
    d = model.cfg.d_model
    tokens = torch.randint(100, model.cfg.d_vocab - 100, (batch, pos), generator=g).to(DEVICE)
    r = torch.randn(d, generator=g)
    r = r / r.norm()
    bias = torch.randn(d, generator=g) * 0.1
    vectors = torch.randn(batch, d, generator=g)
    strengths = torch.linspace(0, 4, batch)
    starts = torch.randint(0, pos // 2, (batch,), generator=g)
    layer = model.cfg.n_layers // 2
    fused = (
        moia.DirectionAblation(r),
        moia.AdditiveVector(bias, layer - 2),
        moia.ConceptInjection(vectors, layer, strengths, starts),
    )
    return tokens, fused, _naive_hooks(model, r, bias, vectors, strengths, starts, layer)


def _naive_hooks(model, r, bias, vectors, strengths, starts, layer):
    """What a TransformerLens user writes: one Python hook per op, re-casting every call."""

    def ablate(x, hook):
        rr = r.to(x.device, x.dtype)
        return x - (x @ rr)[..., None] * rr

    def add(x, hook):
        return x + bias.to(x.device, x.dtype)

    def inject(x, hook):
        pos = torch.arange(x.shape[1], device=x.device)
        mask = (pos[None, :] >= starts.to(x.device)[:, None]).to(x.dtype)[..., None]
        return x + mask * (strengths[:, None] * vectors).to(x.device, x.dtype)[:, None, :]

    hooks = [("blocks.0.hook_resid_pre", ablate)]
    for i in range(model.cfg.n_layers):
        hooks += [(f"blocks.{i}.hook_attn_out", ablate), (f"blocks.{i}.hook_mlp_out", ablate)]
    hooks += [(f"blocks.{layer - 2}.hook_resid_post", add), (f"blocks.{layer}.hook_resid_post", inject)]
    return hooks


def _sync():
    if CUDA:
        torch.cuda.synchronize()


def _record(benchmark, key):
    mean = benchmark.stats.stats.mean
    if key[-1] == "plain":
        _plain[key[:-1]] = mean
    elif key[:-1] in _plain:
        benchmark.extra_info["ratio_vs_plain"] = round(mean / _plain[key[:-1]], 4)


@pytest.mark.parametrize("variant", ["plain", "fused", "naive"])
def test_forward(benchmark, model, variant):
    tokens, fused, naive = _setup(model)
    hooks = {"plain": [], "fused": moia.fwd_hooks(model, *fused), "naive": naive}[variant]

    def run():
        with model.hooks(fwd_hooks=hooks):
            model(tokens)
        _sync()

    benchmark.extra_info.update(model=model.moia_name, shape=list(tokens.shape), device=DEVICE)
    benchmark.pedantic(run, rounds=8, warmup_rounds=2)
    _record(benchmark, (model.moia_name, "forward", variant))


@pytest.mark.parametrize("variant", ["plain", "fused"])
def test_generate(benchmark, model, variant):
    tokens, fused, _ = _setup(model, batch=8, pos=32)
    mask = torch.ones_like(tokens)
    interventions = fused if variant == "fused" else ()

    def run():
        generate_tokens(model, tokens, mask, *interventions, max_new_tokens=16)
        _sync()

    benchmark.extra_info.update(model=model.moia_name, new_tokens=16, device=DEVICE)
    benchmark.pedantic(run, rounds=3, warmup_rounds=1)
    _record(benchmark, (model.moia_name, "generate", variant))
