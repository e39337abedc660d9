"""Draw real replies of the emotion experiments for blind labelling (PROTOCOL §7, "Grading").

    python benchmarks/emotion_replies.py RUN_DIR [RUN_DIR ...] --n 150 --out replies.jsonl --key key.json

Reads ``trials.jsonl`` (injected trials, free replies only: the forced arm's continuations are not
replies) and ``natural/natural.jsonl`` or ``natural.jsonl`` of each run folder, keeps one reply per
distinct text (greedy decoding repeats itself), draws them stratified by source (injected trials
asked the detect question, injected trials asked the feeling question, natural scenarios) with a
fixed seed, and writes two files:

- ``--out`` (JSONL): what a labeller sees — ``id``, ``question`` ("detect" or "feeling"), the
  question's text and the ``reply``; never the emotion injected or evoked, the arm, the vector
  kind, whether the trial was a control, or what the grader said;
- ``--key`` (JSON): ``{id: {condition, source, arm, kind, emotion, strength, run, trial_id, grader}}``
  (``condition`` is "arm/source/kind", e.g. "ablation/injected-detect/random"), where
  ``emotion`` is the injected or evoked emotion (None for controls and random directions) and
  ``grader`` the rule grader's output at drawing time: ``named`` (``self_report``) and, for detect
  replies, ``claims_detection`` and ``rule`` (``claims_emotion_detection``).

``benchmarks/emotion_grader_accuracy.py`` scores the grader on a labeller's answers.
"""

import argparse
import json
import pathlib
import random
from typing import Any

from moia.eval.emotions import claims_emotion_detection, self_report
from moia.io import write_json, write_text
from moia.trials.emotions import EMOTION_QUESTIONS, FEELING_QUESTION

TEXT = {"detect": EMOTION_QUESTIONS["detect"].replace("Trial {n}: ", ""), "feeling": FEELING_QUESTION}


def _lines(path: pathlib.Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def grader_output(question: str, reply: str) -> dict[str, Any]:
    """What the rule grader says of ``reply`` (the fields ``grader_accuracy`` compares)."""
    out: dict[str, Any] = {"named": self_report(reply)}
    if question == "detect":
        claims, rule = claims_emotion_detection(reply)
        out.update(claims_detection=claims, rule=rule)
    return out


def collect(runs: list[str]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(shown record, key record) for every free reply in the run folders."""
    out = []
    for run in runs:
        folder = pathlib.Path(run)
        if not folder.is_dir():
            raise FileNotFoundError(f"run folder not found: {run}")
        for r in _lines(folder / "trials.jsonl"):
            if r.get("forced") or "question" not in r:
                continue
            key = {
                "source": f"injected-{r['question']}",
                "arm": r["arm"],
                "kind": r["kind"],
                "emotion": r["concept"] if r["kind"] == "concept" else None,
                "strength": r["strength"],
            }
            out.append(
                (
                    {"question": r["question"], "reply": r["response"]},
                    {**key, "run": run, "trial_id": r["id"]},
                )
            )
        for name in ("natural/natural.jsonl", "natural.jsonl"):
            for r in _lines(folder / name):
                key = {"source": "natural", "arm": r["arm"], "kind": "scenario", "emotion": r["emotion"]}
                key.update(strength=None, run=run, trial_id=r["id"])
                out.append(({"question": "feeling", "reply": r["response"]}, key))
    return out


def draw(
    pool: list[tuple[dict[str, Any], dict[str, Any]]], n: int, seed: int
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """``n`` items (fewer if the pool is short) of distinct reply texts, an equal share per source
    first, the rest from what is left, in a shuffled order."""
    if n < 1:
        raise ValueError(f"--n must be >= 1, got {n}")
    rng = random.Random(seed)
    order = list(pool)
    rng.shuffle(order)
    seen: set[str] = set()
    distinct = []
    for item in order:
        if item[0]["reply"].strip() not in seen:
            seen.add(item[0]["reply"].strip())
            distinct.append(item)
    by_source: dict[str, list[int]] = {}
    for i, item in enumerate(distinct):
        by_source.setdefault(item[1]["source"], []).append(i)
    share = max(1, n // max(1, len(by_source)))
    chosen = [i for idx in by_source.values() for i in idx[:share]]
    rest = [i for i in range(len(distinct)) if i not in set(chosen)]
    chosen += rest[: max(0, n - len(chosen))]
    rng.shuffle(chosen)
    return [distinct[i] for i in chosen]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--n", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="replies JSONL (what the labeller sees)")
    parser.add_argument("--key", required=True, help="key JSON (id -> condition, emotion, grader output)")
    args = parser.parse_args()
    chosen = draw(collect(args.runs), args.n, args.seed)
    replies, keys = [], {}
    for i, (shown, key) in enumerate(chosen):
        rid = f"r{i:03d}"
        question = shown["question"]
        replies.append(
            {"id": rid, "question": question, "question_text": TEXT[question], "reply": shown["reply"]}
        )
        condition = f"{key['arm']}/{key['source']}/{key['kind']}"
        keys[rid] = {"condition": condition, **key, "grader": grader_output(question, shown["reply"])}
    write_text(args.out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in replies))
    write_json(args.key, keys)
    counts: dict[str, int] = {}
    for k in keys.values():
        counts[k["source"]] = counts.get(k["source"], 0) + 1
    print(f"wrote {len(replies)} replies to {args.out} ({counts}) and their key to {args.key}")


if __name__ == "__main__":
    main()
