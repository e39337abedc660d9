"""``moia emotions``: emotion vectors, their validation, and the natural-emotion experiment (PROTOCOL §7).

    moia emotions vectors --out ev.safetensors              # stories written and cached, vectors saved
    moia emotions vectors --out ev.safetensors --validate   # ... and held-out / sentence AUROC
    moia emotions validate --vectors ev.safetensors --json auroc.json
    moia emotions scan --layers 0.2 0.4 0.6 --json scan.json  # AUROC across depths (the default's basis)
    moia emotions natural --vectors ev.safetensors --out runs/natural --arms baseline ablation

The injected experiment is ``moia reproduce --stimuli emotions`` (``run_reproduce``, here).
"""

import argparse
import json
import pathlib
import time
from typing import Any

from ..directions.stories import StorySettings
from ..io import writable_dir, writable_file
from .options import add_model_options, add_options, from_args, layer_arg, load_model_from_args

VECTOR_FILE = "emotion_vectors.safetensors"
# The quick injected grid (``moia reproduce --stimuli emotions``): the ten emotions at the vectors'
# layer; strengths are multiples of the raw vector (PROTOCOL §7 gives the norms they correspond to).
EMOTION_QUICK: dict[str, Any] = dict(
    strengths=[8.0, 16.0], trials=[1, 2], control_trials=list(range(1, 11)), max_new_tokens=48
)


def unset_protocol_defaults(args: argparse.Namespace) -> None:
    """``moia reproduce``'s grid options default to "the protocol's" value; emotion runs have no
    protocol, so an option not given becomes None (then ``EMOTION_QUICK``'s value), the four arms
    for ``--arms``, or the ``Sweep`` default."""
    import dataclasses

    from ..experiment.protocols import PROTOCOL_FIELDS
    from ..experiment.sweep import ARMS, Sweep
    from .reproduce import PROTOCOL_DEFAULT

    defaults = {
        f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc,operator]
        for f in dataclasses.fields(Sweep)
        if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
    }
    for name in PROTOCOL_FIELDS:
        if getattr(args, name, None) is not PROTOCOL_DEFAULT:
            continue
        if name == "arms":
            value: Any = list(ARMS)
        elif name in EMOTION_QUICK or name not in defaults:
            value = None
        else:
            value = defaults[name]
        setattr(args, name, value)


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("emotions", help="emotion vectors, probes and the natural-emotion experiment")
    sub = p.add_subparsers(dest="emotions_command", metavar="COMMAND", required=True)

    common = argparse.ArgumentParser(add_help=False)
    add_model_options(common, backend="bridge")
    common.add_argument(
        "--story-cache", help="folder of the story cache (default $MOIA_CACHE_DIR/emotion_stories)"
    )
    common.add_argument("--batch-size", type=int, default=16)
    add_options(common, StorySettings, skip=("prompt", "neutral_prompt"), dest_prefix="story_")

    vectors = sub.add_parser("vectors", parents=[common], help="extract emotion vectors and save them")
    vectors.add_argument("--out", required=True, help="the .safetensors file to write")
    vectors.add_argument("--layer", type=layer_arg, default=None, help="index or depth (default: measured)")
    vectors.add_argument("--emotions", nargs="+", help="default: the ten shipped emotions")
    vectors.add_argument("--stories", help="JSONL stories replacing the generated ones")
    vectors.add_argument("--n-pcs", type=int, default=None, help="neutral PCs projected out")
    vectors.add_argument("--skip", type=int, default=None, help="story tokens skipped at the start")
    vectors.add_argument("--validate", action="store_true", help="also print held-out and sentence AUROC")
    vectors.add_argument("--json", help="write the validation here (with --validate)")
    vectors.set_defaults(func=run_vectors)

    validate = sub.add_parser("validate", parents=[common], help="AUROC on held-out stories and sentences")
    validate.add_argument("--vectors", required=True, help="an emotion-vector file")
    validate.add_argument("--json", help="write the result here")
    validate.set_defaults(func=run_validate)

    scan = sub.add_parser("scan", parents=[common], help="AUROC across layers (how the default was chosen)")
    scan.add_argument("--layers", type=layer_arg, nargs="+", help="indices and/or depths (default: all)")
    scan.add_argument("--n-pcs", type=int, nargs="+", default=[0])
    scan.add_argument("--skip", type=int, default=None)
    scan.add_argument("--json", required=True, help="write the scan here")
    scan.set_defaults(func=run_scan)

    natural = sub.add_parser("natural", parents=[common], help="self-report vs probes on natural scenarios")
    natural.add_argument("--vectors", help="an emotion-vector file (default: extract into --out)")
    natural.add_argument("--out", required=True, help="output folder (resumable)")
    natural.add_argument(
        "--arms", nargs="+", default=["baseline", "ablation"], choices=("baseline", "ablation", "bias")
    )
    natural.add_argument("--bias", help="a trained bias vector for the bias arm")
    natural.add_argument("--max-new-tokens", type=int, default=64)
    natural.add_argument("--system", default="", help="the system turn ('' an explicit empty one)")
    natural.set_defaults(func=run_natural_command)


