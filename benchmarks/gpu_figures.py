"""The GPU check's figures, as JSON: the op against its peers, the hooked model against the plain one,
and sweep throughput on a random-weight Gemma3-27B-shaped model (``benchmarks/gpu_check.sh`` runs it).

    python benchmarks/gpu_figures.py ops   --out ops.json     # kernel vs copy, naive, torch.compile(twin)
    python benchmarks/gpu_figures.py model --out model.json   # forward / greedy generation, hooked vs plain,
                                                               # then sweep trials/s at the planner's batch
    python benchmarks/gpu_figures.py ... --smoke               # tiny shapes and a tiny model, on CPU

Every figure is a ratio to a baseline measured in the same run: the op's GB/s (2 × bytes of x /
time: one read and one write, the least a bandwidth-bound op can move) against ``x.clone()``'s,
and its time against the naive TransformerLens-style chain and against ``torch.compile`` of the
torch twin (what a user would try first); the hooked model's time against the un-hooked one's.
The sweep section runs real trial prompts (Gemma 3 IT's chat template) through the one trial
runner at the memory planner's batch, and projects the time of one 5,000-trial cell.
"""

import argparse
import json
import pathlib
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
SMOKE_MODEL = f"random:{ROOT / 'benchmarks' / 'tiny_gemma3.json'}"
FULL_MODEL = "random:google/gemma-3-27b-it"
CELL = 5000  # trials in one cell of MoIA's grid (500 concepts x trials 1-10)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds(fn: Callable[[], Any], device: torch.device, repeat: int, warmup: int = 1) -> float:
    """Median wall seconds of ``fn`` over ``repeat`` runs (after ``warmup``), synchronised."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


# ------------------------------------------------------------------------------------------ ops
def ops(smoke: bool) -> dict[str, Any]:
    from moia.kernels import intervention_naive, intervention_reference

    device = torch.device("cpu" if smoke else "cuda")
    shapes = [(2, 16, 64), (2, 16, 96)] if smoke else [(8, 2048, 4096), (8, 2048, 5376)]
    kernel = None
    if device.type == "cuda":
        from moia.kernels.triton_intervention import triton_intervention as kernel
    compiled = torch.compile(intervention_reference, dynamic=False)
    out: dict[str, Any] = {"device": str(device), "cases": []}
    for shape in shapes:
        for dtype in (torch.bfloat16, torch.float32):
            g = torch.Generator().manual_seed(0)
            b, t, d = shape
            r = torch.randn(1, d, generator=g)
            args = {
                "x": torch.randn(shape, generator=g).to(device, dtype),
                "directions": (r / r.norm()).to(device, dtype),
                "bias": torch.randn(d, generator=g).to(device, dtype),
                "vectors": torch.randn(b, d, generator=g).to(device, dtype),
                "strengths": torch.rand(b, generator=g).to(device, dtype),
                "starts": torch.randint(0, t, (b,), generator=g).to(device),
            }
            x = args["x"]
            moved = 2 * x.numel() * x.element_size()
            variants: dict[str, Callable[[], Any]] = {
                "copy": x.clone,
                "twin": lambda a=args: intervention_reference(**a),
                "naive": lambda a=args: intervention_naive(**a),
                "compiled_twin": lambda a=args: compiled(**a),
            }
            if kernel is not None:
                variants["kernel"] = lambda a=args: kernel(**a)
            case: dict[str, Any] = {"shape": list(shape), "dtype": str(dtype).removeprefix("torch.")}
            for name, fn in variants.items():
                try:
                    s = seconds(fn, device, repeat=5 if smoke else 50, warmup=2)
                except Exception as e:  # a peer that cannot run here (torch.compile without a compiler)
                    case[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
                    continue
                case[name] = {"us": round(s * 1e6, 2), "gb_per_s": round(moved / s / 1e9, 2)}
            best = "kernel" if "kernel" in variants else "twin"
            if "us" in case.get(best, {}):
                t_best = case[best]["us"]
                case["ratios"] = {
                    f"{best}_gb_per_s_vs_copy": _ratio(case["copy"], "gb_per_s", case[best]),
                    "speedup_vs_naive": _ratio(case[best], "us", case["naive"]),
                    "speedup_vs_compiled_twin": _ratio(case[best], "us", case.get("compiled_twin", {})),
                    f"{best}_us": t_best,
                }
            out["cases"].append(case)
    return out


def _ratio(base: dict[str, Any], key: str, other: dict[str, Any]) -> float | None:
    """other[key] / base[key] (None if either is missing)."""
    if key not in base or key not in other or not base[key]:
        return None
    return round(other[key] / base[key], 3)


def peak_gb(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 1e9, 2) if device.type == "cuda" else None


# ---------------------------------------------------------------------------- model and sweep
def model(smoke: bool, backend: str) -> dict[str, Any]:
    import moia
    from moia.lm.decoding import generate_tokens
    from moia.lm.memory import ModelShape, planned_batch_size, weight_bytes
    from moia.trials.prompt import TrialPrompts
    from moia.trials.runner import TrialRow, TrialRunner

    device = torch.device("cpu" if smoke else "cuda")
    dtype = torch.float32 if smoke else torch.bfloat16
    name = SMOKE_MODEL if smoke else FULL_MODEL
    torch.set_grad_enabled(False)
    t0 = time.perf_counter()
    m = moia.load_model(name, backend=backend, dtype=dtype, device=device)
    out: dict[str, Any] = {
        "model": name,
        "backend": backend,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": str(dtype).removeprefix("torch."),
        "load_s": round(time.perf_counter() - t0, 1),
        "weight_gb": round(weight_bytes(m) / 1e9, 2),
        "shape": ModelShape.of(m).__dict__,
    }

    # forward and greedy generation: ablation at every layer (writers) + bias + injection vs none
    g = torch.Generator().manual_seed(0)
    d, n_layers = m.cfg.d_model, m.cfg.n_layers
    batch, pos, new = (2, 16, 4) if smoke else (8, 128, 32)
    tokens = torch.randint(1000, 20000, (batch, pos), generator=g).to(device)
    r = torch.randn(d, generator=g)
    bias_site = "mlp_pre_norm" if backend == "bridge" else "resid_post"  # [MOIA]'s site: bridge only
    hooks = (
        moia.DirectionAblation(r / r.norm()),
        moia.AdditiveVector(torch.randn(d, generator=g) * 0.1, n_layers // 2 - 2, site=bias_site),
        moia.ConceptInjection(
            torch.randn(batch, d, generator=g), n_layers // 2, torch.linspace(0, 4, batch), 4
        ),
    )
    mask = torch.ones_like(tokens)
    repeat = 3 if smoke else 5
    fwd_plain = seconds(lambda: m(tokens), device, repeat)
    with moia.intervene(m, *hooks):
        fwd_hooked = seconds(lambda: m(tokens), device, repeat)
    gen_plain = seconds(lambda: generate_tokens(m, tokens, mask, max_new_tokens=new), device, 2, 1)
    gen_hooked = seconds(lambda: generate_tokens(m, tokens, mask, *hooks, max_new_tokens=new), device, 2, 1)
    out["forward"] = {
        "shape": [batch, pos],
        "plain_ms": round(fwd_plain * 1e3, 2),
        "hooked_ms": round(fwd_hooked * 1e3, 2),
        "hooked_vs_plain": round(fwd_hooked / fwd_plain, 4),
    }
    out["generation"] = {
        "rows": batch,
        "prompt": pos,
        "new_tokens": new,
        "plain_ms": round(gen_plain * 1e3, 1),
        "hooked_ms": round(gen_hooked * 1e3, 1),
        "hooked_vs_plain": round(gen_hooked / gen_plain, 4),
    }

    # sweep throughput: real trial prompts (trials 1-10, a concept injected at depth 0.6 in half
    # of them) through the trial runner at the planner's batch, 100 new tokens (PROTOCOL §2)
    max_new = 8 if smoke else 100
    prompts = TrialPrompts(m)
    longest = max(prompts.get(t, forced).n_tokens for t in range(1, 11) for forced in (False, True))
    plan = planned_batch_size(m, longest, max_new)
    rows_n = min(plan.batch, 4) if smoke else plan.batch
    layer = int(0.6 * n_layers)
    rows = []
    for i in range(rows_n):
        vector = torch.randn(d, generator=g) * 8 if i % 2 else None
        prompt = prompts.get(i % 10 + 1)
        rows.append(
            TrialRow(
                prompt, vector, layer if vector is not None else None, 4.0 if vector is not None else 0.0
            )
        )
    runner = TrialRunner(m, max_new_tokens=max_new, batch_size=rows_n)
    runner.generate(rows[: min(2, rows_n)])  # warm up
    _sync(device)
    t0 = time.perf_counter()
    replies = runner.generate(rows)
    _sync(device)
    elapsed = time.perf_counter() - t0
    new_tokens = [len(m.tokenizer(reply, add_special_tokens=False).input_ids) for reply in replies]
    out["sweep"] = {
        "plan": plan.as_dict(),
        "batch": rows_n,
        "halved_to": runner.rows_per_call,
        "longest_prompt": longest,
        "max_new_tokens": max_new,
        "mean_reply_tokens": round(sum(new_tokens) / len(new_tokens), 1),
        "seconds": round(elapsed, 2),
        "trials_per_s": round(rows_n / elapsed, 3),
        "projected_cell_s": round(CELL / (rows_n / elapsed), 1),
        "cell_trials": CELL,
        "peak_memory_gb": round(torch.cuda.max_memory_allocated(device) / 1e9, 2)
        if device.type == "cuda"
        else None,
    }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("section", choices=("ops", "model"))
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes and model on CPU (a dry run)")
    parser.add_argument("--backend", default="bridge", choices=("bridge", "hooked"))
    args = parser.parse_args(argv)
    if not args.smoke and not torch.cuda.is_available():
        print("no CUDA device: run with --smoke for a CPU dry run", file=sys.stderr)
        return 2
    result = ops(args.smoke) if args.section == "ops" else model(args.smoke, args.backend)
    result["smoke"] = args.smoke
    result["torch"] = torch.__version__
    pathlib.Path(args.out).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
