"""``moia directions``: extract concept vectors or refusal directions and save them as safetensors.

    moia directions concepts --layers 0.6 --words Dust Trees --out cv.safetensors
    moia directions concepts --word-list test --layers 10 15 --out test_concepts.safetensors
    moia directions refusal --model smollm2-135m-instruct --out refusal.safetensors

Layers are decoder layer indices (``10``) or depth fractions (``0.6``); see ``moia.core.layers``.
"""

import argparse
import math
from typing import Any

from ..io import writable_file
from .options import add_model_options, layer_arg, load_model_from_args


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("directions", help="extract concept vectors or refusal directions")
    sub = parser.add_subparsers(dest="directions_command", metavar="KIND", required=True)

    common = argparse.ArgumentParser(add_help=False)
    add_model_options(common)
    common.add_argument("--out", required=True, help="the .safetensors file to write")
    common.add_argument(
        "--system",
        default=None,
        help="the system turn (default: none, as [MOIA]'s code; '' = an explicit empty one)",
    )
    common.add_argument("--batch-size", type=int, default=16)

    concepts = sub.add_parser("concepts", parents=[common], help="concept vectors (PROTOCOL §1)")
    concepts.add_argument("--layers", type=layer_arg, nargs="+", required=True, help="indices and/or depths")
    words = concepts.add_mutually_exclusive_group(required=True)
    words.add_argument("--words", nargs="+", help="concept words")
    words.add_argument("--word-list", help="a shipped list: test, extra, baseline or an extra category")
    concepts.add_argument("--baseline-words", nargs="+", help="default: the 100 shipped baseline words")
    concepts.add_argument("--lowercase", action="store_true", help="[LINDSEY]'s lower-case words")
    concepts.add_argument("--prompt", default="Tell me about {word}")
    concepts.set_defaults(func=run_concepts)

    refusal = sub.add_parser("refusal", parents=[common], help="refusal directions (PROTOCOL §4)")
    refusal.add_argument("--harmful", default="harmful", help="shipped name or .json/.jsonl/.csv file")
    refusal.add_argument("--harmless", default="harmless", help="shipped name or .json/.jsonl/.csv file")
    refusal.add_argument("--layers", type=layer_arg, nargs="+", help="layers evaluated in the selection")
    refusal.add_argument("--positions", type=int, nargs="+", help="negative post-instruction positions")
    refusal.add_argument("--no-select", action="store_true", help="candidates only, no selection")
    refusal.add_argument("--ablation-site", choices=("writers", "resid_post", "resid_pre"), default="writers")
    refusal.add_argument("--n-train", type=int, default=128, help="train prompts per set ([ARDITI]: 128)")
    refusal.add_argument("--n-val", type=int, default=32, help="val prompts per set ([ARDITI]: 32)")
    refusal.add_argument(
        "--no-filter", action="store_true", help="keep prompts the model does not score as [ARDITI] wants"
    )
    refusal.add_argument("--full-table", action="store_true", help="score every candidate on every filter")
    refusal.set_defaults(func=run_refusal)


def run_concepts(args: argparse.Namespace) -> int:
    from ..directions.concepts import concept_vectors, concept_words

    words = args.words or concept_words(args.word_list)
    writable_file(args.out, "--out")  # before the model loads
    cv = concept_vectors(
        load_model_from_args(args),
        words,
        args.layers,
        baseline_words=args.baseline_words,
        capitalize=not args.lowercase,
        prompt=args.prompt,
        system=args.system,
        batch_size=args.batch_size,
        progress=True,
    )
    cv.save(args.out)
    print(f"wrote {len(cv.words)} words x layers {cv.layers} (d_model {cv.d_model}) to {args.out}")
    return 0


def run_refusal(args: argparse.Namespace) -> int:
    from ..directions.prompts import load_prompts
    from ..directions.refusal import refusal_directions

    writable_file(args.out, "--out")  # before the model loads, as are the prompt files
    harmful, harmless = load_prompts(args.harmful), load_prompts(args.harmless)
    rd = refusal_directions(
        load_model_from_args(args),
        harmful,
        harmless,
        layers=args.layers,
        positions=args.positions,
        select=not args.no_select,
        n_train=args.n_train,
        n_val=args.n_val,
        filter_prompts=not args.no_filter,
        system=args.system,
        ablation_site=args.ablation_site,
        full_table=args.full_table,
        batch_size=args.batch_size,
        progress=True,
    )
    rd.save(args.out)
    print(f"wrote candidates {tuple(rd.candidates.shape)} (positions {rd.positions}) to {args.out}")
    if rd.selected_layer is not None:
        status = "passed all filters" if rd.selection_passed else f"relaxed: {', '.join(rd.relaxed)}"
        print(f"selected layer {rd.selected_layer}, position {rd.selected_position} ({status})")
        print(f"{'layer':>5} {'pos':>4} {'ablation':>9} {'addition':>9} {'kl':>8}  passed")
        for row in sorted(rd.table, key=lambda r: r["ablation_score"])[:10]:
            a, add, kl = (_fmt(row[k]) for k in ("ablation_score", "addition_score", "kl"))
            print(f"{row['layer']:>5} {row['position']:>4} {a:>9} {add:>9} {kl:>8}  {row['passed']}")
    return 0


def _fmt(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.3f}"
