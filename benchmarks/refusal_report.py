"""Does the selected refusal direction mediate refusal? ([ARDITI] §3, PROTOCOL §4.)

On held-out prompts (never used for the means or the selection), greedy generation and the
refusal score:

- harmful prompts, with and without the selected direction ablated at every writer ([ARDITI]);
- harmless prompts, with and without the direction added (coefficient 1) to the output of its layer
  at every position, generated tokens included.

Refusal rate = fraction of replies containing one of ``REFUSAL_PHRASES`` ([ARDITI]'s substring
check). Refusal score = mean log-odds of the refusal tokens at the last prompt position.

    python benchmarks/refusal_report.py --model smollm2-135m-instruct --out /tmp/refusal.safetensors

The held-out split: 25% of each shipped set (``split_prompts(seed=1)``); the rest goes to
``refusal_directions`` (which splits it again into train and val).
"""

import argparse
import json
import time
from typing import Any

import torch

import moia
from moia.core.compile import intervene
from moia.core.interventions import AdditiveVector, DirectionAblation
from moia.directions.prompts import load_prompts, split_prompts
from moia.directions.refusal import RefusalDirections, refusal_directions
from moia.directions.selection import is_refusal, last_logprobs, refusal_score, refusal_token_ids
from moia.lm.chat import format_chat
from moia.lm.decoding import tokenize_prompts


@torch.no_grad()
def mean_score(model: Any, prompts: list[str], *interventions: Any) -> float:
    tokens, mask = tokenize_prompts(model, [format_chat(model, p) for p in prompts])
    with intervene(model, *interventions, attention_mask=mask):
        logprobs = last_logprobs(model, tokens, mask)
    return float(refusal_score(logprobs, refusal_token_ids(model.tokenizer)).mean())


def measure(model: Any, prompts: list[Any], max_new_tokens: int, *interventions: Any) -> dict[str, Any]:
    replies = moia.generate(model, prompts, *interventions, max_new_tokens=max_new_tokens)
    refusals = [is_refusal(r) for r in replies]
    return {
        "refusal_rate": sum(refusals) / len(replies),
        "n": len(replies),
        "refusal_score": mean_score(model, prompts, *interventions),
        "examples": replies[:3],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--directions", help="a saved RefusalDirections file (default: compute them)")
    parser.add_argument("--out", help="where to save the computed directions")
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--json", help="write the numbers here")
    args = parser.parse_args()

    model = moia.load_model(args.model, backend="hooked")  # the backend of the recorded figures
    (harmful, harmful_test), (harmless, harmless_test) = (
        split_prompts(load_prompts(name), 0.25, seed=1) for name in ("harmful", "harmless")
    )
    seconds = None
    if args.directions:
        rd = RefusalDirections.load(args.directions, model)
    else:
        start = time.perf_counter()
        rd = refusal_directions(model, harmful, harmless, progress=True)
        seconds = time.perf_counter() - start
        if args.out:
            rd.save(args.out)
    layer, position, direction = rd.selected
    ablate = DirectionAblation(direction, site="writers")
    add = AdditiveVector(direction, layer, 1.0, site="resid_post")
    report = {
        "model": args.model,
        "selected": {
            "layer": layer,
            "position": position,
            "passed": rd.selection_passed,
            "relaxed": rd.relaxed,
        },
        "selection_seconds": seconds,
        "baseline_val_scores": rd.settings.get("baseline_refusal_score"),
        "harmful": {
            "baseline": measure(model, harmful_test, args.max_new_tokens),
            "ablated": measure(model, harmful_test, args.max_new_tokens, ablate),
        },
        "harmless": {
            "baseline": measure(model, harmless_test, args.max_new_tokens),
            "added": measure(model, harmless_test, args.max_new_tokens, add),
        },
    }
    print(json.dumps(report, indent=1))
    for row in sorted(rd.table, key=lambda r: r["ablation_score"])[:8]:
        print(row)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
