"""Metrics of an injected-thought sweep and its report: report.json, report.md, heatmaps (PROTOCOL §3).

Per arm × vector kind (concept / random) × injection layer × strength:

- detection rate (TPR) = P(claims | injected), free trials;
- introspection rate = P(claims and identifies | injected);
- identification given claim = P(identifies | claims, injected);
- forced identification = P(names the concept | forced prefill, injected).

Per arm, from its control trials (no injection): the false-positive rate P(claims | control) and
the forced controls' naming rate (how often the prefill alone names the concept). Controls do not
depend on the injection layer or strength, so an arm's FPR is one number.

Every rate comes with its n and a Wilson 95% interval; every injected rate also with a 95%
interval that resamples concepts (trials of one concept are not independent), and every FPR with
its exact one-sided 95% upper bound (Clopper–Pearson), and the report says how little a bound
from few controls excludes. Detection of concept vectors is reported next to detection of random
directions of the same norm ([LINDSEY]'s control): detection above the random-direction rate (and
above the FPR) is the evidence of introspection.
"""

import datetime
import os
import pathlib
from collections.abc import Callable, Iterable
from importlib.metadata import version
from typing import Any

from ..eval.stats import rate
from ..io import atomic_path, write_json, write_text


def _count(
    records: Iterable[dict[str, Any]], hit: Callable[[dict[str, Any]], bool], by_concept: bool = False
) -> dict[str, Any]:
    """The rate of ``hit`` among ``records``; ``by_concept`` adds the concept-clustered interval."""
    clusters: dict[Any, list[int]] = {}
    for r in records:
        cluster = clusters.setdefault(r["concept"] if by_concept else None, [0, 0])
        cluster[0] += bool(hit(r))
        cluster[1] += 1
    k, n = sum(c[0] for c in clusters.values()), sum(c[1] for c in clusters.values())
    return rate(k, n, [(a, b) for a, b in clusters.values()] if by_concept else None)


def compute_metrics(records: list[dict[str, Any]]) -> dict[str, Any]:
    """``{"arms": {arm: {"fpr", "forced_control_naming"}}, "cells": [...]}`` from trial records."""
    arms: dict[str, dict[str, Any]] = {}
    groups: dict[tuple[str, str, int, float], list[dict[str, Any]]] = {}
    for r in records:
        arms.setdefault(r["arm"], {})
        if r["kind"] != "control":
            groups.setdefault((r["arm"], r["kind"], r["layer"], r["strength"]), []).append(r)
    for arm, out in arms.items():
        controls = [r for r in records if r["arm"] == arm and r["kind"] == "control"]
        out["fpr"] = _count([r for r in controls if not r["forced"]], lambda r: r["claims_detection"])
        out["forced_control_naming"] = _count(
            [r for r in controls if r["forced"]], lambda r: r["names_concept"]
        )
    cells = []
    for (arm, kind, layer, strength), group in sorted(groups.items(), key=lambda kv: _order(kv[0], arms)):
        free = [r for r in group if not r["forced"]]
        claimed = [r for r in free if r["claims_detection"]]
        cells.append(
            {
                "arm": arm,
                "kind": kind,
                "layer": layer,
                "depth": group[0]["depth"],
                "strength": strength,
                "detection": _count(free, lambda r: r["claims_detection"], True),
                "introspection": _count(free, lambda r: r["claims_detection"] and r["identifies"], True),
                "identification_given_claim": _count(claimed, lambda r: r["identifies"], True),
                "forced_identification": _count(
                    [r for r in group if r["forced"]], lambda r: r["names_concept"], True
                ),
            }
        )
    return {"arms": arms, "cells": cells}


def _order(key: tuple[str, str, int, float], arms: dict[str, Any]) -> tuple[int, int, float, int]:
    arm, kind, layer, strength = key
    return list(arms).index(arm), layer, strength, 0 if kind == "concept" else 1


# --------------------------------------------------------------------------------- tables
def _pct(interval: list[float]) -> str:
    return f"[{100 * interval[0]:.1f}, {100 * interval[1]:.1f}]"


