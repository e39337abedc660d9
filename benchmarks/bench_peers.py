"""moia against the tools a user would pick instead, in one run with interleaved rounds, on SmolLM2.

    pytest benchmarks/bench_peers.py --benchmark-enable -s      # or: python benchmarks/bench_peers.py
    MOIA_BENCH_THREADS=1 MOIA_BENCH_ROUNDS=5 ...                # torch threads, rounds per task
    MOIA_BENCH_ONLY="native" python benchmarks/bench_peers.py generate   # variants naming "native"

Three tasks, each a set of variants timed in rounds (every round runs every variant once, in a fresh
random order, so that load on a shared machine falls on all of them alike); the table gives medians
of wall time and of process CPU time, each as a ratio to the task's baseline, and the median (with
the lowest and highest) of the per-round CPU-time ratios, which compare runs seconds apart:

- ``steer``: HF ``generate``, 8 chat prompts (left-padded, ~30 tokens) + 32 new greedy tokens, one
  additive vector at every position of one layer. Baseline: HF ``generate`` without hooks. Peers:
  one plain HF forward hook, steering-vectors (``min_token_index=0``), nnsight (``tracer.iter``),
  moia (native path, bridge, HookedTransformer).
- ``generate``: the same prompts, with [ARDITI]'s ablation at every writer of every layer + a bias
  + a per-row injection from per-row starts (PROTOCOL §2, §4). Baseline: HF ``generate`` with one
  plain hook (the issue's target: moia.generate ≤ 1.05× it). Peers: the same three interventions
  as plain HF hooks; moia on its three paths.
- ``forward``: one forward of 8×64 tokens with the same three interventions. Baseline: the HF
  forward without hooks (target: ≤ 1.05×). Peers: plain HF hooks, nnsight, moia on its three paths.

Correctness is checked in the same run: every variant's tokens (or logits, to 1e-3) must equal the
plain-HF-hooks reference of its task, so a fast wrong answer cannot win. A peer that is not installed
(``pip install moia[bench]``; steering-vectors apart, ``pip install --no-deps steering-vectors``) is
skipped with the reason.
"""

import importlib.util
import os
import random
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch

import moia
from moia.lm.chat import format_chat
from moia.lm.decoding import generate_tokens, tokenize_prompts
from moia.lm.loading import load_hf

NAME, L_BIAS, L_INJECT, NEW = "smollm2-135m-instruct", 13, 15, 32
PROMPTS = [
    "Write a short story about a lighthouse keeper.",
    "Explain how a bicycle gear works.",
    "Describe a walk through a forest in autumn.",
    "Tell me about the history of the printing press.",
    "Write a poem about the sea.",
    "What should I pack for a week of hiking in the mountains?",
    "Explain photosynthesis to a child.",
    "Describe your favourite city and why you like it.",
]


def _peer(module: str) -> str | None:
    """None if ``module`` is importable, else why it is skipped."""
    if importlib.util.find_spec(module) is None:
        how = (
            "pip install --no-deps steering-vectors"
            if module == "steering_vectors"
            else "pip install moia[bench]"
        )
        return f"{module} not installed ({how})"
    try:
        importlib.import_module(module)
    except ImportError as e:  # installed with --no-deps, a dependency missing (steering-vectors: sklearn)
        return f"{module} does not import: {e} (pip install moia[bench])"
    return None