def story_settings(args: argparse.Namespace) -> StorySettings:
    return from_args(StorySettings, args, dest_prefix="story_")


def _vector_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    names = ("layer", "n_pcs", "skip")
    return {k: getattr(args, k) for k in names if getattr(args, k, None) is not None}


def _validate(model: Any, ev: Any, settings: StorySettings, args: argparse.Namespace) -> None:
    """Probe AUROCs of ``ev`` (``validate``), printed, and written to ``--json`` when given."""
    from ..experiment.emotion_probes import validate
    from ..io import write_json

    result = validate(model, ev, settings, args.story_cache, args.batch_size)
    for part in ("heldout_stories", "sentences"):
        r = result[part]
        per = ", ".join(f"{e} {a:.2f}" for e, a in r["per_emotion"].items())
        print(f"{part} (n={r['n']}): mean AUROC {r['mean']:.3f}; {per}")
    if args.json:
        write_json(args.json, result)


def run_vectors(args: argparse.Namespace) -> int:
    from ..directions.emotions import emotion_vectors

    settings = story_settings(args)  # bad settings fail before the model loads
    writable_file(args.out, "--out")
    model = load_model_from_args(args)
    ev = emotion_vectors(
        model,
        args.emotions,
        stories=args.stories,
        story_settings=settings,
        cache_dir=args.story_cache,
        batch_size=args.batch_size,
        progress=True,
        **_vector_kwargs(args),
    )
    ev.save(args.out)
    norms = ", ".join(f"{n} {float(v.norm()):.2f}" for n, v in zip(ev.names, ev.vectors, strict=True))
    print(f"wrote {len(ev.names)} emotion vectors at layer {ev.layer} to {args.out}; norms: {norms}")
    if args.validate:
        _validate(model, ev, settings, args)
    return 0


def run_validate(args: argparse.Namespace) -> int:
    from ..directions.emotions import EmotionVectors

    model = load_model_from_args(args)
    _validate(model, EmotionVectors.load(args.vectors, model), story_settings(args), args)
    return 0


def run_scan(args: argparse.Namespace) -> int:
    from ..directions.emotions import DEFAULT_SKIP
    from ..experiment.emotion_probes import layer_scan
    from ..io import write_json

    settings = story_settings(args)
    model = load_model_from_args(args)
    skip = DEFAULT_SKIP if args.skip is None else args.skip
    t0 = time.perf_counter()
    rows = layer_scan(model, args.layers, None, args.n_pcs, skip, settings, args.story_cache)
    write_json(args.json, {"model": getattr(model, "moia_name", args.model), "skip": skip, "rows": rows})
    print(f"layer scan in {time.perf_counter() - t0:.0f} s: mean one-vs-rest AUROC")
    print(f"{'layer':>5} {'depth':>6} {'pcs':>4} {'stories':>8} {'sentences':>9}")
    for r in rows:
        story, sent = r["heldout_stories"]["mean"], r["sentences"]["mean"]
        print(f"{r['layer']:>5} {r['depth']:>6.2f} {r['n_pcs']:>4} {story:>8.3f} {sent:>9.3f}")
    return 0


def cached_emotion_vectors(model: Any, out: pathlib.Path, path: Any, args: argparse.Namespace) -> Any:
    """The given vector file, else the output folder's, else extracted (defaults) and saved there."""
    from ..directions.emotions import EmotionVectors, emotion_vectors

    if path:
        return EmotionVectors.load(path, model)
    if (out / VECTOR_FILE).exists():
        return EmotionVectors.load(out / VECTOR_FILE, model)
    cache = getattr(args, "story_cache", None)
    ev = emotion_vectors(model, story_settings=story_settings(args), cache_dir=cache, progress=True)
    ev.save(out / VECTOR_FILE)
    return ev