def fmt(m: dict[str, Any] | None, ci: bool = False, upper: bool = False) -> str:
    """``"37.5% (3/8)"``; with ``ci`` the Wilson interval and, where the rate has one, the
    concept-clustered one (``"37.5% (3/8) W[13.7, 69.4] C[0.0, 75.0]"``); with ``upper`` the exact
    one-sided 95% upper bound (``"0.0% (0/10) ≤25.9%"``). ``"-"`` without trials."""
    if not m or not m["n"]:
        return "-"
    text = f"{100 * m['rate']:.1f}% ({m['k']}/{m['n']})"
    if ci:
        text += f" W{_pct(m['ci95'])}"
        if m.get("ci95_clustered"):
            text += f" C{_pct(m['ci95_clustered'])}"
    if upper:
        text += f" ≤{100 * m['upper95']:.1f}%"
    return text


WEAK_BOUND = 0.05  # an FPR bound above this is called out as weak


def fpr_lines(metrics: dict[str, Any]) -> list[str]:
    """One line per arm: its FPR, Wilson interval and exact upper bound, and what a bound from
    few controls cannot exclude (PROTOCOL §3)."""
    lines = []
    for arm, m in metrics["arms"].items():
        f = m["fpr"]
        if not f["n"]:
            lines.append(f"{arm}: no free control trials, so no false-positive rate")
            continue
        line = (
            f"{arm}: FPR {100 * f['rate']:.1f}% ({f['k']}/{f['n']} controls), Wilson 95% {_pct(f['ci95'])}, "
            f"exact one-sided 95% upper bound {100 * f['upper95']:.1f}%"
        )
        if f["upper95"] > WEAK_BOUND:
            line += (
                f" — weak: {f['n']} controls cannot show an FPR below {100 * f['upper95']:.1f}% "
                "([MOIA]'s cells have 500 to 1,500; --controls N)"
            )
        lines.append(line)
    return lines


COLUMNS = (
    ("detection", "concept", "detection"),
    ("detection (random)", "random", "detection"),
    ("FPR", None, "fpr"),
    ("introspection", "concept", "introspection"),
    ("id given claim", "concept", "identification_given_claim"),
    ("forced id", "concept", "forced_identification"),
    ("forced id (random)", "random", "forced_identification"),
)


def table_rows(metrics: dict[str, Any], ci: bool = False) -> list[list[str]]:
    """One row per arm × layer × strength: header first; columns without trials are left out."""
    by_key = {(c["arm"], c["kind"], c["layer"], c["strength"]): c for c in metrics["cells"]}
    keys = list(dict.fromkeys((c["arm"], c["layer"], c["depth"], c["strength"]) for c in metrics["cells"]))
    rows = [["arm", "layer (depth)", "strength", *(name for name, _, _ in COLUMNS)]]
    for arm, layer, depth, strength in keys:
        row = [arm, f"{layer} ({depth:.2f})", f"{strength:g}"]
        for _, kind, metric in COLUMNS:
            if kind is None:
                row.append(fmt(metrics["arms"][arm][metric], ci, upper=True))
            else:
                row.append(fmt((by_key.get((arm, kind, layer, strength)) or {}).get(metric), ci))
        rows.append(row)
    keep = [i for i in range(len(rows[0])) if i < 3 or any(r[i] != "-" for r in rows[1:])]
    return [[r[i] for i in keep] for r in rows]  # columns without any trials dropped


def text_table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(r) + " |" for r in rows]
    lines.insert(1, "|" + "|".join("---" for _ in rows[0]) + "|")
    return "\n".join(lines)


# -------------------------------------------------------------------------------- outputs
def build_report(records: list[dict[str, Any]], settings: dict[str, Any]) -> dict[str, Any]:
    """The content of report.json: metrics plus model, settings and moia version."""
    return {
        "moia_version": version("moia"),
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "model": settings.get("model"),
        "settings": settings,
        "n_trials": len(records),
        "metrics": compute_metrics(records),
    }