class Setup:
    """The models (sharing one HF copy where a tool only adds hooks) and the task inputs."""

    def __init__(self) -> None:
        torch.set_grad_enabled(False)
        self.native = moia.load_model(NAME, backend="hf")
        self.hf, self.tok = self.native.original_model, self.native.tokenizer
        self.bridge = moia.load_model(NAME, backend="bridge")
        self.hooked = moia.load_model(NAME, backend="hooked")
        d = self.native.cfg.d_model
        g = torch.Generator().manual_seed(0)
        r = torch.randn(d, generator=g)
        self.r = r / r.norm()
        self.v = torch.randn(d, generator=g) * 0.5  # the steering vector and the bias
        self.vectors = torch.randn(8, d, generator=g) * 2.0
        self.strengths = torch.linspace(0.0, 4.0, 8)
        self.starts = torch.randint(3, 12, (8,), generator=g)
        self.tokens, self.mask = tokenize_prompts(self.native, [format_chat(self.native, p) for p in PROMPTS])
        self.pad = (self.mask == 0).sum(-1)
        self.forward_tokens = torch.randint(100, 40000, (8, 64), generator=g)

    def interventions(self) -> tuple:
        return (
            moia.DirectionAblation(self.r),
            moia.AdditiveVector(self.v, L_BIAS),
            moia.ConceptInjection(self.vectors, L_INJECT, self.strengths, self.starts),
        )

    # ------------------------------------------------------------- plain HF hooks, as users write them
    def plain_hooks(self, hf: Any, full: bool, pad: torch.Tensor | None = None) -> list:
        """Hooks on ``hf``'s modules: the bias alone, or (full) ablation + bias + injection."""
        layers, r, v = hf.model.layers, self.r, self.v

        def proj(x):
            return x - (x @ r)[..., None] * r

        handles = [layers[L_BIAS].register_forward_hook(lambda m, i, o: o + v)]
        if not full:
            return handles
        handles.append(hf.model.embed_tokens.register_forward_hook(lambda m, i, o: proj(o)))  # = resid_pre 0
        for layer in layers:
            handles.append(layer.self_attn.o_proj.register_forward_hook(lambda m, i, o: proj(o)))
            handles.append(layer.mlp.register_forward_hook(lambda m, i, o: proj(o)))
        sv = (self.strengths[:, None] * self.vectors)[:, None, :]
        first = self.starts + (0 if pad is None else pad)

        def inject(m, i, o):
            if o.shape[1] == 1:  # a decode step: every row is past its start
                return o + sv
            return o + (torch.arange(o.shape[1])[None, :, None] >= first[:, None, None]) * sv

        handles.append(layers[L_INJECT].register_forward_hook(inject))
        return handles


def _hf_generate(s: Setup, model: Any, **kw: Any) -> list[list[int]]:
    out = model.generate(input_ids=s.tokens, attention_mask=s.mask, max_new_tokens=NEW, do_sample=False, **kw)
    return _rows(s, out[:, s.tokens.shape[1] :])


def _rows(s: Setup, ids: torch.Tensor) -> list[list[int]]:
    """Each row's new tokens up to (not including) its first stop token, as moia returns them."""
    from moia.lm.chat import stop_token_ids

    stops, rows = set(stop_token_ids(s.tok)), []
    for row in ids.tolist():
        cut = next((i for i, t in enumerate(row) if t in stops), len(row))
        rows.append(row[:cut])
    return rows


def _with_hooks(handles_fn: Callable[[], list], run: Callable[[], Any]) -> Any:
    handles = handles_fn()
    try:
        return run()
    finally:
        for h in handles:
            h.remove()


def _nnsight_model(s: Setup) -> Any:
    from nnsight import TransformersModel

    hf, tok = load_hf(NAME)  # its own copy: nnsight wraps the modules it traces
    return TransformersModel(hf, tokenizer=tok)


def _moia_paths(s: Setup) -> list[tuple[str, Any]]:
    """moia's three execution paths. The native one is what ``moia.generate`` runs a bridge (or a
    ``backend='hf'`` model) on by default; the bridge is timed with ``native=False`` (its
    TransformerLens hook points), the HookedTransformer on its own forward."""
    return [("native", s.native), ("bridge, TL hooks", s.bridge), ("hooked", s.hooked)]


def steer_variants(s: Setup) -> tuple[dict[str, Callable[[], Any]], dict[str, str]]:
    """The ``steer`` task: one additive vector at layer L_BIAS during generation."""
    hf, skipped = s.hf, {}
    steer = moia.AdditiveVector(s.v, L_BIAS)
    runs: dict[str, Callable[[], Any]] = {
        "HF generate": lambda: _hf_generate(s, hf),
        "HF generate + one plain hook": lambda: _with_hooks(
            lambda: s.plain_hooks(hf, False), lambda: _hf_generate(s, hf)
        ),
    }
    if (why := _peer("steering_vectors")) is None:
        from steering_vectors import SteeringVector

        vector = SteeringVector({L_BIAS: s.v}, layer_type="decoder_block")

        def sv_run() -> Any:
            with vector.apply(hf, min_token_index=0):
                return _hf_generate(s, hf)

        runs["steering-vectors"] = sv_run
    else:
        skipped["steering-vectors"] = why
    if (why := _peer("nnsight")) is None:
        nn_model = _nnsight_model(s)

        def nn_run() -> Any:
            kw = dict(max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False)
            with nn_model.generate(input_ids=s.tokens, attention_mask=s.mask, **kw) as tracer:
                for _ in tracer.iter[:NEW]:
                    nn_model.model.layers[L_BIAS].output = nn_model.model.layers[L_BIAS].output + s.v
                ids = tracer.result.save()
            return _rows(s, ids[:, s.tokens.shape[1] :])

        runs["nnsight"] = nn_run
    else:
        skipped["nnsight"] = why
    for label, model in _moia_paths(s):
        runs[f"moia ({label})"] = lambda m=model: generate_tokens(
            m, s.tokens, s.mask, steer, max_new_tokens=NEW, native=m is s.native
        )
    return runs, skipped


