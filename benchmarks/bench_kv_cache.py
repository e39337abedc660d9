"""The decoding engine's KV cache against Hugging Face's ``DynamicCache``: the cost of the cache updates
of a decode step, apart from everything else a step does.

    pytest benchmarks/bench_kv_cache.py --benchmark-enable -s [--benchmark-json out.json]

SmolLM2-135M's cache shape (30 layers, 3 key-value heads of 64), a prompt already cached, then 32
decode steps of one new position per row; each round times the 32 × 30 ``update`` calls of both
caches, interleaved (``moia.lm.decoding.kv_cache`` reserves the 32 steps ahead, as ``generate_tokens``
does; ``DynamicCache`` concatenates). ``extra_info`` holds the median ratio of the two per round.
Shapes: ``bench_peers.py``'s generation (8 rows, ~70 positions) and the sweep's (32 rows, ~160).
"""

import statistics
import time

import pytest
import torch
from transformers import DynamicCache

from moia.lm.decoding import kv_cache

LAYERS, HEADS, HEAD_DIM, STEPS, ROUNDS = 30, 3, 64, 32, 15


def _steps_ms(cache, rows: int, prompt: int) -> float:
    g = torch.Generator().manual_seed(0)
    for layer in range(LAYERS):
        k = torch.randn(rows, HEADS, prompt, HEAD_DIM, generator=g)
        cache.update(k, k.clone(), layer)
    new = torch.randn(rows, HEADS, 1, HEAD_DIM, generator=g)
    start = time.perf_counter()
    for _ in range(STEPS):
        for layer in range(LAYERS):
            cache.update(new, new, layer)
    return (time.perf_counter() - start) / STEPS * 1e3


@pytest.mark.parametrize("rows,prompt", [(8, 70), (32, 160)])
@torch.no_grad()
def test_cache_updates_per_decode_step(benchmark, rows, prompt):
    ours: list[float] = []
    ratios: list[float] = []
    for _ in range(ROUNDS):
        dynamic = _steps_ms(DynamicCache(), rows, prompt)
        reserved = _steps_ms(kv_cache(headroom=STEPS), rows, prompt)
        ours.append(reserved)
        ratios.append(reserved / dynamic)
    benchmark.pedantic(lambda: _steps_ms(kv_cache(headroom=STEPS), rows, prompt), rounds=1, iterations=1)
    info = {
        "rows": rows,
        "prompt": prompt,
        "reserved_ms_per_step": statistics.median(ours),
        "reserved_over_dynamic_cache": statistics.median(ratios),
        "ratio_range": [min(ratios), max(ratios)],
        "threads": torch.get_num_threads(),
    }
    benchmark.extra_info.update(info)
    print(info)
