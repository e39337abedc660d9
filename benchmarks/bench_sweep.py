"""Sweep throughput: trials/s of one batched call against one trial at a time, same trials, same replies.

    pytest benchmarks/bench_sweep.py --benchmark-enable -s [--benchmark-json out.json]
    MOIA_BENCH_BACKEND=hooked pytest benchmarks/bench_sweep.py ...   # HookedTransformer

The default backend is ``moia reproduce``'s: the TransformerBridge, whose generation runs on its
native twin (HF modules with torch hooks, ``moia.lm.native``); ``hooked`` measures the
TransformerLens path.

32 injected-thought trials of SmolLM2-135M (concept and random vectors at two layers and two
strengths, controls, forced trials; trial numbers 1..4) with 16 new tokens each:

- ``batched``: ``TrialRunner.generate`` of all 32 in one call, as ``run_sweep`` does: per-row
  injections, and the prompt prefix every trial shares (the ~120 tokens before "Trial n") run
  once (``moia.lm.decoding``);
- ``batched, no shared prefix``: the same call through ``generate_tokens`` (left-padded prompts);
- ``one at a time``: ``generate_tokens`` per trial, the full prompt each time ([MOIA]'s code does
  this), timed on the first ``N_SOLO`` trials (the per-trial cost is the same for every trial).

``extra_info`` holds trials/s of each and the ratios; the replies of the trials run alone must
equal the batched ones. Target: batched ≥ 10× one at a time on CPU. On a CPU the prompt forward
is compute-bound, so batching alone speeds up the decode steps, not the prompt; the shared
prefix removes ~80% of the prompt work.
"""

import os
import time

import pytest
import torch

from moia.directions.concepts import ConceptVectors
from moia.experiment.run import SweepRows
from moia.experiment.sweep import Sweep, TrialSpec
from moia.lm.native import execution_model
from moia.trials.runner import TrialRunner

os.environ.setdefault("HF_HUB_OFFLINE", "1")
BATCH, N_SOLO = 32, 8
NEW_TOKENS = int(os.environ.get("MOIA_BENCH_NEW_TOKENS", "16"))
BACKEND = os.environ.get("MOIA_BENCH_BACKEND", "bridge")
LAYERS, STRENGTHS, WORDS = (12, 18), (4.0, 8.0), ("Dust", "Oceans")


@pytest.fixture(scope="module")
def model():
    import moia

    torch.set_grad_enabled(False)
    return moia.load_model("smollm2-135m-instruct", backend=BACKEND)


def _vectors(model) -> ConceptVectors:
    g = torch.Generator().manual_seed(0)
    v = torch.randn(len(WORDS), len(LAYERS), model.cfg.d_model, generator=g)
    v = v / v.norm(dim=-1, keepdim=True) * 12.0  # about the norm of SmolLM2's concept vectors
    return ConceptVectors(list(WORDS), list(LAYERS), v, "smollm2-135m-instruct", model.cfg.n_layers, {})


def _trials() -> list[TrialSpec]:
    specs = [
        TrialSpec("baseline", kind, word, layer, strength, trial, 0, forced)
        for kind, forced in (("concept", False), ("random", False), ("concept", True))
        for word in WORDS
        for layer in LAYERS
        for strength in STRENGTHS
        for trial in (1, 2)
    ]  # 48
    controls = [TrialSpec("baseline", "control", None, None, 0.0, t, 0, False) for t in (1, 2, 3, 4)]
    mixed = [s for pair in zip(specs[:24], specs[24:], strict=True) for s in pair]  # kinds interleaved
    return (controls + mixed)[:BATCH]


def _timed(fn, cpu: list[float] | None = None):
    """fn's result and wall seconds; its process CPU seconds appended to ``cpu``."""
    start, start_cpu = time.perf_counter(), time.process_time()
    out = fn()
    if cpu is not None:
        cpu.append(time.process_time() - start_cpu)
    return out, time.perf_counter() - start


def test_batched_sweep_vs_one_trial_at_a_time(benchmark, model):
    rows = SweepRows(model, _vectors(model), Sweep(list(WORDS), list(LAYERS), list(STRENGTHS)))
    specs = [rows.row(s) for s in _trials()]
    shared = TrialRunner(model, max_new_tokens=NEW_TOKENS)
    plain = TrialRunner(model, max_new_tokens=NEW_TOKENS, shared_prefix=False)
    plain.generate(specs[:1])  # warm up
    cpu: list[float] = []  # CPU seconds of batched, no shared prefix, one at a time
    batched = benchmark.pedantic(
        lambda: _timed(lambda: shared.generate(specs), cpu)[0], rounds=1, iterations=1
    )
    if benchmark.stats is not None:
        t_batched = benchmark.stats.stats.mean
    else:  # --benchmark-disable: time it here
        cpu.clear()
        batched, t_batched = _timed(lambda: shared.generate(specs), cpu)
    no_prefix, t_no_prefix = _timed(lambda: plain.generate(specs), cpu)
    solo, t_solo = _timed(lambda: [plain.generate([s])[0] for s in specs[:N_SOLO]], cpu)
    assert solo == batched[:N_SOLO] == no_prefix[:N_SOLO]
    assert no_prefix == batched
    rates = {
        "batched": BATCH / t_batched,
        "batched_no_shared_prefix": BATCH / t_no_prefix,
        "one_at_a_time": N_SOLO / t_solo,
    }
    info = {
        "trials_per_s": rates,
        "ratio_batched_vs_one_at_a_time": rates["batched"] / rates["one_at_a_time"],
        "ratio_no_shared_prefix_vs_one_at_a_time": rates["batched_no_shared_prefix"] / rates["one_at_a_time"],
        # the same ratio from process CPU time: on a shared machine, load changes wall time between
        # the three runs (timed one after the other), CPU time much less
        "cpu_ratio_batched_vs_one_at_a_time": (cpu[2] / N_SOLO) / (cpu[0] / BATCH),
        "cpu_ratio_no_shared_prefix_vs_one_at_a_time": (cpu[2] / N_SOLO) / (cpu[1] / BATCH),
        "backend": BACKEND,
        "runs_on": type(execution_model(model)).__name__,
        "batch": BATCH,
        "new_tokens": NEW_TOKENS,
        "threads": torch.get_num_threads(),
    }
    benchmark.extra_info.update(info)
    print(info)
