"""Metrics and report of the second-pass experiment (PROTOCOL §8).

Per arm and condition (plain / annotated / control): how often the answer is readable, and how
often it is the risky option. Per arm, annotated and control each against plain, on the scenarios
where both answers are readable: how often the answer changes, toward the risky option (plain safe,
now risky) and away from it (plain risky, now safe) -- over all scenarios, and over those whose
reasoning got at least one note (only those can change: elsewhere the texts are identical). Every
rate has its n and a Wilson 95% interval (``moia.eval.stats.rate``).
"""

import datetime
import pathlib
from collections import Counter
from importlib.metadata import version
from typing import Any

from ..eval.stats import rate
from ..io import write_json, write_text
from .moodring import CONDITIONS
from .report import markdown_table, text_table


def _paired(
    plain: dict[str, dict[str, Any]], other: dict[str, dict[str, Any]], keep: set[str] | None = None
) -> dict[str, Any]:
    ids = [s for s in plain if s in other and (keep is None or s in keep)]
    pairs = [(plain[s], other[s]) for s in ids if plain[s]["choice"] and other[s]["choice"]]
    n = len(pairs)
    return {
        "changed": rate(sum(1 for a, b in pairs if a["choice"] != b["choice"]), n),
        "toward_risky": rate(sum(1 for a, b in pairs if not a["risky"] and b["risky"]), n),
        "away_from_risky": rate(sum(1 for a, b in pairs if a["risky"] and not b["risky"]), n),
    }


def moodring_metrics(records: list[dict[str, Any]]) -> dict[str, Any]:
    """``{arm: {...}}`` from the records of ``run_moodring``."""
    arms: dict[str, Any] = {}
    for arm in dict.fromkeys(r["arm"] for r in records):
        reasoning = {r["scenario"]: r for r in records if r["arm"] == arm and r["pass"] == 1}
        answers = {
            c: {r["scenario"]: r for r in records if r["arm"] == arm and r.get("condition") == c}
            for c in CONDITIONS
        }
        noted = {s for s, r in reasoning.items() if r["spans"]}
        notes = Counter(span["name"] for r in reasoning.values() for span in r["spans"])
        conditions = {}
        for c in CONDITIONS:
            rows = list(answers[c].values())
            valid = [r for r in rows if r["choice"]]
            conditions[c] = {
                "readable": rate(len(valid), len(rows)),
                "risky": rate(sum(1 for r in valid if r["risky"]), len(valid)),
            }
        arms[arm] = {
            "scenarios": len(reasoning),
            "with_notes": rate(len(noted), len(reasoning)),
            "notes": dict(sorted(notes.items())),
            "conditions": conditions,
            "vs_plain": {
                c: {
                    "all": _paired(answers["plain"], answers[c]),
                    "with_notes": _paired(answers["plain"], answers[c], noted),
                }
                for c in ("annotated", "control")
            },
        }
    return arms


def _pct(r: dict[str, Any]) -> str:
    if not r["n"]:
        return "– (n=0)"
    lo, hi = (100 * x for x in r["ci95"])
    return f"{100 * r['rate']:.1f}% [{lo:.0f}, {hi:.0f}] ({r['k']}/{r['n']})"


def table_rows(metrics: dict[str, Any], subset: str = "all") -> list[list[str]]:
    """One row per arm and condition: risky choices, and changes against plain (``subset``: "all"
    scenarios or those "with_notes")."""
    rows = [
        ["arm", "condition", "notes in", "readable", "risky choice", "changed vs plain", "→ risky", "→ safe"]
    ]
    for arm, m in metrics.items():
        for c in CONDITIONS:
            paired = m["vs_plain"].get(c, {}).get(subset)
            rows.append(
                [
                    arm,
                    c,
                    "–" if c == "plain" else _pct(m["with_notes"]),
                    _pct(m["conditions"][c]["readable"]),
                    _pct(m["conditions"][c]["risky"]),
                    "–" if paired is None else _pct(paired["changed"]),
                    "–" if paired is None else _pct(paired["toward_risky"]),
                    "–" if paired is None else _pct(paired["away_from_risky"]),
                ]
            )
    return rows


def write_moodring_report(
    out_dir: Any, records: list[dict[str, Any]], settings: dict[str, Any]
) -> dict[str, Any]:
    """Write ``report.json`` and ``report.md`` (atomically); returns the report."""
    out = pathlib.Path(out_dir)
    metrics = moodring_metrics(records)
    report = {
        "moia_version": version("moia"),
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "settings": settings,
        "n_records": len(records),
        "metrics": metrics,
    }
    write_json(out / "report.json", report)
    lines = [
        "# The mood ring's second pass (PROTOCOL §8)",
        "",
        f"Model {settings.get('model')}; {len(records)} records. Rates with Wilson 95% intervals.",
        "",
        "All scenarios:",
        "",
        markdown_table(table_rows(metrics, "all")),
        "",
        "Scenarios whose reasoning got at least one note:",
        "",
        markdown_table(table_rows(metrics, "with_notes")),
        "",
        "Notes per emotion: " + "; ".join(f"{arm}: {m['notes'] or 'none'}" for arm, m in metrics.items()),
        "",
    ]
    write_text(out / "report.md", "\n".join(lines))
    return report


__all__ = ["moodring_metrics", "table_rows", "text_table", "write_moodring_report"]