def generate_variants(s: Setup) -> tuple[dict[str, Callable[[], Any]], dict[str, str]]:
    """The ``generate`` task: ablation + bias + injection; baseline HF generate + one plain hook."""
    hf = s.hf
    runs: dict[str, Callable[[], Any]] = {
        "HF generate + one plain hook": lambda: _with_hooks(
            lambda: s.plain_hooks(hf, False), lambda: _hf_generate(s, hf)
        ),
        "HF generate + plain hooks (same 3)": lambda: _with_hooks(
            lambda: s.plain_hooks(hf, True, s.pad), lambda: _hf_generate(s, hf)
        ),
    }
    for label, model in _moia_paths(s):
        runs[f"moia.generate ({label})"] = lambda m=model: generate_tokens(
            m, s.tokens, s.mask, *s.interventions(), max_new_tokens=NEW, native=m is s.native
        )
    return runs, {"nnsight, steering-vectors": "not run here: see the steer task (one vector)"}


def forward_variants(s: Setup) -> tuple[dict[str, Callable[[], Any]], dict[str, str]]:
    """The ``forward`` task: 8×64 tokens, ablation + bias + injection; baseline HF without hooks."""
    hf, x, skipped = s.hf, s.forward_tokens, {}
    runs: dict[str, Callable[[], Any]] = {
        "HF forward": lambda: hf(input_ids=x, use_cache=False).logits,
        "HF + plain hooks (same 3)": lambda: _with_hooks(
            lambda: s.plain_hooks(hf, True), lambda: hf(input_ids=x, use_cache=False).logits
        ),
    }
    if (why := _peer("nnsight")) is None:
        nn_model = _nnsight_model(s)
        r, sv = s.r, (s.strengths[:, None] * s.vectors)[:, None, :]
        mask = torch.arange(x.shape[1])[None, :, None] >= s.starts[:, None, None]

        def nn_run() -> Any:
            def proj(t):
                return t - (t @ r)[..., None] * r

            with nn_model.trace(input_ids=x, use_cache=False):
                m = nn_model.model
                m.embed_tokens.output = proj(m.embed_tokens.output)
                for i, layer in enumerate(m.layers):  # in execution order, as nnsight requires
                    layer.self_attn.o_proj.output = proj(layer.self_attn.o_proj.output)
                    layer.mlp.output = proj(layer.mlp.output)
                    if i == L_BIAS:
                        layer.output = layer.output + s.v
                    if i == L_INJECT:
                        layer.output = layer.output + mask * sv
                logits = nn_model.output.logits.save()
            return logits

        runs["nnsight"] = nn_run
    else:
        skipped["nnsight"] = why
    skipped["steering-vectors"] = "adds to layer outputs only: no writer ablation"
    for label, model in _moia_paths(s):

        def run(m: Any = model) -> Any:
            with moia.intervene(m, *s.interventions()):
                return m(x)

        runs[f"moia ({label})"] = run
    return runs, skipped


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return bool((a.float() - b.float()).abs().max() <= 1e-3)
    return a == b and sum(map(len, a)) >= len(a) * NEW // 2  # and the replies are not empty


