"""``moia train-bias``: train the content-agnostic bias vector under FPR <= ε (PROTOCOL §5).

    moia train-bias --out bias.safetensors --report r.json      # certified on D0, 400/100 concepts
    moia train-bias --out b.safetensors --report r.json --epsilon 0.01 --alpha 0.05 \
        --calibration-units 300 --test-units 299 --max-steps 60 --surrogate margin --mode certified
    moia train-bias --out b.safetensors --mode moia --epsilon none   # [MOIA]'s recipe as published
    moia train-bias --out b.safetensors --n-train 40 --n-heldout 15 --steps 60 --max-new-tokens 30
    moia train-bias --out b.safetensors --resume                # continue an interrupted run
    moia train-bias --out b.safetensors --sweep-layers 0.3 0.4 0.5 --n-val 20

The default mode trains under FPR <= epsilon on the control distribution D0 (``--d0``: paraphrased
control prompts, greedy, or sampled replies) and certifies the chosen bias once on a held-out test
split against b = 0 on the same units; ``report.json`` holds that ``certification``.
Concepts: the 500 shipped words (``test`` + ``extra``), split train/held-out with ``--seed``
(42, as [MOIA]). ``--evaluate`` measures held-out detection and introspection with and without
the bias, next to random directions of equal norm, and stores the report in the bias file. The
checkpoint (default ``OUT`` with ``.ckpt.safetensors``) makes ``--resume`` continue to the same
result as an uninterrupted run.
"""

import argparse
import pathlib
from typing import Any

from ..core.model import LanguageModel
from ..directions.bias import BiasVector
from ..io import writable_file, write_json
from ..training.config import TrainConfig
from .options import add_model_options, add_options, from_args, layer_arg, load_model_from_args


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "train-bias",
        help="train the bias vector under an FPR constraint (PROTOCOL §5)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_options(p)
    p.add_argument("--out", required=True, help="the bias .safetensors file to write")
    p.add_argument("--checkpoint", help="checkpoint file (default: OUT with .ckpt.safetensors)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint if it exists")
    add_options(p, TrainConfig)
    p.add_argument("--n-heldout", type=int, help="held-out concepts (default 20%% of all)")
    p.add_argument("--n-train", type=int, help="use only the first N train concepts of the split")
    p.add_argument("--sweep-layers", type=layer_arg, nargs="+", help="train one bias per layer, pick on val")
    p.add_argument("--n-val", type=int, default=20, help="validation concepts (taken from the train split)")
    p.add_argument("--evaluate", action="store_true", help="held-out report with and without the bias")
    p.add_argument("--eval-concepts", type=int, help="evaluate only the first N held-out concepts")
    p.add_argument("--eval-layers", type=layer_arg, nargs="+", help="default [MOIA]'s depths 30/40/50 of 62")
    p.add_argument("--eval-strengths", type=float, nargs="+", default=[2.0, 4.0])
    p.add_argument("--report", help="also write the results as JSON here")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return from_args(TrainConfig, args)