def markdown_report(report: dict[str, Any]) -> str:
    s = report["settings"]
    lines = [
        f"# Injected-thought experiment: protocol `{s.get('protocol', 'sweep')}`",
        "",
        f"Model `{report['model']}`, moia {report['moia_version']}, {report['n_trials']} trials, "
        f"created {report['created']}.",
        "",
        f"Protocol `{s.get('protocol', 'sweep')}`, prompt variant `{s.get('variant')}`, system turn "
        f"{s.get('system')!r}, injection from {_inject(s.get('inject_from'))}, {_sampling(s)}, "
        f"{s.get('max_new_tokens')} new tokens, seed {s.get('seed')}, grader `{s.get('judge', 'rule')}`.",
        "",
        "Each rate: % (k/n), W = Wilson 95% interval, C = 95% interval resampling concepts (a "
        "percentile bootstrap over concepts: trials of one concept are not independent; it collapses "
        "to a point where every concept has the same rate, e.g. 0), "
        "≤ = exact one-sided 95% upper bound (Clopper–Pearson). FPR: free control trials (no "
        "injection) of the arm; detection (random): random directions with the concept vector's "
        "norm. Detection is evidence of introspection where it exceeds both.",
        "",
        markdown_table(table_rows(report["metrics"], ci=True)),
        "",
        *(f"- {line}" for line in fpr_lines(report["metrics"])),
    ]
    for arm, m in report["metrics"]["arms"].items():
        if m["forced_control_naming"]["n"]:
            lines.append(
                f"- `{arm}`: forced controls name the concept {fmt(m['forced_control_naming'], True)}"
            )
    return "\n".join(lines) + "\n"


def _inject(inject_from: str | None) -> str:
    return "every position" if inject_from == "all" else "the token before 'Trial n'"


def _sampling(s: dict[str, Any]) -> str:
    """``greedy`` or ``temperature 1, top-k 64, top-p 0.95 (the model's generation_config)``."""
    sampling = s.get("sampling") or {"temperature": s.get("temperature", 0.0)}
    if not sampling.get("temperature"):
        return "greedy"
    k, p = sampling.get("top_k"), sampling.get("top_p")
    return f"sampled at temperature {sampling['temperature']:g}, top-k {k or 'off'}, top-p {p or 'off'}" + (
        f" ({sampling['source']})" if sampling.get("source") else ""
    )


def write_report(out_dir: str | os.PathLike, records: list[dict[str, Any]], settings: dict[str, Any]) -> dict:
    """Write report.json, report.md and one heatmap PNG per arm; return the report."""
    out = pathlib.Path(out_dir)
    report = build_report(records, settings)
    write_json(out / "report.json", report)
    write_text(out / "report.md", markdown_report(report))
    report["heatmaps"] = heatmaps(report["metrics"], out)
    return report


HEATMAP_PANELS = (
    ("detection (concept)", "concept", "detection"),
    ("detection (random)", "random", "detection"),
    ("FPR (controls: one per arm)", None, "fpr"),
    ("introspection (concept)", "concept", "introspection"),
)


def heatmaps(metrics: dict[str, Any], out_dir: pathlib.Path) -> list[str]:
    """One PNG per arm, ``heatmap_<arm>.png``: layer × strength panels of HEATMAP_PANELS."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    written = []
    for arm, arm_metrics in metrics["arms"].items():
        cells = [c for c in metrics["cells"] if c["arm"] == arm]
        if not cells:
            continue
        layers = sorted({c["layer"] for c in cells})
        strengths = sorted({c["strength"] for c in cells})
        fig, axes = plt.subplots(
            1, len(HEATMAP_PANELS), figsize=(3.2 * len(HEATMAP_PANELS), 0.5 * len(layers) + 2)
        )
        for ax, (title, kind, metric) in zip(np.atleast_1d(axes), HEATMAP_PANELS, strict=True):
            grid = np.full((len(layers), len(strengths)), np.nan)
            ns = np.zeros_like(grid)
            for c in cells:
                m = arm_metrics[metric] if kind is None else (c[metric] if c["kind"] == kind else None)
                if m is not None and m["n"]:
                    i, j = layers.index(c["layer"]), strengths.index(c["strength"])
                    grid[i, j], ns[i, j] = m["rate"], m["n"]
            ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto", origin="lower")
            for (i, j), value in np.ndenumerate(grid):
                if not np.isnan(value):
                    color = "black" if value > 0.6 else "white"
                    ax.text(
                        j,
                        i,
                        f"{100 * value:.0f}%\nn={int(ns[i, j])}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color=color,
                    )
            ax.set_title(title, fontsize=9)
            ax.set_xticks(range(len(strengths)), [f"{s:g}" for s in strengths])
            ax.set_yticks(range(len(layers)), [str(layer) for layer in layers])
            ax.set_xlabel("strength")
            ax.set_ylabel("layer")
        fig.suptitle(f"arm: {arm}", fontsize=10)
        fig.tight_layout()
        path = out_dir / f"heatmap_{arm.replace('+', '_')}.png"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
        plt.close(fig)
        written.append(path.name)
    return written
