"""``moia demo``: a handful of injected-thought trials on the default model, printed.

Loads the model, extracts concept vectors for a few test words (PROTOCOL §1), then runs injected
and control trials (PROTOCOL §2, the [MOIA] variant) in ONE batched generate call -- per-row
vectors, strengths and starts, control rows at strength 0 -- and prints each reply with its grade
(PROTOCOL §3). The full experiment is ``moia reproduce``.
"""

import argparse
import time
from typing import Any

import torch

from ..core.layers import resolve_layer
from ..core.model import LanguageModel
from ..directions.concepts import concept_vectors
from ..eval.grading import CONTROL_CONCEPT, grade
from ..trials.prompt import build_trial
from ..trials.runner import TrialRow, TrialRunner
from .options import add_model_options, layer_arg, load_model_from_args


def run_demo(
    model: LanguageModel,
    words: list[str],
    layer: float | int = 0.6,
    strength: float = 4.0,
    trial: int = 1,
    max_new_tokens: int = 40,
) -> list[dict[str, Any]]:
    """One injected trial per word plus as many controls, in one batch; one record per row."""
    layer_idx = resolve_layer(model, layer)
    cv = concept_vectors(model, words, [layer_idx])
    prompt = build_trial(model, trial)
    rows = [TrialRow(prompt, cv[w, layer_idx], layer_idx, strength) for w in words]
    rows += [TrialRow(prompt) for _ in words]
    replies = TrialRunner(model, max_new_tokens, batch_size=len(rows)).generate(rows)
    records = []
    for i, (row, reply) in enumerate(zip(rows, replies, strict=True)):
        word = words[i] if row.injected else None
        g = grade(reply, word or CONTROL_CONCEPT)
        records.append(
            {
                "concept": word,
                "layer": layer_idx,
                "strength": row.strength,
                "reply": reply,
                "claims_detection": g.claims_detection,
                "identifies": g.identifies if word else None,
            }
        )
    return records


def main(args: argparse.Namespace) -> int:
    torch.set_grad_enabled(False)
    t0 = time.time()
    model = load_model_from_args(args)
    print(f"loaded {args.model} ({args.backend}) in {time.time() - t0:.1f}s")
    records = run_demo(model, args.words, args.layer, args.strength, args.trial, args.max_new_tokens)
    for r in records:
        kind = f"inject {r['concept']!r} x{r['strength']:g} @L{r['layer']}" if r["concept"] else "control"
        verdict = "claims detection" if r["claims_detection"] else "no detection"
        if r["identifies"]:
            verdict += ", identifies"
        print(f"\n[{kind}] ({verdict})\n  {r['reply'].strip()}")
    print(f"\n{len(records)} trials in {time.time() - t0:.1f}s")
    return 0


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("demo", help="a few injected and control trials, printed")
    add_model_options(p)
    p.add_argument("--words", nargs="+", default=["Dust", "Oceans", "Trumpets"])
    p.add_argument(
        "--layer",
        type=layer_arg,
        default=0.6,
        help="injection layer: an index or a depth fraction (default 0.6)",
    )
    p.add_argument("--strength", type=float, default=4.0)
    p.add_argument("--trial", type=int, default=1)
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.set_defaults(func=main)
