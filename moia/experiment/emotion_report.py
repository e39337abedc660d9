"""The emotion experiments' report (PROTOCOL §7): report.json, report.md and heatmaps.

Injected trials use ``moia.experiment.report``'s metrics, tables and heatmaps once per question
(heatmaps in ``heatmaps/<question>/``). For the feeling question, "detection" is "the reply reports
an emotion of its own" and "introspection" is "it names the injected emotion"; the headers say so.
Per arm and question the report adds the naming chance rate: the mean over emotions e of
P(the reply names e | control trial), what naming "the injected emotion" would score if injection
did nothing. The natural experiment's metrics (``moia.experiment.natural``) get their own table.
"""

import datetime
import pathlib
from importlib.metadata import version
from typing import Any

from ..eval.stats import rate
from ..io import write_json, write_text
from .report import compute_metrics, fmt, heatmaps, markdown_table, table_rows

HEADERS = {
    "feeling": {
        "detection": "reports an emotion",
        "detection (random)": "reports an emotion (random)",
        "FPR": "reports an emotion (control)",
        "introspection": "names the injected emotion",
        "id given claim": "names it, given a report",
    },
    "detect": {"forced id": "forced naming", "forced id (random)": "forced naming (random)"},
}


def naming_chance(records: list[dict[str, Any]], emotions: list[str]) -> dict[str, Any]:
    """Mean over ``emotions`` of the rate at which free control replies name that emotion."""
    controls = [r for r in records if r["kind"] == "control" and not r["forced"]]
    if not controls or not emotions:
        return rate(0, 0)
    hits = sum(e in r.get("named", []) for r in controls for e in emotions)
    return {**rate(hits, len(controls) * len(emotions)), "note": "control replies naming a given emotion"}


def injected_metrics(records: list[dict[str, Any]], emotions: list[str]) -> dict[str, Any]:
    """``{question: {"metrics": compute_metrics(...), "naming_chance": {arm: rate}}}``."""
    out = {}
    for question in dict.fromkeys(r["question"] for r in records):
        mine = [r for r in records if r["question"] == question]
        out[question] = {
            "metrics": compute_metrics(mine),
            "naming_chance": {
                arm: naming_chance([r for r in mine if r["arm"] == arm], emotions)
                for arm in dict.fromkeys(r["arm"] for r in mine)
            },
        }
    return out


def _renamed(rows: list[list[str]], question: str) -> list[list[str]]:
    names = HEADERS.get(question, {})
    return [[names.get(c, c) for c in rows[0]], *rows[1:]]


def natural_rows(metrics: dict[str, Any]) -> list[list[str]]:
    header = [
        "arm",
        "probe reads the scenario's emotion",
        "reports an emotion",
        "report names the scenario's emotion",
    ]
    rows = [[*header, "report names the probe's emotion"]]
    for arm, m in metrics.items():
        cells = [arm]
        for key in (
            "probe_reads_scenario",
            "reports_any_emotion",
            "report_names_scenario",
            "report_names_probe",
        ):
            chance = f" (chance {100 * m[key]['chance']:.1f}%)" if "chance" in m[key] else ""
            cells.append(fmt(m[key], ci=True) + chance)
        rows.append(cells)
    return rows


def write_emotion_report(
    out_dir: Any,
    records: list[dict[str, Any]],
    emotions: list[str],
    settings: dict[str, Any],
    natural: Any = None,
) -> dict[str, Any]:
    """Write report.json, report.md and the heatmaps; return the report."""
    out = pathlib.Path(out_dir)
    report = {
        "moia_version": version("moia"),
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "model": settings.get("model"),
        "settings": settings,
        "n_trials": len(records),
        "injected": injected_metrics(records, emotions),
        "natural": natural,
    }
    write_json(out / "report.json", report)
    s = settings
    lines = [
        "# Emotion introspection",
        "",
        f"Model `{report['model']}`, moia {report['moia_version']}, {len(records)} injected trials, created "
        f"{report['created']}. Emotion vectors at layer {s.get('layer')}, system turn {s.get('system')!r}, "
        f"temperature {s.get('temperature')}, {s.get('max_new_tokens')} new tokens, rule grader "
        "(`moia.eval.emotions`).",
        "",
        "Rates with Wilson 95% intervals and (k/n). `concept` in the data is the injected emotion.",
        "",
    ]
    report["heatmaps"] = {}
    for question, q in report["injected"].items():
        lines += [
            f"## Injected, question `{question}`",
            "",
            markdown_table(_renamed(table_rows(q["metrics"], ci=True), question)),
            "",
        ]
        for arm, chance in q["naming_chance"].items():
            lines.append(f"- `{arm}`: naming chance (controls naming a given emotion) {fmt(chance, True)}")
        lines.append("")
        folder = out / "heatmaps" / question
        folder.mkdir(parents=True, exist_ok=True)
        report["heatmaps"][question] = [f"heatmaps/{question}/{p}" for p in heatmaps(q["metrics"], folder)]
    if natural:
        lines += ["## Natural scenarios", "", markdown_table(natural_rows(natural)), ""]
        for arm, m in natural.items():
            lines.append(f"- `{arm}`: first emotion named {m['first_named']}; probe reads {m['probe_read']}")
        lines.append("")
    write_text(out / "report.md", "\n".join(lines))
    return report
