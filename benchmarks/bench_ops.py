"""Hook-op benchmarks: fused kernel vs torch twin vs naive TransformerLens-style chain vs a copy.

The op is the one a MoIA hook runs: ablate k = 1 direction, add a bias, inject a vector from a
per-row start. Each figure records achieved bandwidth (2 × bytes of x / mean time: the op reads x
and writes a tensor of the same size at best) and its time relative to ``x.clone()`` measured on the
same tensor in the same run -- the copy is the floor a bandwidth-bound op can reach. On CUDA it also
records the fraction of the card's peak bandwidth.

    pytest benchmarks/bench_ops.py --benchmark-enable [--benchmark-json out.json]

On CPU, glibc's allocator hands tensors over ~128 KB back to the kernel when they are freed, so an op
that makes several new temporaries of a 1 MB activation pays page faults for each (on this machine
that, not arithmetic, made the naive chains 10–50× slower than the twin at 8×64×576). To time the
arithmetic alone, run with ``MALLOC_MMAP_THRESHOLD_=67108864 MALLOC_TRIM_THRESHOLD_=1073741824``.

Decode shapes (8×1×d) are launch-bound: there the numbers measure per-call hook overhead. On CPU
the kernel variant is skipped (it needs CUDA), and so are the two large GPU shapes.
"""

import functools
from collections.abc import Callable

import pytest
import torch
import torch.utils.benchmark as tb
from moia.kernels import intervention_naive, intervention_reference

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
DTYPE = torch.bfloat16 if CUDA else torch.float32  # what models run in on each
GPU_ONLY = pytest.mark.skipif(not CUDA, reason="GPU-sized shape")

SHAPES = [
    pytest.param((8, 1, 576), id="decode-8x1x576"),
    pytest.param((8, 1, 4096), id="decode-8x1x4096"),
    pytest.param((8, 64, 576), id="prefill-8x64x576"),
    pytest.param((8, 2048, 4096), id="prefill-8x2048x4096", marks=GPU_ONLY),
    pytest.param((8, 2048, 5376), id="prefill-8x2048x5376", marks=GPU_ONLY),
]
_copy_seconds: dict[tuple, float] = {}


def _inputs(shape: tuple[int, int, int]) -> dict[str, torch.Tensor]:
    batch, pos, d_model = shape
    g = torch.Generator().manual_seed(0)
    r = torch.randn(1, d_model, generator=g)
    return {
        "x": torch.randn(shape, generator=g).to(DEVICE, DTYPE),
        "directions": (r / r.norm()).to(DEVICE, DTYPE),
        "bias": torch.randn(d_model, generator=g).to(DEVICE, DTYPE),
        "vectors": torch.randn(batch, d_model, generator=g).to(DEVICE, DTYPE),
        "strengths": torch.rand(batch, generator=g).to(DEVICE, DTYPE),
        "starts": torch.randint(0, pos, (batch,), generator=g).to(DEVICE),
    }


def _synced(fn: Callable[[], object]) -> Callable[[], None]:
    if not CUDA:
        return fn

    def run() -> None:
        fn()
        torch.cuda.synchronize()

    return run


def _copy_time(x: torch.Tensor) -> float:
    """Mean seconds of x.clone() (with the same sync as the variants), once per shape and run."""
    key = (tuple(x.shape), x.dtype, x.device.type)
    if key not in _copy_seconds:
        run = _synced(x.clone)
        run()
        timer = tb.Timer("run()", globals={"run": run}, num_threads=torch.get_num_threads())
        _copy_seconds[key] = timer.blocked_autorange(min_run_time=0.5).mean
    return _copy_seconds[key]


def _peak_bytes_per_s() -> float | None:
    """The card's peak memory bandwidth from its clock and bus width, when torch reports them."""
    if not CUDA:
        return None
    props = torch.cuda.get_device_properties(0)
    clock_khz = getattr(props, "memory_clock_rate", None)
    bus_bits = getattr(props, "memory_bus_width", None)
    if not clock_khz or not bus_bits:
        return None
    return 2 * clock_khz * 1e3 * bus_bits / 8  # double data rate


def _op(variant: str) -> Callable[..., torch.Tensor]:
    if variant == "kernel":
        if not CUDA:
            pytest.skip("the Triton kernel needs CUDA (TRITON_INTERPRET timings mean nothing)")
        from moia.kernels.triton_intervention import triton_intervention

        return triton_intervention
    if variant == "copy":
        return lambda x, **_: x.clone()
    return {"twin": intervention_reference, "naive": intervention_naive}[variant]


