"""``moia reproduce``: the injected-thought experiment end to end (PROTOCOL §1-3, §6).

    moia reproduce                       # quick grid on the default model (minutes on a CPU)
    moia reproduce --full --out runs/x   # PROTOCOL's grid: 50 test concepts, trials 1..10, ...
    moia reproduce --bias bias.safetensors --arms baseline bias

Extracts concept vectors and refusal directions (cached in the output folder), runs the arms
(baseline, ablation, bias, ablation+bias; bias arms need ``--bias``), grades every trial, writes
``trials.jsonl``, ``report.json``, ``report.md`` and heatmaps, and prints the table. Re-running
the same command resumes an interrupted run.
"""

import argparse
import difflib
import pathlib
import time
from typing import Any

from ..experiment.sweep import ARMS, Sweep
from .options import add_model_options, add_options, from_args, load_model_from_args

# The quick grid, sized for a 2-core CPU with SmolLM2-135M on the bridge backend: 6 concepts ×
# 2 layers × 2 strengths × trials 1-2, concept and random vectors, forced trials, 10 control
# trials per arm (FPR n = 10), 32 new tokens: 332 trials for the baseline and ablation arms
# (166 per arm; the bias arms add 166 each), about 4 minutes on a shared 2-core machine.
QUICK: dict[str, Any] = dict(
    concepts=["Dust", "Oceans", "Volcanoes", "Sugar", "Poetry", "Secrecy"],
    layers=[0.4, 0.6],
    strengths=[4.0, 8.0],
    trials=[1, 2],
    control_trials=list(range(1, 11)),
    max_new_tokens=32,
)
# PROTOCOL §2: the 50 test concepts, trials 1..10, 100 new tokens; depths around [MOIA]'s
# detection peak (0.47) and canonical layer (0.6), strengths around its canonical 4. Meant for a
# GPU: 6,000 trials per vector kind and arm.
FULL: dict[str, Any] = dict(
    concepts=None,  # the shipped test list
    layers=[0.4, 0.5, 0.6, 0.7],
    strengths=[2.0, 4.0, 8.0],
    trials=list(range(1, 11)),
    control_trials=None,
    max_new_tokens=100,
)


GRID_FIELDS = ("concepts", "layers", "strengths", "trials", "control_trials", "max_new_tokens")


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "reproduce",
        help="run the injected-thought experiment (four arms), grade it and report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_options(p, backend="bridge")  # the bridge: same numerics, about twice as fast on CPU
    p.add_argument("--out", help="output folder (default runs/reproduce-<model>[-full])")
    p.add_argument("--full", action="store_true", help="PROTOCOL's full grid instead of the quick one")
    # grid options default to the quick (or --full) grid; the rest to the Sweep's defaults
    add_options(p, Sweep, defaults={**dict.fromkeys(GRID_FIELDS), "arms": list(ARMS)})
    p.add_argument("--lowercase", action="store_true", help="[LINDSEY]'s lower-case concept words")
    p.add_argument("--judge", default="rule", help="rule (default), http (MOIA_JUDGE_* env) or a URL")
    p.add_argument("--bias", help="trained bias vector (.safetensors) for the bias arms")
    p.add_argument(
        "--ablation",
        choices=("per_layer", "selected"),
        default="per_layer",
        help="[MOIA]'s per-layer directions or [ARDITI]'s selected one (slow selection)",
    )
    p.add_argument(
        "--ablation-weight",
        type=float,
        default=0.1,
        help="weight of the ablation at every layer: 1 = full; default 0.1, [MOIA]-style soft ablation "
        "(full per-layer ablation at every layer leaves SmolLM2 incoherent)",
    )
    p.add_argument("--ablation-site", choices=("resid_post", "writers", "resid_pre"), default="resid_post")
    p.add_argument("--threads", type=int, help="torch CPU threads (>= 1)")
    p.add_argument(
        "--stimuli",
        choices=("concepts", "emotions"),
        default="concepts",
        help="inject concept vectors (PROTOCOL §2) or emotion vectors (§7; moia.cli.emotions.run_reproduce)",
    )
    p.add_argument(
        "--emotion-vectors", help="emotion-vector file for --stimuli emotions (default: extracted)"
    )
    p.set_defaults(func=run)