def split_from_args(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    from ..directions.concepts import concept_words
    from ..training.data import split_concepts

    train, held_out = split_concepts(
        concept_words("test") + concept_words("extra"), args.n_heldout, seed=args.seed
    )
    if args.n_train is not None:
        if args.n_train < 1:
            raise ValueError(f"--n-train must be >= 1, got {args.n_train}")
        train = train[: args.n_train]
    return train, held_out


def run(args: argparse.Namespace) -> int:
    from ..training.train import sweep_bias_layers, train_bias

    cfg = config_from_args(args)
    train, held_out = split_from_args(args)
    out = pathlib.Path(args.out)
    ckpt = pathlib.Path(args.checkpoint) if args.checkpoint else out.with_suffix(".ckpt.safetensors")
    for path, option in ((out, "--out"), (args.report, "--report"), (ckpt, "--checkpoint")):
        if path is not None:
            writable_file(path, option)  # before the model loads
    if args.resume and ckpt.exists():
        from ..io import load_tensors
        from ..training.checkpoint import KIND

        load_tensors(ckpt, KIND)  # a corrupt or foreign checkpoint is refused before the model loads
    model = load_model_from_args(args)
    if args.resume and not ckpt.exists() and not args.sweep_layers:
        print(f"no checkpoint at {ckpt}: starting afresh")
    if args.sweep_layers:
        from ..training.data import split_concepts

        train, val = split_concepts(train, args.n_val, seed=args.seed)
        bias, _ = sweep_bias_layers(
            model,
            train,
            val,
            args.sweep_layers,
            config=cfg,
            checkpoint_dir=ckpt.parent,
            resume=args.resume,
            progress=not args.quiet,
        )
    else:
        val_concepts: list[str] = []
        if cfg.mode == "certified" and args.n_val:
            from ..training.data import split_concepts

            train, val_concepts = split_concepts(train, args.n_val, seed=args.seed)
        bias = train_bias(
            model,
            train,
            config=cfg,
            checkpoint=ckpt,
            resume=args.resume,
            progress=not args.quiet,
            val_concepts=val_concepts,
        )
    bias.config["held_out_concepts"] = held_out
    _write(bias, out, args.report)  # written before the (long) evaluation, and again after it
    if args.evaluate:
        bias.verification["evaluation"] = _evaluate(model, bias, held_out, args, cfg)
        _write(bias, out, args.report)
    print(summary(bias))
    return 0


def _write(bias: BiasVector, out: pathlib.Path, report_path: str | None) -> None:
    bias.save(out)
    if report_path:
        report = {"config": bias.config, "verification": bias.verification}
        if "certification" in bias.verification:
            report["certification"] = bias.verification["certification"]
        write_json(report_path, report, indent=2)


def _evaluate(
    model: LanguageModel, bias: BiasVector, held_out: list[str], args: argparse.Namespace, cfg: TrainConfig
) -> dict[str, Any]:
    from ..directions.concepts import concept_vectors
    from ..training.config import MOIA_EVAL_DEPTHS
    from ..training.evaluation import evaluate_bias, max_abs_cos

    words = held_out[: args.eval_concepts] if args.eval_concepts else held_out
    cv = concept_vectors(model, words, args.eval_layers or list(MOIA_EVAL_DEPTHS), progress=not args.quiet)
    common: dict[str, Any] = dict(max_new_tokens=cfg.max_new_tokens, system=cfg.system, seed=cfg.seed)
    report = {
        "before": evaluate_bias(model, None, bias.layer, bias.site, cv, args.eval_strengths, **common),
        "after": evaluate_bias(model, bias.vector, bias.layer, bias.site, cv, args.eval_strengths, **common),
        "max_abs_cos_held_out_vectors": max_abs_cos(bias.vector, [cv]),
        "held_out_concepts": words,
    }
    return report


def _pct(r: dict[str, Any]) -> str:
    if not r["n"]:
        return f"- (n={r['n']})"
    return f"{100 * r['rate']:.1f}% [{100 * r['ci95'][0]:.1f}, {100 * r['ci95'][1]:.1f}] (n={r['n']})"


def summary(bias: BiasVector) -> str:
    """A plain-text table of what was measured."""
    v = bias.verification
    lines = [f"bias: layer {bias.layer} ({bias.site}), |b| = {float(bias.vector.norm()):.3f}"]
    if v.get("calibration"):
        c = v["calibration"]
        lines.append(
            f"calibration (step {c['step']}): FPR {c['false_positives']}/{c['n_controls']}, "
            f"detection {c['detected']}/{c['n_injected']}, feasible={v.get('feasible')}"
        )
    if "held_out" in v:
        h = v["held_out"]
        upper = next(val for key, val in h.items() if key.startswith("clopper_pearson_upper"))
        lines.append(
            f"held-out controls (trials {h['held_out_trials'][0]}-{h['held_out_trials'][1]}): FPR "
            f"{h['false_positives']}/{h['n_controls']}, Clopper-Pearson 95% upper {100 * upper:.1f}%; "
            f"replies naming a concept: {h['replies_naming_concepts']}"
        )
    if "certification" in v:
        c, b0 = v["certification"], v["certification"]["baseline"]
        sel = v.get("selection")
        if sel:
            lines.append(
                f"selection on calibration: step {sel['step']}, feasible={sel['feasible']} (upper bound "
                f"<= epsilon' = {sel['epsilon_prime']}); b = 0 violates epsilon on D0: "
                f"{sel['baseline_infeasible']}"
            )
        lines.append(f"certification on {c['n']} test units of D0 ({c['units']}):")
        lines.append(
            f"  b:     {c['false_positives']}/{c['n']} false positives, one-sided upper bound "
            f"{100 * c['upper_bound']:.2f}% at 1 - {c['alpha']}; certified FPR <= {c['epsilon']}: "
            f"{c['certified']}"
        )
        lines.append(
            f"  b = 0: {b0['false_positives']}/{c['n']}, upper bound {100 * b0['upper_bound']:.2f}%; "
            f"McNemar (b raises FPR) p = {c['mcnemar']['p_increase']:.3g}"
        )
    cos = v.get("max_abs_cos_train_vectors")
    if cos:
        lines.append(
            f"max |cos(b, v)| over {cos['n_vectors']} train concept vectors: {cos['max_abs_cos']:.3f}"
        )
    if "evaluation" in v:
        e = v["evaluation"]
        lines.append(f"{'held-out':<28}{'before':<34}after")
        for kind, metric in (("concept", "detection"), ("concept", "introspection"), ("random", "detection")):
            label = f"{metric} ({kind})"
            lines.append(f"{label:<28}{_pct(e['before'][kind][metric]):<34}{_pct(e['after'][kind][metric])}")
        lines.append(
            f"{'FPR (controls, trials 1-10)':<28}{_pct(e['before']['fpr']):<34}{_pct(e['after']['fpr'])}"
        )
    return "\n".join(lines)