@pytest.mark.parametrize("variant", ["kernel", "twin", "naive", "copy"])
@pytest.mark.parametrize("shape", SHAPES)
def test_intervention_op(benchmark, shape: tuple[int, int, int], variant: str) -> None:
    op = _op(variant)
    inputs = _inputs(shape)
    run = _synced(lambda: op(**inputs))
    run()  # compile / warm up
    benchmark(run)
    if benchmark.stats is None:  # --benchmark-disable: ran once, nothing to report
        return
    mean = benchmark.stats.stats.mean
    x = inputs["x"]
    bytes_moved = 2 * x.numel() * x.element_size()
    benchmark.extra_info.update(
        device=DEVICE,
        dtype=str(DTYPE),
        gb_per_s=bytes_moved / mean / 1e9,
        time_vs_copy=mean / _copy_time(x),
    )
    peak = _peak_bytes_per_s()
    if peak is not None:
        benchmark.extra_info["fraction_of_peak_bandwidth"] = bytes_moved / mean / peak


def user_chain(x, directions, bias, vectors, strengths, starts, weights=None):
    """The op as a user writes it in one TransformerLens hook: ``x @ r`` for the coefficient (a
    matrix-vector product), not ``intervention_naive``'s elementwise product and sum over a
    per-row copy of r."""
    r = directions[0]
    mask = (torch.arange(x.shape[1], device=x.device)[None, :] >= starts[:, None])[..., None]
    return x - (x @ r)[..., None] * r + bias + mask * (strengths[:, None] * vectors)[:, None, :]


def prepared_twin(inputs: dict[str, torch.Tensor]) -> Callable[..., torch.Tensor]:
    """The twin as a hook runs it: operands prepared once (``prepare_intervention``, as
    ``SiteHook`` does when ``intervene`` is entered), then ``apply_prepared`` per call."""
    from moia.kernels.reference import apply_prepared, prepare_intervention

    p = prepare_intervention(
        inputs["directions"], None, inputs["bias"], inputs["vectors"], inputs["strengths"]
    )
    return lambda x, starts, **_: apply_prepared(x, p, starts)


@functools.cache
def compiled_twin() -> Callable[..., torch.Tensor] | None:
    """``torch.compile`` of the twin (one graph per shape, built on first use and kept for the run),
    or None where inductor cannot build it (no C++ compiler on a CPU machine)."""
    compiled = torch.compile(intervention_reference, dynamic=False)
    try:
        compiled(**_inputs((2, 3, 8)))
    except Exception:  # noqa: BLE001 -- inductor's errors are many; the variant is then skipped
        return None
    return compiled


def interleaved_medians(shape: tuple[int, int, int], rounds: int = 200, inner: int = 20) -> dict[str, float]:
    """Median seconds per call of twin, naive chain, user chain, copy and ``torch.compile`` of the
    twin (where it builds) on one shape, timed in interleaved rounds (every round runs each variant
    ``inner`` times, in a fresh random order), so that load on a shared machine falls on all of them
    alike."""
    import random
    import statistics
    import time

    inputs = _inputs(shape)
    ops = {v: _op(v) for v in ("twin", "naive", "copy")}
    ops["user"] = user_chain
    ops["prepared"] = prepared_twin(inputs)
    if (compiled := compiled_twin()) is not None:
        ops["compiled"] = compiled
    runs = {v: _synced(lambda op=op: op(**inputs)) for v, op in ops.items()}
    times: dict[str, list[float]] = {v: [] for v in runs}
    for run in runs.values():
        run()
    for _ in range(rounds):
        for name in random.sample(list(runs), len(runs)):
            t = time.perf_counter()
            for _ in range(inner):
                runs[name]()
            times[name].append((time.perf_counter() - t) / inner)
    return {v: statistics.median(ts) for v, ts in times.items()}


@pytest.mark.parametrize("shape", SHAPES)
def test_op_interleaved(benchmark, shape: tuple[int, int, int]) -> None:
    """Twin vs naive chain vs user chain vs copy vs compiled twin, interleaved (``extra_info``:
    medians, ratios); the ops must agree."""
    inputs = _inputs(shape)
    twin = intervention_reference(**inputs)
    others = [intervention_naive(**inputs), user_chain(**inputs), prepared_twin(inputs)(**inputs)]
    if (compiled := compiled_twin()) is not None:
        others.append(compiled(**inputs))
    for other in others:
        assert (other - twin).abs().max() <= 1e-3 * twin.abs().max()
    medians = interleaved_medians(shape)
    benchmark.extra_info.update(
        {f"{v}_us": round(s * 1e6, 2) for v, s in medians.items()},
        naive_over_twin=medians["naive"] / medians["twin"],
        user_over_twin=medians["user"] / medians["twin"],
        twin_over_copy=medians["twin"] / medians["copy"],
        compiled_over_twin=medians["compiled"] / medians["twin"] if "compiled" in medians else None,
        prepared_over_twin=medians["prepared"] / medians["twin"],
        threads=torch.get_num_threads(),
    )
    print(shape, {k: round(v * 1e6, 1) for k, v in medians.items()})
    benchmark.pedantic(lambda: None, rounds=1)
