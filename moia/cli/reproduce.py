"""``moia reproduce``: the injected-thought experiment end to end (PROTOCOL §1-4, §6).

    moia reproduce                        # the quick sweep on the default model (minutes on a CPU)
    moia reproduce --full --out runs/x    # PROTOCOL's sweep: 50 test concepts, trials 1..10, ...
    moia reproduce --protocol ablation    # [MOIA]'s refusal-ablation experiment (PROTOCOL §4)
    moia reproduce --bias bias.safetensors --arms baseline bias

``--protocol`` names what is run (``moia.experiment.protocols``): ``sweep``, the layer × strength
sweep, or ``ablation``, [MOIA]'s ablation experiment exactly (sampled, injection at every
position, 1,500 controls per arm). Any grid option overrides the protocol's value.

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

from ..experiment.arms import AblationSpec
from ..experiment.protocols import PROTOCOL_FIELDS, PROTOCOLS, protocol_settings
from ..experiment.sweep import Sweep
from ..io import writable_dir
from .options import add_model_options, add_options, from_args, load_model_from_args
from .workers import add_worker_options, run_with_workers


class ProtocolDefault:
    """The default of an option whose value the protocol decides (None is a real value for some)."""

    def __repr__(self) -> str:
        return "the protocol's"


PROTOCOL_DEFAULT = ProtocolDefault()


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "reproduce",
        help="run the injected-thought experiment (four arms), grade it and report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_options(p, backend="bridge")  # generation runs on its native twin: HF speed (RESULTS.md)
    p.add_argument("--protocol", choices=PROTOCOLS, default="sweep", help="what to run (default: sweep)")
    p.add_argument("--out", help="output folder (default runs/<protocol>-<model>[-full])")
    p.add_argument("--full", action="store_true", help="the sweep's full grid instead of the quick one")
    # the fields a protocol fixes default to the protocol's values; the rest to the Sweep's defaults
    add_options(p, Sweep, defaults=dict.fromkeys(PROTOCOL_FIELDS, PROTOCOL_DEFAULT))
    p.add_argument("--lowercase", action="store_true", help="[LINDSEY]'s lower-case concept words")
    p.add_argument("--judge", default="rule", help="rule (default), http (MOIA_JUDGE_* env) or a URL")
    p.add_argument("--bias", help="trained bias vector (.safetensors) for the bias arms")
    arm = AblationSpec()
    p.add_argument(
        "--ablation",
        choices=("per_layer", "selected"),
        default=arm.kind,
        help="[MOIA]'s per-layer directions or [ARDITI]'s selected one (slow selection)",
    )
    p.add_argument(
        "--ablation-weights",
        default=arm.weights,
        help="per-layer ablation weights: moia-regions ([MOIA]'s region weights mapped by depth, the "
        "default), uniform ([MOIA]'s 0.0175), a number in [0, 1] (1 = full) or a JSON file",
    )
    p.add_argument("--ablation-site", choices=("resid_post", "writers", "resid_pre"), default=arm.site)
    p.add_argument("--threads", type=int, help="torch CPU threads (>= 1)")
    add_worker_options(p)
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
    """The ``Sweep`` of ``--protocol`` (and ``--full``), with every option given overriding it."""
    from ..directions.concepts import concept_words

    chosen = {k: getattr(args, k) for k in PROTOCOL_FIELDS if getattr(args, k) is not PROTOCOL_DEFAULT}
    defaults = protocol_settings(args.protocol, args.full, chosen.get("temperature"))
    picked = {**defaults, **chosen}
    picked["concepts"] = check_concepts(picked["concepts"] or concept_words("test"))
    picked["arms"], picked["kinds"] = (
        list(dict.fromkeys(picked["arms"])),
        list(dict.fromkeys(picked["kinds"])),
    )
    sweep = from_args(Sweep, args, **picked)
    sweep.validate(n_layers=None)  # all but the layers, before a model is loaded
    return sweep


def run(args: argparse.Namespace) -> int:
    import torch

    from ..eval.judge import make_judge
    from ..experiment.arms import NO_BIAS
    from ..experiment.report import fpr_lines, table_rows, text_table, write_report
    from ..experiment.results import TRIALS, read_trials
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
    ablation = AblationSpec(args.ablation, args.ablation_weights, args.ablation_site)
    judge = make_judge(args.judge)
    name = pathlib.Path(args.model).name
    out = pathlib.Path(args.out or f"runs/{args.protocol}-{name}{'-full' if args.full else ''}")
    if args.bias and not pathlib.Path(args.bias).exists():
        raise FileNotFoundError(f"bias file not found: {args.bias}")

    skipped = {arm: NO_BIAS for arm in sweep.arms if "bias" in arm and not args.bias}
    for arm, why in skipped.items():
        print(f"skipping arm {arm}: {why}", flush=True)
    sweep.arms = [a for a in sweep.arms if a not in skipped]
    if not sweep.arms:
        raise ValueError("no arm left to run")
    writable_dir(out, "--out")  # after the arguments, before any model work
    if args.workers is not None:
        outcome = run_with_workers(args, sweep, ablation, out)
    else:
        outcome = run_here(args, sweep, ablation, judge, out, t0)
    layers = outcome.pop("layer_indices")
    ids = {s.id for s in sweep_trials(sweep, layers)}
    records = [r for r in read_trials(out / TRIALS) if r["id"] in ids]
    settings = {
        "model": outcome.pop("model"),
        "protocol": args.protocol,
        "grid": "full" if args.full or args.protocol != "sweep" else "quick",
        **sweep.as_dict(),
        "layer_indices": layers,
        **outcome,
        "skipped_arms": skipped,
    }
    report = write_report(out, records, settings)
    print(text_table(table_rows(report["metrics"])))
    for line in fpr_lines(report["metrics"]):
        print(line)
    wall = time.perf_counter() - t0
    pool = settings.get("workers")
    workers = f" on {pool['count']} workers ({pool['replaced']} replaced)" if pool else ""
    print(
        f"{settings['trials_run']} trials run{workers}, {settings['trials_resumed']} resumed, in "
        f"{wall:.0f} s; report: {out / 'report.md'}, {', '.join(report['heatmaps'])}"
    )
    return 0


def run_here(
    args: argparse.Namespace, sweep: Sweep, ablation: AblationSpec, judge: Any, out: pathlib.Path, t0: float
) -> dict[str, Any]:
    """The single-process run: load the model, prepare the arms, run the trials; the report's
    settings that come from the run (``run_with_workers`` returns the same keys)."""
    from ..experiment.arms import cached_concept_vectors, prepare_arms
    from ..experiment.run import arm_run_settings, run_sweep

    model = load_model_from_args(args)
    layers = sweep.validate(int(model.cfg.n_layers))
    out.mkdir(parents=True, exist_ok=True)
    print(f"moia reproduce: {args.model}, layers {layers}, output {out}", flush=True)
    vectors = cached_concept_vectors(model, sweep.concepts, layers, out, capitalize=not args.lowercase)
    interventions, arm_settings, _ = prepare_arms(model, sweep.arms, out, ablation, args.bias)
    run_settings = arm_run_settings(
        model, args.backend, args.dtype, args.judge, judge, not args.lowercase, arm_settings
    )
    t_prep = time.perf_counter() - t0
    summary = run_sweep(model, sweep, out, vectors, interventions, judge, run_settings)
    return {
        "model": getattr(model, "moia_name", args.model),
        "layer_indices": layers,
        "sampling": summary.sampling,
        **run_settings,
        "timing_s": {"preparation": round(t_prep, 1), "trials": round(summary.seconds, 1)},
        "trials_run": summary.ran,
        "trials_resumed": summary.already,
    }