def interleaved(runs: dict[str, Callable[[], Any]], reference: str, rounds: int) -> dict[str, dict]:
    """Time every variant once per round, in a random order; check each against ``reference``."""
    expected = runs[reference]()
    wall: dict[str, list[float]] = {k: [] for k in runs}
    cpu: dict[str, list[float]] = {k: [] for k in runs}
    correct = {k: _same(f(), expected) for k, f in runs.items()}  # also the warm-up
    for _ in range(rounds):
        for name in random.sample(list(runs), len(runs)):
            t, c = time.perf_counter(), time.process_time()
            runs[name]()
            wall[name].append(time.perf_counter() - t)
            cpu[name].append(time.process_time() - c)
    return {
        k: {
            "wall_s": statistics.median(wall[k]),
            "cpu_s": statistics.median(cpu[k]),
            "cpu_rounds_s": cpu[k],
            "correct": correct[k],
        }
        for k in runs
    }


def paired(times: list[float], base: list[float]) -> tuple[float, float, float]:
    """Median, lowest and highest of the per-round ratios ``times[i] / base[i]`` (each variant ran
    once per round, so a round's ratio compares runs seconds apart: slow drifts in load cancel)."""
    ratios = sorted(t / b for t, b in zip(times, base, strict=True))
    return statistics.median(ratios), ratios[0], ratios[-1]


TASKS = {
    "steer": (steer_variants, "HF generate + one plain hook", "HF generate"),
    "generate": (generate_variants, "HF generate + plain hooks (same 3)", "HF generate + one plain hook"),
    "forward": (forward_variants, "HF + plain hooks (same 3)", "HF forward"),
}


def run_task(setup: Setup, task: str, rounds: int) -> dict[str, Any]:
    make, reference, baseline = TASKS[task]
    runs, skipped = make(setup)
    only = [w for w in os.environ.get("MOIA_BENCH_ONLY", "").split(",") if w]
    if only:  # more rounds of fewer variants; the baseline and the reference always run
        runs = {k: f for k, f in runs.items() if k in (reference, baseline) or any(w in k for w in only)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nnsight's and transformers' notices, once per call
        results = interleaved(runs, reference, rounds)
    base = results[baseline]
    for r in results.values():
        r["wall_ratio"], r["cpu_ratio"] = r["wall_s"] / base["wall_s"], r["cpu_s"] / base["cpu_s"]
        r["cpu_ratio_paired"] = paired(r["cpu_rounds_s"], base["cpu_rounds_s"])
    return {
        "task": task,
        "baseline": baseline,
        "reference": reference,
        "results": results,
        "skipped": skipped,
    }


def table(out: dict[str, Any]) -> str:
    lines = [
        f"### {out['task']} (baseline: {out['baseline']}; tokens/logits checked against {out['reference']})",
        "",
        "| variant | wall (median) | × baseline | CPU (median) | × baseline "
        "| CPU ÷ baseline's, per round: median [min, max] | same result |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in out["results"].items():
        same = "yes" if r["correct"] else "NO"
        if name == out["baseline"] != out["reference"]:
            same = "(baseline: not the task's interventions)"
        pm, lo, hi = r["cpu_ratio_paired"]
        lines.append(
            f"| {name} | {r['wall_s']:.3f} s | {r['wall_ratio']:.3f} | {r['cpu_s']:.3f} s | "
            f"{r['cpu_ratio']:.3f} | {pm:.3f} [{lo:.3f}, {hi:.3f}] | {same} |"
        )
    lines += [f"| {name} | skipped: {why} | | | | | |" for name, why in out["skipped"].items()]
    return "\n".join(lines)


def _configure() -> int:
    threads = os.environ.get("MOIA_BENCH_THREADS")
    if threads:
        torch.set_num_threads(int(threads))
    return int(os.environ.get("MOIA_BENCH_ROUNDS", "5"))


def test_peers(benchmark: Any) -> None:
    """Every task in one run; fails if a moia variant or a peer gives a different result."""
    rounds, setup = _configure(), Setup()
    for task in TASKS:
        out = run_task(setup, task, rounds)
        print("\n" + table(out))
        benchmark.extra_info[task] = out
        wrong = [k for k, r in out["results"].items() if not r["correct"] and k != out["baseline"]]
        assert not wrong, f"{task}: these variants disagree with {out['reference']}: {wrong}"
    benchmark.extra_info.update(threads=torch.get_num_threads(), rounds=rounds)
    benchmark.pedantic(lambda: None, rounds=1)


if __name__ == "__main__":
    rounds = _configure()
    setup = Setup()
    for task in sys.argv[1:] or TASKS:
        print(table(run_task(setup, task, rounds)), "\n", flush=True)
