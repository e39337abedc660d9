"""The mood ring's cost (PROTOCOL §8): greedy generation with the ring against without it, and the
fused op with a readout against without one.

    pytest benchmarks/bench_moodring.py --benchmark-enable [--benchmark-json out.json]

Each ring figure records its ratio to the figure without the ring measured in the same run
(``extra_info["ratio_vs_plain"]``). Target on CPU: generation with the ring ≤ 1.05× without (SmolLM2,
8 rows × 32 prompt tokens + 32 new tokens, ten directions). The ring's work per forward is one small
matmul at one hook point (x @ Eᵀ: 8×1×576 by 576×10 at a decode step), one Python call and one list
append; its coefficients stay on the device until they are read.
"""

import os

import pytest
import torch
from moia.kernels import intervention_reference

import moia
from moia.lm.decoding import generate_tokens

os.environ.setdefault("HF_HUB_OFFLINE", "1")
CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
DTYPE = torch.bfloat16 if CUDA else torch.float32
BACKENDS = ["hooked", "bridge"]
_plain: dict[tuple, float] = {}


@pytest.fixture(scope="module", params=BACKENDS)
def model(request):
    torch.set_grad_enabled(False)
    return moia.load_model("smollm2-135m-instruct", backend=request.param, dtype=DTYPE, device=DEVICE)


def _sync():
    if CUDA:
        torch.cuda.synchronize()


def _record(benchmark, key, variant):
    mean = benchmark.stats.stats.mean
    if variant == "plain":
        _plain[key] = mean
    elif key in _plain:
        benchmark.extra_info["ratio_vs_plain"] = round(mean / _plain[key], 4)


@pytest.mark.parametrize("variant", ["plain", "ring"])
def test_generate(benchmark, model, variant):
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(100, model.cfg.d_vocab - 100, (8, 32), generator=g).to(DEVICE)
    mask = torch.ones_like(tokens)
    mask[1::2, :5] = 0  # left padding on every other row
    e = torch.randn(10, model.cfg.d_model, generator=g)
    ring = moia.MoodRing(e, layer=model.cfg.n_layers // 2)

    def run():
        generate_tokens(model, tokens, mask, *([ring] if variant == "ring" else []), max_new_tokens=32)
        if variant == "ring":
            ring.raw  # noqa: B018  (gathering the readings is part of the cost)
        _sync()

    benchmark.extra_info.update(backend=type(model).__name__, new_tokens=32, device=DEVICE, directions=10)
    benchmark.pedantic(run, rounds=5, warmup_rounds=1)
    _record(benchmark, ("generate", type(model).__name__), variant)


@pytest.mark.parametrize("shape", [(8, 1, 576), (8, 64, 576)], ids=["decode", "prefill"])
@pytest.mark.parametrize("variant", ["plain", "readout"])
def test_op_with_ablation(benchmark, shape, variant):
    """The twin with an ablation (k = 1) with and without ten read-only directions beside it."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=g).to(DEVICE)
    r = torch.nn.functional.normalize(torch.randn(1, shape[-1], generator=g), dim=-1).to(DEVICE)
    e = torch.nn.functional.normalize(torch.randn(10, shape[-1], generator=g), dim=-1).to(DEVICE)
    coeffs = torch.empty(*shape[:2], 10, device=DEVICE)
    kwargs = {"readout": e, "coeffs": coeffs} if variant == "readout" else {}
    benchmark.extra_info.update(shape=list(shape), device=DEVICE)
    benchmark(lambda: intervention_reference(x, r, **kwargs))
    _record(benchmark, ("op", shape), variant)