def check_concepts(words: list[str]) -> list[str]:
    """Shipped spelling of each word (case-insensitive match to the test/extra lists)."""
    from ..directions.concepts import concept_words

    known = {w.lower(): w for w in [*concept_words("test"), *concept_words("extra")]}
    out = []
    for word in words:
        if word.lower() not in known:
            close = difflib.get_close_matches(word.lower(), list(known), n=3)
            hint = f"; did you mean {', '.join(known[c] for c in close)}?" if close else ""
            raise ValueError(
                f"unknown concept word {word!r}: not in moia's test or extra concept lists{hint}"
            )
        out.append(known[word.lower()])
    return out


def build_sweep(args: argparse.Namespace) -> Sweep:
    from ..directions.concepts import concept_words

    grid = FULL if args.full else QUICK
    chosen = {k: getattr(args, k) for k in GRID_FIELDS}
    picked = {k: grid[k] if chosen[k] is None else chosen[k] for k in GRID_FIELDS}
    picked["concepts"] = check_concepts(picked["concepts"] or concept_words("test"))
    sweep = from_args(
        Sweep,
        args,
        **picked,
        arms=list(dict.fromkeys(args.arms)),
        kinds=list(dict.fromkeys(args.kinds)),
    )
    sweep.validate(n_layers=None)  # all but the layers, before a model is loaded
    return sweep


def run(args: argparse.Namespace) -> int:
    import torch

    from ..core.model import device_of
    from ..eval.judge import make_judge
    from ..experiment.arms import NO_BIAS, AblationSpec, cached_concept_vectors, prepare_arms
    from ..experiment.report import table_rows, text_table, write_report
    from ..experiment.results import TRIALS, read_trials
    from ..experiment.run import run_sweep
    from ..experiment.sweep import sweep_trials

    if args.stimuli == "emotions":
        from .emotions import run_reproduce

        return run_reproduce(args)
    t0 = time.perf_counter()
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    sweep = build_sweep(args)
    ablation = AblationSpec(args.ablation, args.ablation_weight, args.ablation_site)
    judge = make_judge(args.judge)
    name = pathlib.Path(args.model).name
    out = pathlib.Path(args.out or f"runs/reproduce-{name}{'-full' if args.full else ''}")
    if args.bias and not pathlib.Path(args.bias).exists():
        raise FileNotFoundError(f"bias file not found: {args.bias}")

    skipped = {arm: NO_BIAS for arm in sweep.arms if "bias" in arm and not args.bias}
    for arm, why in skipped.items():
        print(f"skipping arm {arm}: {why}", flush=True)
    sweep.arms = [a for a in sweep.arms if a not in skipped]
    if not sweep.arms:
        raise ValueError("no arm left to run")

    model = load_model_from_args(args)
    layers = sweep.validate(int(model.cfg.n_layers))
    out.mkdir(parents=True, exist_ok=True)
    print(f"moia reproduce: {args.model}, layers {layers}, output {out}", flush=True)
    vectors = cached_concept_vectors(model, sweep.concepts, layers, out, capitalize=not args.lowercase)
    interventions, arm_settings, _ = prepare_arms(model, sweep.arms, out, ablation, args.bias)
    run_settings = {
        "backend": args.backend,
        "dtype": args.dtype,
        "device": device_of(model).type,  # where the model is, not what was asked for
        "judge": args.judge if args.judge == "rule" else f"{args.judge} ({getattr(judge, 'model', '?')})",
        "concept_vectors": {"capitalize": not args.lowercase},
        "arms": arm_settings,
    }
    t_prep = time.perf_counter() - t0
    summary = run_sweep(model, sweep, out, vectors, interventions, judge, run_settings)
    ids = {s.id for s in sweep_trials(sweep, layers)}
    records = [r for r in read_trials(out / TRIALS) if r["id"] in ids]
    settings = {
        "model": getattr(model, "moia_name", args.model),
        "grid": "full" if args.full else "quick",
        **sweep.as_dict(),
        "layer_indices": layers,
        **run_settings,
        "skipped_arms": skipped,
        "timing_s": {"preparation": round(t_prep, 1), "trials": round(summary.seconds, 1)},
        "trials_run": summary.ran,
        "trials_resumed": summary.already,
    }
    report = write_report(out, records, settings)
    print(text_table(table_rows(report["metrics"])))
    for arm, m in report["metrics"]["arms"].items():
        print(f"{arm}: FPR {m['fpr']['k']}/{m['fpr']['n']} control trials")
    wall = time.perf_counter() - t0
    print(
        f"{summary.ran} trials run, {summary.already} resumed, in {wall:.0f} s; report: "
        f"{out / 'report.md'}, {', '.join(report['heatmaps'])}"
    )
    return 0
