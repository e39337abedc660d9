"""Metrics and report files of a sweep (PROTOCOL §3), from hand-made trial records."""

import json

import pytest

from moia.eval.stats import clopper_pearson_upper, rate, wilson_interval
from moia.experiment.report import (
    compute_metrics,
    fmt,
    fpr_lines,
    markdown_table,
    table_rows,
    text_table,
    write_report,
)


def rec(arm="baseline", kind="concept", layer=12, strength=4.0, forced=False, claims=False, ident=False,
        names=False, concept="Dust"):  # fmt: skip
    r = {
        "id": f"{arm}/{kind}/{layer}/{strength}/{forced}/{claims}/{ident}/{names}",
        "arm": arm,
        "kind": kind,
        "concept": None if kind == "control" and not forced else concept,
        "layer": None if kind == "control" else layer,
        "depth": None if kind == "control" else layer / 30,
        "strength": 0.0 if kind == "control" else strength,
        "forced": forced,
    }
    if forced:
        r["names_concept"] = names
    else:
        r.update(claims_detection=claims, identifies=claims and ident)
    return r


@pytest.fixture
def records():
    out = []
    # concept, L12 s4: 4 free (3 claim, 2 of them identify), 2 forced (1 names)
    out += [rec(claims=True, ident=True)] * 2 + [rec(claims=True), rec()]
    out += [rec(forced=True, names=True), rec(forced=True)]
    # random, L12 s4: 4 free, 1 claims
    out += [rec(kind="random", claims=True)] + [rec(kind="random")] * 3
    # controls: 5 free (1 false positive), 2 forced (0 name)
    out += [rec(kind="control", claims=True)] + [rec(kind="control")] * 4
    out += [rec(kind="control", forced=True)] * 2
    # an ablation arm with one cell at another layer and strength
    out += [rec(arm="ablation", layer=18, strength=8.0, claims=True, ident=True)]
    out += [rec(arm="ablation", kind="control")]
    return out


def test_rate_carries_n_the_wilson_interval_and_the_exact_upper_bound():
    upper = clopper_pearson_upper(3, 8)
    assert rate(3, 8) == {
        "k": 3,
        "n": 8,
        "rate": 0.375,
        "ci95": list(wilson_interval(3, 8)),
        "upper95": upper,
    }
    assert rate(0, 0) == {"k": 0, "n": 0, "rate": None, "ci95": [0.0, 1.0], "upper95": 1.0}


def one(k, n):
    """A rate whose trials all belong to one concept (Dust): no clustered interval."""
    return rate(k, n, clusters=[(k, n)] if n else [])


def test_metrics(records):
    m = compute_metrics(records)
    assert list(m["arms"]) == ["baseline", "ablation"]
    assert m["arms"]["baseline"]["fpr"] == rate(1, 5)
    assert m["arms"]["baseline"]["forced_control_naming"] == rate(0, 2)
    assert m["arms"]["ablation"]["fpr"] == rate(0, 1)
    cells = {(c["arm"], c["kind"], c["layer"], c["strength"]): c for c in m["cells"]}
    assert set(cells) == {
        ("baseline", "concept", 12, 4.0),
        ("baseline", "random", 12, 4.0),
        ("ablation", "concept", 18, 8.0),
    }
    c = cells["baseline", "concept", 12, 4.0]
    assert c["detection"] == one(3, 4)
    assert c["introspection"] == one(2, 4)
    assert c["identification_given_claim"] == one(2, 3)
    assert c["forced_identification"] == one(1, 2)
    assert c["depth"] == pytest.approx(0.4)
    r = cells["baseline", "random", 12, 4.0]
    assert r["detection"] == one(1, 4) and r["forced_identification"] == one(0, 0)
    # order: arms as first seen, then layer, strength, concept before random
    assert [(c["arm"], c["kind"]) for c in m["cells"]] == [
        ("baseline", "concept"),
        ("baseline", "random"),
        ("ablation", "concept"),
    ]


def test_tables(records):
    m = compute_metrics(records)
    rows = table_rows(m)
    assert rows[0][:4] == ["arm", "layer (depth)", "strength", "detection"]
    assert rows[1][:5] == ["baseline", "12 (0.40)", "4", "75.0% (3/4)", "25.0% (1/4)"]
    assert rows[2][:5] == ["ablation", "18 (0.60)", "8", "100.0% (1/1)", "-"]
    assert rows[0][-1] == "forced id"  # no forced random trials: that column is left out
    assert fmt(rate(3, 8), ci=True) == "37.5% (3/8) W[13.7, 69.4]"
    assert fmt(rate(0, 10), upper=True) == "0.0% (0/10) ≤25.9%"
    clustered = rate(5, 20, clusters=[(5, 10), (0, 10)], seed=0)
    assert (
        fmt(clustered, ci=True)
        == f"25.0% (5/20) W[11.2, 46.9] C[{100 * clustered['ci95_clustered'][0]:.1f}, 50.0]"
    )
    assert rows[1][5] == "20.0% (1/5) ≤65.7%" == f"20.0% (1/5) ≤{100 * clopper_pearson_upper(1, 5):.1f}%"
    text = text_table(rows)
    assert len(text.splitlines()) == len(rows) + 1
    md = markdown_table(rows).splitlines()
    assert all(line.count("|") == len(rows[0]) + 1 for line in md)  # no stray "|" inside a cell


def test_write_report(tmp_path, records):
    settings = {"model": "smollm2-135m-instruct", "variant": "moia", "system": "", "temperature": 0.0}
    report = write_report(tmp_path, records, settings)
    data = json.loads((tmp_path / "report.json").read_text())
    import moia

    assert data["moia_version"] == moia.__version__
    assert data["model"] == "smollm2-135m-instruct" and data["n_trials"] == len(records)
    assert data["settings"]["variant"] == "moia"
    assert data["metrics"] == compute_metrics(records)
    md = (tmp_path / "report.md").read_text()
    assert "75.0% (3/4) W[" in md and "smollm2-135m-instruct" in md and "FPR 20.0% (1/5 controls)" in md
    assert "weak: 5 controls cannot show an FPR below 65.7%" in md and "greedy" in md
    assert report["heatmaps"] == ["heatmap_baseline.png", "heatmap_ablation.png"]
    for name in report["heatmaps"]:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_clustered_intervals_resample_concepts():
    """Two concepts, one always detected and one never: the concept-clustered interval spans
    (nearly) everything, the Wilson interval of 10/20 does not."""
    records = [rec(concept="Dust", claims=True)] * 10 + [rec(concept="Oceans")] * 10
    (cell,) = compute_metrics(records)["cells"]
    d = cell["detection"]
    assert (d["k"], d["n"], d["clusters"]) == (10, 20, 2)
    assert d["ci95_clustered"] == [0.0, 1.0] and d["ci95"][0] > 0.25


def test_fpr_lines_say_how_weak_a_bound_is():
    metrics = {
        "arms": {
            "baseline": {"fpr": rate(0, 10)},
            "ablation": {"fpr": rate(0, 1500)},
            "bias": {"fpr": rate(0, 0)},
        }
    }
    small, big, none = fpr_lines(metrics)
    assert small.startswith("baseline: FPR 0.0% (0/10 controls), Wilson 95% [0.0, 27.8]")
    assert "upper bound 25.9% — weak: 10 controls cannot show an FPR below 25.9%" in small
    assert big.endswith("exact one-sided 95% upper bound 0.2%") and "weak" not in big
    assert none == "bias: no free control trials, so no false-positive rate"