def run_natural_command(args: argparse.Namespace) -> int:
    from ..experiment.emotion_arms import prepare_emotion_arms
    from ..experiment.emotion_report import natural_rows
    from ..experiment.natural import natural_metrics, run_natural
    from ..experiment.report import text_table
    from ..io import write_json

    out = writable_dir(args.out, "--out")
    model = load_model_from_args(args)
    ev = cached_emotion_vectors(model, out, args.vectors, args)
    interventions, arm_settings, skipped = prepare_emotion_arms(model, args.arms, out, args.bias)
    for arm, why in skipped.items():
        print(f"skipping arm {arm}: {why}", flush=True)
    records = run_natural(
        model, ev, out, interventions, None, args.max_new_tokens, args.system, args.batch_size,
        {"arms": arm_settings},
    )  # fmt: skip
    metrics = natural_metrics(records, ev.names)
    write_json(out / "natural_report.json", {"metrics": metrics, "skipped_arms": skipped, "layer": ev.layer})
    print(text_table(natural_rows(metrics)))
    print(json.dumps({arm: m["first_named"] for arm, m in metrics.items()}))
    return 0


def run_reproduce(args: argparse.Namespace) -> int:
    """``moia reproduce --stimuli emotions``: the injected emotion sweep (both questions) and the
    natural scenarios (``natural/``) in every arm, graded, with one report."""
    import torch

    from ..directions.stories import default_emotions
    from ..experiment.emotion_arms import prepare_emotion_arms
    from ..experiment.emotion_report import natural_rows, write_emotion_report
    from ..experiment.emotions import run_emotion_sweep
    from ..experiment.natural import natural_metrics, run_natural
    from ..experiment.report import table_rows, text_table
    from ..experiment.results import TRIALS, read_trials
    from ..experiment.sweep import Sweep

    t0 = time.perf_counter()
    unset_protocol_defaults(args)
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.layers is not None:
        raise ValueError(
            "--layers does not apply to --stimuli emotions: trials inject at the emotion vectors' layer "
            "(choose it with `moia emotions vectors --layer`, then --emotion-vectors FILE)"
        )
    known = default_emotions()
    emotions = list(args.concepts or known)
    unknown = [e for e in emotions if e not in known]
    if unknown:
        raise ValueError(f"unknown emotion(s) {unknown} in --concepts: expected some of {known}")
    grid = {k: EMOTION_QUICK[k] if getattr(args, k) is None else getattr(args, k) for k in EMOTION_QUICK}
    out = writable_dir(args.out or f"runs/emotions-{pathlib.Path(args.model).name}", "--out")
    model = load_model_from_args(args)
    ev = cached_emotion_vectors(model, out, args.emotion_vectors, args)
    interventions, arm_settings, skipped = prepare_emotion_arms(
        model, list(dict.fromkeys(args.arms)), out, args.bias
    )
    for arm, why in skipped.items():
        print(f"skipping arm {arm}: {why}", flush=True)
    sweep = from_args(
        Sweep, args, concepts=emotions, layers=[ev.layer], arms=list(interventions),
        kinds=list(dict.fromkeys(args.kinds)), **grid,
    )  # fmt: skip
    run_settings = {
        "backend": args.backend,
        "dtype": args.dtype,
        "emotion_vectors": {"layer": ev.layer, "names": ev.names, "settings": ev.settings},
        "arms": arm_settings,
    }
    summary = run_emotion_sweep(model, sweep, out, ev, interventions, run_settings=run_settings)
    natural = run_natural(
        model, ev, out / "natural", interventions, None, sweep.max_new_tokens, sweep.system, sweep.batch_size,
        {"arms": arm_settings},
    )  # fmt: skip
    natural_m = natural_metrics(natural, ev.names)
    records = [
        r
        for r in read_trials(out / TRIALS)
        if r["arm"] in interventions and r["concept"] in (*emotions, None)
    ]
    settings = {
        "model": getattr(model, "moia_name", args.model),
        **sweep.as_dict(),
        "layer": ev.layer,
        **run_settings,
        "skipped_arms": skipped,
        "trials_run": summary.ran,
        "trials_resumed": summary.already,
        "timing_s": round(time.perf_counter() - t0, 1),
    }
    report = write_emotion_report(out, records, emotions, settings, natural_m)
    for question, q in report["injected"].items():
        print(f"question {question}:")
        print(text_table(table_rows(q["metrics"])))
    print(text_table(natural_rows(natural_m)))
    wall = time.perf_counter() - t0
    print(f"{summary.ran} trials run, {summary.already} resumed, in {wall:.0f} s; report {out / 'report.md'}")
    return 0
