"""``moia moodring``: read a model's functional emotions while it writes (PROTOCOL §8).

    moia moodring --prompt "Your shift ends in ten minutes and the server is down." --out runs/ring
    moia moodring --file prompt.txt --out runs/ring
    moia moodring experiment --out runs/moodring-experiment      # the second-pass experiment

The first form generates a reply with the mood ring on and writes ``moodring.html`` (tokens coloured
by their dominant emotion, every value on hover, annotated spans marked), ``moodring.png`` (emotion
traces over the tokens) and ``moodring.json`` (tokens, z-scores, spans, the annotated reply). The
second runs the second-pass experiment (resumable: the same command continues an interrupted run)
and writes ``trials.jsonl``, ``report.json`` and ``report.md``.

Emotion vectors (PROTOCOL §7) come from ``--vectors FILE`` or are extracted once and cached in the
output folder, as is the ring's calibration (the model's replies to neutral instructions).
"""

import argparse
import dataclasses
import json
import pathlib
import time
from typing import Any

from ..experiment.arms import AblationSpec
from ..experiment.moodring import ARMS, MoodringSettings
from ..io import writable_dir
from .options import add_model_options, add_options, from_args, load_model_from_args

VECTORS = "emotion_vectors.safetensors"
CALIBRATION = "moodring_calibration.safetensors"


def _common(p: argparse.ArgumentParser) -> None:
    add_model_options(p, backend="bridge")  # the bridge: same numerics, faster on CPU
    p.add_argument(
        "--vectors", help="emotion vectors (.safetensors, `moia.EmotionVectors`); default: extract"
    )
    p.add_argument("--threads", type=int, help="torch CPU threads (>= 1)")


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "moodring",
        help="read a model's emotions while it writes: an HTML view, traces, annotations; or the experiment",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(p)
    source = p.add_mutually_exclusive_group()
    source.add_argument("--prompt", help="the user message to answer")
    source.add_argument("--file", help="a text file holding the user message")
    p.add_argument("--out", help="output folder (default runs/moodring-<model>)")
    p.add_argument("--max-new-tokens", type=int, default=160, help="tokens of the reply (default 160)")
    p.add_argument("--threshold", type=float, default=2.0, help="z at or above which a span is annotated")
    p.add_argument("--min-tokens", type=int, default=3, help="tokens an annotated span must last")
    p.set_defaults(func=run_view)
    sub = p.add_subparsers(dest="moodring_command", metavar="{experiment}")
    e = sub.add_parser(
        "experiment",
        help="the second-pass experiment: does seeing the ring's notes change the model's decision?",
        description="Pass 1: reasoning with the ring on; pass 2: a decision after the reasoning, plain, "
        "annotated by the ring, or annotated with other emotions (the control). Resumable.",
    )
    _common(e)
    e.add_argument("--out", help="output folder (default runs/moodring-experiment-<model>)")
    e.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS), help="arms (default all)")
    e.add_argument("--bias", help="trained bias vector (.safetensors) for the bias arm (skipped without)")
    e.add_argument(
        "--ablation-weights",
        default=AblationSpec().weights,
        help="per-layer refusal ablation weights, as moia reproduce takes them (moia-regions, uniform, a "
        "number in [0, 1] or a JSON file)",
    )
    e.add_argument("--scenarios", nargs="+", help="scenario ids (default all 42)")
    add_options(e, MoodringSettings)
    e.set_defaults(func=run_experiment)


def _setup(args: argparse.Namespace, default_out: str) -> tuple[Any, pathlib.Path]:
    import torch

    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.vectors and not pathlib.Path(args.vectors).exists():
        raise FileNotFoundError(f"emotion vectors file not found: {args.vectors}")
    out = writable_dir(args.out or f"{default_out}-{pathlib.Path(args.model).name}", "--out")
    model = load_model_from_args(args)
    out.mkdir(parents=True, exist_ok=True)
    return model, out


def emotion_ring(model: Any, out: pathlib.Path, vectors: str | None) -> Any:
    """A calibrated ``MoodRing`` on the emotion vectors (from ``vectors``, the output folder's cache,
    or extracted now and cached), with its calibration cached in the output folder."""
    from ..analysis.reading import calibrate
    from ..core.readout import Calibration, MoodRing
    from ..directions.emotions import EmotionVectors, emotion_vectors

    cached = out / VECTORS
    if vectors:
        ev = EmotionVectors.load(vectors, model)
    elif cached.exists():
        ev = EmotionVectors.load(cached, model)
    else:
        print("extracting emotion vectors (the model writes stories; cached for later runs) ...", flush=True)
        ev = emotion_vectors(model, progress=True)
        ev.save(cached)
    ring = MoodRing(ev)
    path = out / CALIBRATION
    if path.exists():
        cal = Calibration.load(path, model)
        if list(cal.names) != ring.names or json.loads(_meta(path).get("layer", "null")) != ev.layer:
            raise ValueError(
                f"{path} calibrates other directions or another layer; remove it or use another --out"
            )
    else:
        print("calibrating the ring on the model's replies to neutral instructions ...", flush=True)
        cal = calibrate(model, ring)
        cal.save(path, model, {"layer": ev.layer})
    ring.calibration = cal
    return ring


