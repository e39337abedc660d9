"""The cost of entering (and leaving) ``moia.intervene``, per backend, on SmolLM2.

    pytest benchmarks/bench_intervene.py --benchmark-enable [--benchmark-json out.json]

The interventions are those of ``bench_peers.py``'s ``generate`` task: [ARDITI]'s ablation at every
writer of every layer + a bias + a per-row injection (PROTOCOL §2, §4): 62 hook points on SmolLM2
(30 layers × 2 writers, the embedding, the bias and injection layers). Each round compiles them
(one ``SiteHook`` per hook point, the shared ablation stacked once) and adds and removes every
hook, as every ``moia.generate`` call does. Hook-name resolution is cached per model, so the first
entry (timed once, ``extra_info["first_entry_s"]``) pays for it and later ones do not.

Baseline, in the same run: adding and removing 62 plain forward hooks on the HF model's modules
(``register_forward_hook`` + ``handle.remove()``), the least a hook library can do.
Target: entering ``intervene`` ≤ 5 ms.
"""

import os
import time
from typing import Any

import pytest
import torch

import moia
from moia.core.compile import compile_hooks

os.environ.setdefault("HF_HUB_OFFLINE", "1")
NAME, L_BIAS, L_INJECT = "smollm2-135m-instruct", 13, 15
_baseline: list[float] = []


def _interventions(d: int) -> tuple:
    g = torch.Generator().manual_seed(0)
    r = torch.randn(d, generator=g)
    return (
        moia.DirectionAblation(r / r.norm()),
        moia.AdditiveVector(torch.randn(d, generator=g), L_BIAS),
        moia.ConceptInjection(
            torch.randn(8, d, generator=g), L_INJECT, torch.ones(8), torch.zeros(8, dtype=int)
        ),
    )


@pytest.fixture(scope="module", params=["hf", "bridge", "hooked"])
def model(request: Any) -> Any:
    torch.set_grad_enabled(False)
    return moia.load_model(NAME, backend=request.param)


def test_plain_hooks(benchmark: Any) -> None:
    """The baseline: 62 plain forward hooks added and removed on the HF model."""
    hf = moia.load_model(NAME, backend="hf").original_model
    layers = hf.model.layers
    modules = [hf.model.embed_tokens, layers[L_BIAS], layers[L_INJECT]]
    modules += [m for layer in layers for m in (layer.self_attn.o_proj, layer.mlp)]

    def hook(module: Any, args: Any, output: Any) -> Any:
        return output

    def run() -> None:
        handles = [m.register_forward_hook(hook) for m in modules]
        for h in handles:
            h.remove()

    benchmark.pedantic(run, rounds=200, warmup_rounds=5)
    benchmark.extra_info["hooks"] = len(modules)
    _baseline.append(benchmark.stats.stats.median)


def test_enter_intervene(benchmark: Any, model: Any) -> None:
    ivs = _interventions(model.cfg.d_model)

    def run() -> None:
        with moia.intervene(model, *ivs):
            pass

    t = time.perf_counter()
    run()  # the first entry resolves and caches the hook names
    benchmark.extra_info["first_entry_s"] = time.perf_counter() - t
    benchmark.pedantic(run, rounds=50, warmup_rounds=2)
    hooks, _ = compile_hooks(model, ivs)
    benchmark.extra_info.update(backend=type(model).__name__, hooks=len(hooks))
    if _baseline:
        benchmark.extra_info["median_vs_plain_hooks"] = benchmark.stats.stats.median / _baseline[0]
