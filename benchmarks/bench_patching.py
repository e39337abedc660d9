"""Activation patching: ``moia.patching.sweep`` against ``transformer_lens.patching``, same grid, same values.

    pytest benchmarks/bench_patching.py --benchmark-enable -s [--benchmark-json out.json]
    MOIA_BENCH_BACKEND=bridge pytest benchmarks/bench_patching.py ...   # TransformerBridge

The resid_pre sweep (every layer × every position) of a 16-token indirect-object pair on
SmolLM2-135M-Instruct (PROTOCOL §9), metric the logit difference " Mary" − " John" at the last
position. Both start from the clean tokens: TransformerLens runs ``run_with_cache`` and
``get_act_patch_resid_pre`` (one batch-1 forward with one Python hook per cell: 30 × 16 = 480);
moia runs ``sweep`` (one clean forward, then the cells as batch rows, each row patching its own
cell through the fused op, each batch starting at its lowest layer). ``extra_info`` holds both
times and their ratio; the two grids must agree to 1e-4. Target: moia ≥ 5× faster on CPU.
On a GPU (``gpu_check.sh``) the model runs in fp32 on CUDA and the same ratio is recorded.
"""

import os
import time

import pytest
import torch
from transformer_lens import patching as tlp

import moia

os.environ.setdefault("HF_HUB_OFFLINE", "1")
BACKEND = os.environ.get("MOIA_BENCH_BACKEND", "hooked")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
CLEAN = "When John and Mary went to the shops in town, John gave a drink to"
CORRUPTED = "When John and Mary went to the shops in town, Mary gave a drink to"


@pytest.fixture(scope="module")
def model():
    torch.set_grad_enabled(False)
    return moia.load_model("smollm2-135m-instruct", backend=BACKEND, device=DEVICE)


def _timed(fn):
    if DEVICE == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if DEVICE == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def test_resid_pre_sweep_vs_transformer_lens(benchmark, model):
    clean, corrupted = model.to_tokens(CLEAN), model.to_tokens(CORRUPTED)
    assert clean.shape == corrupted.shape == (1, 16)
    mary, john = model.to_single_token(" Mary"), model.to_single_token(" John")

    def metric(logits: torch.Tensor) -> torch.Tensor:  # one value per patched run
        return logits[:, -1, mary] - logits[:, -1, john]

    def tl_metric(logits: torch.Tensor) -> torch.Tensor:  # TransformerLens' kind: a scalar
        return metric(logits).mean()

    def ours():
        return moia.patching.sweep(model, corrupted, clean, metric, site="resid_pre")

    def theirs():
        _, cache = model.run_with_cache(clean)
        return tlp.get_act_patch_resid_pre(model, corrupted, cache, tl_metric)

    ours()  # warm up (first-call allocations, kernel compilation on a GPU)
    if benchmark.enabled:
        result = benchmark.pedantic(ours, rounds=1, iterations=1)
        t_ours = benchmark.stats.stats.mean
    else:
        result, t_ours = _timed(ours)
    expected, t_tl = _timed(theirs)
    assert result.shape == expected.shape == (model.cfg.n_layers, 16)
    torch.testing.assert_close(result, expected, atol=1e-4, rtol=0)
    info = {
        "moia_s": t_ours,
        "transformer_lens_s": t_tl,
        "speedup": t_tl / t_ours,
        "cells": result.numel(),
        "batch_size": moia.patching.default_batch_size(model, 1, 16),
        "backend": BACKEND,
        "device": DEVICE,
        "threads": torch.get_num_threads(),
        "max_abs_diff": float((result - expected).abs().max()),
    }
    benchmark.extra_info.update(info)
    print(info)
