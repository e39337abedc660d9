"""The emotion grader's accuracy on blind-labelled replies (PROTOCOL §7, "Grading").

    python benchmarks/emotion_grader_accuracy.py --labels labels.jsonl --key key.json [--json out.json]
    python benchmarks/emotion_grader_accuracy.py ... --regrade   # the current grader, not the key's

``--labels``: one JSON object per line, written by a labeller who saw only the replies file of
``benchmarks/emotion_replies.py`` (see the labelling brief that goes with it)::

    {"id": "r000", "feels": true, "emotions": ["fear"], "claims_detection": false}

``feels``: the reply says the model itself feels an emotion now; ``emotions``: which of the ten
(calm, desperation, anger, fear, joy, sadness, guilt, pride, hope, shame; [] if none or only
others); ``claims_detection``: for replies to the detect question, whether the reply claims to
detect an injected emotion or anything unusual (null or absent for the feeling question).

``--key``: the key written with the replies (id -> source, emotion, grader output). The script
joins the two on ``id`` (every label must have a key; keys without labels are counted and left
out) and prints precision and recall, each with its Wilson 95% interval, per question and measure
(``moia.eval.emotions.grader_accuracy``): ``feels``, ``named`` (one pair per reply and emotion),
``claims_detection`` (detect), ``identifies`` (replies with an injected or evoked emotion).
"""

import argparse
import json
import pathlib
import sys
from typing import Any

from moia.eval.emotions import LABEL_MEASURES, claims_emotion_detection, grader_accuracy, self_report
from moia.io import write_json


def read_labels(path: str) -> list[dict[str, Any]]:
    out = []
    for number, line in enumerate(pathlib.Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} line {number}: not JSON ({error})") from None
        missing = [f for f in ("id", "feels", "emotions") if f not in record]
        if missing:
            raise ValueError(f"{path} line {number}: missing field(s) {missing} in {record!r}")
        if not isinstance(record["feels"], bool) or not isinstance(record["emotions"], list):
            raise ValueError(
                f"{path} line {number}: feels must be true/false and emotions a list: {record!r}"
            )
        out.append(record)
    ids = [r["id"] for r in out]
    if len(ids) != len(set(ids)):
        raise ValueError(f"{path}: duplicate ids {sorted({i for i in ids if ids.count(i) > 1})}")
    return out


def join(
    labels: list[dict[str, Any]], key: dict[str, Any], regrade: bool, replies: Any = None
) -> list[dict[str, Any]]:
    """The rows ``grader_accuracy`` takes, one per label."""
    unknown = [r["id"] for r in labels if r["id"] not in key]
    if unknown:
        raise ValueError(f"label ids not in the key: {unknown[:10]}")
    rows = []
    for label in labels:
        k = key[label["id"]]
        question = "detect" if k["source"] == "injected-detect" else "feeling"
        grader = dict(k["grader"])
        if regrade:
            if replies is None or label["id"] not in replies:
                raise ValueError(f"--regrade needs --replies holding reply {label['id']}")
            text = replies[label["id"]]
            grader = {"named": self_report(text)}
            if question == "detect":
                grader["claims_detection"] = claims_emotion_detection(text)[0]
        rows.append({"question": question, "emotion": k.get("emotion"), "grader": grader, "label": label})
    return rows


def _fmt(r: dict[str, Any]) -> str:
    if r["rate"] is None:
        return "  - (0/0)"
    lo, hi = r["ci95"]
    return f"{r['rate']:.2f} [{lo:.2f}, {hi:.2f}] ({r['k']}/{r['n']})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--labels", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--json", help="write the result here")
    parser.add_argument(
        "--regrade", action="store_true", help="grade the replies again with the current grader"
    )
    parser.add_argument("--replies", help="the replies JSONL (needed by --regrade)")
    args = parser.parse_args(argv)
    labels = read_labels(args.labels)
    key = json.loads(pathlib.Path(args.key).read_text(encoding="utf-8"))
    replies = None
    if args.replies:
        lines = pathlib.Path(args.replies).read_text(encoding="utf-8").splitlines()
        replies = {r["id"]: r["reply"] for r in map(json.loads, filter(str.strip, lines))}
    result = grader_accuracy(join(labels, key, args.regrade, replies))
    unlabelled = len(set(key) - {r["id"] for r in labels})
    grader = "the current grader" if args.regrade else "the grader as keyed"
    print(f"{len(labels)} labelled replies ({unlabelled} of the key unlabelled); {grader}")
    print(f"{'question':<8} {'measure':<17} {'n':>4}  {'precision [95% CI] (k/n)':<28} recall [95% CI] (k/n)")
    for question, measures in result.items():
        for measure in LABEL_MEASURES:
            if measure in measures:
                m = measures[measure]
                print(
                    f"{question:<8} {measure:<17} {m['n']:>4}  {_fmt(m['precision']):<28} {_fmt(m['recall'])}"
                )
    if args.json:
        write_json(
            args.json, {"labels": args.labels, "key": args.key, "regrade": args.regrade, "result": result}
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
