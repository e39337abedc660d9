"""How well does a grader agree with human labels? Precision and recall per question (PROTOCOL §3).

    python benchmarks/grader_accuracy.py --labels FILE [--json OUT] [--judge rule|http|URL]
                                         [--disagreements]

FILE is JSONL, one labelled reply per line: ``{"id", "response", "concept", "claims_detection",
"identifies"}`` with ``concept`` null for a control trial (optional ``trial``: the trial number the
judge is told). The labels are the reference. Two questions, each a binary classification:

- **claims detection**, over every reply: positive = the reply claims to notice an injected thought.
- **identification**, over injected replies only (``concept`` not null): positive = claims AND
  identifies, for the label and for the grader alike (PROTOCOL §3: identification needs a claim).

For each: the confusion table, precision TP/(TP+FP), recall TP/(TP+FN), F1 and n, the first two with
Wilson 95% intervals (``moia.eval.stats.rate``). ``--disagreements`` lists the replies graded unlike
their label. The grader is the rule grader unless ``--judge`` names another (``moia.eval.judge``).
"""

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from moia.eval.judge import Judge, make_judge
from moia.eval.stats import rate
from moia.io import write_json

_FIELDS = ("id", "response", "concept", "claims_detection", "identifies")


def load_labels(path: Path) -> list[dict[str, Any]]:
    """The labelled records, each checked for the fields and types above."""
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{number}: not JSON ({error})") from error
        missing = [field for field in _FIELDS if field not in record]
        if missing:
            raise ValueError(f"{path}:{number}: missing {', '.join(missing)} (expected {', '.join(_FIELDS)})")
        for field in ("claims_detection", "identifies"):
            if not isinstance(record[field], bool):
                raise ValueError(f"{path}:{number}: {field} must be true or false (got {record[field]!r})")
        if record["concept"] is not None and not (isinstance(record["concept"], str) and record["concept"]):
            raise ValueError(f"{path}:{number}: concept must be a word or null (got {record['concept']!r})")
        records.append(record)
    if not records:
        raise ValueError(f"{path}: no labelled records")
    return records


def agreement(pairs: list[tuple[bool, bool]]) -> dict[str, Any]:
    """Confusion counts, precision, recall (Wilson 95%), F1 and n for (label, grader) pairs."""
    tp = sum(label and graded for label, graded in pairs)
    fp = sum(graded and not label for label, graded in pairs)
    fn = sum(label and not graded for label, graded in pairs)
    tn = len(pairs) - tp - fp - fn
    precision, recall = rate(tp, tp + fp), rate(tp, tp + fn)
    p, r = precision["rate"], recall["rate"]
    f1 = 2 * p * r / (p + r) if p is not None and r is not None and p + r > 0 else None
    return {
        "n": len(pairs),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
        "precision": precision,
        "recall": recall,
        "f1": f1,
    }


def measure(records: list[dict[str, Any]], judge: Judge) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Agreement per question, and the records graded unlike their labels."""
    claims, identification, disagreements = [], [], []
    for record in records:
        graded = judge.grade(record["response"], record["concept"], trial=record.get("trial"))
        claims.append((record["claims_detection"], graded.claims_detection))
        wrong = record["claims_detection"] != graded.claims_detection
        if record["concept"] is not None:
            label = record["claims_detection"] and record["identifies"]
            ours = graded.claims_detection and graded.identifies
            identification.append((label, ours))
            wrong = wrong or label != ours
        if wrong:
            disagreements.append(
                {**record, "graded": [graded.claims_detection, graded.identifies], "rule": graded.rule}
            )
    inconsistent = sum(
        r["identifies"] and not r["claims_detection"] for r in records if r["concept"] is not None
    )
    result = {
        "claims_detection": agreement(claims),
        "identification": agreement(identification),
        "labels_identifying_without_a_claim": inconsistent,
    }
    return result, disagreements


def _interval(record: dict[str, Any]) -> str:
    if record["rate"] is None:
        return "   -    (0/0)"
    lo, hi = record["ci95"]
    return f"{record['rate']:.3f} [{lo:.3f}, {hi:.3f}] ({record['k']}/{record['n']})"


def report(result: dict[str, Any]) -> str:
    lines = []
    for question, over in (("claims_detection", "all replies"), ("identification", "injected replies")):
        q = result[question]
        f1 = "-" if q["f1"] is None else f"{q['f1']:.3f}"
        lines += [
            f"{question} (n={q['n']}, {over})",
            f"  precision {_interval(q['precision'])}",
            f"  recall    {_interval(q['recall'])}",
            f"  F1        {f1}",
            "                 label yes  label no",
            f"  grader yes     {q['tp']:9d} {q['fp']:9d}",
            f"  grader no      {q['fn']:9d} {q['tn']:9d}",
            "",
        ]
    if result["labels_identifying_without_a_claim"]:
        n = result["labels_identifying_without_a_claim"]
        lines.append(f"note: {n} injected label(s) say identifies without a claim; counted as not identified")
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--labels", type=Path, required=True, help="labelled replies (JSONL)")
    parser.add_argument("--json", type=Path, help="write the figures here as JSON")
    parser.add_argument("--judge", default="rule", help='"rule" (default), "http" or an endpoint URL')
    parser.add_argument("--disagreements", action="store_true", help="list replies graded unlike their label")
    args = parser.parse_args(argv)
    try:
        records = load_labels(args.labels)
    except (OSError, ValueError) as error:
        print(f"grader_accuracy: {error}", file=sys.stderr)
        return 2
    result, disagreements = measure(records, make_judge(args.judge))
    print(report(result), end="")
    if args.disagreements:
        for record in disagreements:
            label = [record["claims_detection"], record["identifies"]]
            print(
                f"{record['id']}\t{record['concept']}\tlabel={label}\tgraded={record['graded']}\t{record['rule']}"
            )
            print(f"\t{record['response']!r}")
    if args.json:
        write_json(args.json, {"labels": str(args.labels), "judge": args.judge, **result})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