def _meta(path: pathlib.Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def run_view(args: argparse.Namespace) -> int:
    from ..analysis.annotate import find_spans, insert_notes, token_offsets
    from ..analysis.reading import read_replies
    from ..analysis.view import write_view
    from ..io import write_json

    if (args.prompt is None) == (args.file is None):
        raise ValueError(
            "give the text to answer: --prompt TEXT or --file FILE (or the 'experiment' command)"
        )
    prompt = args.prompt if args.prompt is not None else pathlib.Path(args.file).read_text(encoding="utf-8")
    if not prompt.strip():
        raise ValueError("the prompt is empty")
    model, out = _setup(args, "runs/moodring")
    ring = emotion_ring(model, out, args.vectors)
    (reading,) = read_replies(model, [prompt], ring, max_new_tokens=args.max_new_tokens)
    z = ring.calibration.z(reading.raw)
    p = reading.prompt_length
    text, offsets = token_offsets(model.tokenizer, reading.generated)
    spans = find_spans(z[p:], ring.names, offsets, args.threshold, args.min_tokens)
    full, all_offsets = token_offsets(model.tokenizer, reading.tokens)
    special = set(model.tokenizer.all_special_ids)
    shifted = [dataclasses.replace(s, start=s.start + p, end=s.end + p) for s in spans]  # whole sequence
    meta = f"{getattr(model, 'moia_name', args.model)}, layer {ring.layer}; z against its neutral replies"
    page, png = write_view(
        out,
        [full[a:b] for a, b in all_offsets],
        z,
        ring.names,
        shifted,
        p,
        title="mood ring",
        special=[t in special for t in reading.tokens],
        meta=meta,
    )
    annotated = insert_notes(text, spans)
    write_json(
        out / "moodring.json",
        {
            "prompt": prompt,
            "reply": reading.reply,
            "annotated": annotated,
            "names": ring.names,
            "layer": ring.layer,
            "prompt_length": p,
            "tokens": reading.tokens,
            "readings": [[round(float(v), 3) for v in row] for row in z],
            "spans": [dataclasses.asdict(s) for s in spans],
        },
    )
    print(annotated)
    print(f"\n{len(spans)} annotated spans; wrote {page}, {png}, {out / 'moodring.json'}")
    return 0


def run_experiment(args: argparse.Namespace) -> int:
    from ..core.model import device_of
    from ..experiment.arms import NO_BIAS, prepare_arms
    from ..experiment.moodring import load_scenarios, run_moodring
    from ..experiment.moodring_report import table_rows, text_table, write_moodring_report
    from ..experiment.results import TRIALS, read_trials

    t0 = time.perf_counter()
    settings = from_args(MoodringSettings, args)
    scenarios = load_scenarios(args.scenarios)
    arms = list(dict.fromkeys(args.arms))
    if args.bias and not pathlib.Path(args.bias).exists():
        raise FileNotFoundError(f"bias file not found: {args.bias}")
    for arm in arms:
        if arm == "bias" and not args.bias:
            print(f"skipping arm bias: {NO_BIAS}", flush=True)
    arms = [a for a in arms if a != "bias" or args.bias]
    if not arms:
        raise ValueError("no arm left to run")
    model, out = _setup(args, "runs/moodring-experiment")
    ring = emotion_ring(model, out, args.vectors)
    ablation = AblationSpec(weights=args.ablation_weights)
    interventions, arm_settings, _ = prepare_arms(model, arms, out, ablation, args.bias)
    run_settings = {
        "backend": args.backend,
        "dtype": args.dtype,
        "device": device_of(model).type,
        "scenarios": [s.id for s in scenarios],
        "arms": arm_settings,
    }
    counts = run_moodring(model, ring, out, interventions, settings, scenarios, run_settings)
    ids = {
        f"{a}/{s.id}/{kind}"
        for a in arms
        for s in scenarios
        for kind in ("reasoning", "plain", "annotated", "control")
    }
    records = [r for r in read_trials(out / TRIALS) if r["id"] in ids]
    report = write_moodring_report(
        out,
        records,
        {"model": getattr(model, "moia_name", args.model), **run_settings, "settings": settings.__dict__},
    )
    print(text_table(table_rows(report["metrics"])))
    print(
        f"{counts['ran']} records run, {counts['already']} resumed, in {time.perf_counter() - t0:.0f} s; "
        f"report: {out / 'report.md'}"
    )
    return 0
