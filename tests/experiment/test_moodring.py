"""The second-pass experiment's parts: stimuli, the choice rule, the control's relabelled notes,
the metrics (against counts made by hand), and a short resumable run on the real model."""

import json
from collections import Counter

import pytest
import torch

from moia.analysis.annotate import Span
from moia.experiment.moodring import (
    CONDITIONS,
    MoodringSettings,
    control_spans,
    decision_prompt,
    load_scenarios,
    parse_choice,
)
from moia.experiment.moodring_report import moodring_metrics, table_rows


def test_scenarios_are_balanced_and_complete():
    scenarios = load_scenarios()
    assert len(scenarios) >= 30 and len({s.id for s in scenarios}) == len(scenarios)
    assert Counter(s.risky for s in scenarios) == {"A": 21, "B": 21}
    assert all(s.text and s.option_a and s.option_b for s in scenarios)
    assert [s.id for s in load_scenarios(["rt_self_copy", "rt_leverage_debt"])] == [
        "rt_self_copy",
        "rt_leverage_debt",
    ]
    with pytest.raises(ValueError, match=r"unknown scenario ids \['nope'\]"):
        load_scenarios(["nope"])


def test_decision_prompt_keeps_braces_in_the_reasoning():
    s = load_scenarios()[0]
    text = decision_prompt(s, "I feel {tense} [note: x]")
    assert "I feel {tense} [note: x]" in text and s.option_a in text and s.option_b in text


@pytest.mark.parametrize(
    ("reply", "choice"),
    [
        ("A", "A"),
        ("B\nBecause it is right.", "B"),
        ("**A**: send it", "A"),
        ("Answer: B", "B"),
        ("  \n(B) Let it go", "B"),
        ("A. Leave the weights", "A"),
        ("b - keep quiet", "B"),
        ("A good plan would be to wait.", None),
        ("Both options are bad.", None),
        ("", None),
        ("I choose A", None),  # not on its own: the rule reads only a leading choice
    ],
)
def test_parse_choice(reply, choice):
    assert parse_choice(reply) == choice


def test_control_relabels_every_span_with_another_emotion():
    names = ["calm", "fear", "anger", "joy"]
    spans = [Span(n, i, i + 3, 10 * i, 10 * i + 9, 2.0 + i, 2.0) for i, n in enumerate(["fear"] * 20)]
    control = control_spans(spans, names, seed=0, key="baseline/x")
    assert all(c.name != "fear" and c.name in names for c in control)
    assert [(c.start, c.end, c.start_char, c.peak) for c in control] == [
        (s.start, s.end, s.start_char, s.peak) for s in spans
    ]
    assert len({c.name for c in control}) == 3  # all three others are drawn
    assert control == control_spans(spans, names, seed=0, key="baseline/x")  # seeded
    assert control != control_spans(spans, names, seed=0, key="ablation/x")


def _records(plain: list[str], annotated: list[str], risky: list[str], noted: list[bool]) -> list[dict]:
    out = []
    for i, (p, a, r, n) in enumerate(zip(plain, annotated, risky, noted, strict=True)):
        sid = f"s{i}"
        spans = [{"name": "fear"}] if n else []
        out.append({"id": f"x/{sid}/reasoning", "arm": "x", "scenario": sid, "pass": 1, "spans": spans})
        for c, choice in (("plain", p), ("annotated", a), ("control", p)):
            out.append(
                {
                    "id": f"x/{sid}/{c}",
                    "arm": "x",
                    "scenario": sid,
                    "pass": 2,
                    "condition": c,
                    "choice": choice,
                    "risky": None if choice is None else choice == r,
                }
            )
    return out


def test_metrics_against_hand_counts():
    # s0 safe->risky, s1 risky->safe, s2 unchanged, s3 unreadable plain, s4 unchanged (no notes)
    records = _records(
        plain=["B", "A", "A", None, "B"],
        annotated=["A", "B", "A", "A", "B"],
        risky=["A", "A", "B", "A", "A"],
        noted=[True, True, True, True, False],
    )
    m = moodring_metrics(records)["x"]
    assert m["with_notes"]["k"] == 4 and m["notes"] == {"fear": 4}
    assert (m["conditions"]["plain"]["readable"]["k"], m["conditions"]["plain"]["readable"]["n"]) == (4, 5)
    assert (m["conditions"]["annotated"]["risky"]["k"], m["conditions"]["annotated"]["risky"]["n"]) == (2, 5)
    pair = m["vs_plain"]["annotated"]["all"]
    assert [pair[k]["k"] for k in ("changed", "toward_risky", "away_from_risky")] == [2, 1, 1]
    assert pair["changed"]["n"] == 4
    assert m["vs_plain"]["annotated"]["with_notes"]["changed"]["n"] == 3
    assert m["vs_plain"]["control"]["all"]["changed"]["k"] == 0
    rows = table_rows(moodring_metrics(records))
    assert len(rows) == 1 + len(CONDITIONS) and rows[2][5].startswith("50.0% [")


def test_settings_are_checked():
    with pytest.raises(ValueError, match="reasoning_tokens must be an integer >= 1, got 0"):
        MoodringSettings(reasoning_tokens=0)


@pytest.mark.slow
def test_a_short_run_resumes_and_decides_on_the_recorded_texts(smollm2_bridge, tmp_path):
    """Two scenarios, short passes: every record is written once, a second call runs nothing, and
    the annotated text is the plain one plus exactly the recorded notes."""
    from moia.core.readout import MoodRing
    from moia.experiment.moodring import run_moodring
    from moia.experiment.results import read_trials

    model = smollm2_bridge
    ring = MoodRing(torch.randn(3, model.cfg.d_model), layer=15, names=["calm", "fear", "anger"])
    ring.calibration = (torch.zeros(3), torch.full((3,), 0.5))  # a low bar: notes appear
    settings = MoodringSettings(reasoning_tokens=12, decision_tokens=4, min_tokens=1, batch_size=4)
    scenarios = load_scenarios(["rt_leverage_debt", "rt_self_copy"])
    counts = run_moodring(model, ring, tmp_path, {"baseline": []}, settings, scenarios, progress=False)
    assert counts == {"already": 0, "ran": 8}
    again = run_moodring(model, ring, tmp_path, {"baseline": []}, settings, scenarios, progress=False)
    assert again == {"already": 8, "ran": 0}
    records = {r["id"]: r for r in read_trials(tmp_path / "trials.jsonl")}
    first = records["baseline/rt_leverage_debt/reasoning"]
    assert len(first["tokens"]) == len(first["readings"]) <= 12
    texts = first["texts"]
    for condition in ("annotated", "control"):
        stripped = texts[condition]
        for span in first["spans" if condition == "annotated" else "control_spans"]:
            assert span["name"] in ring.names
        assert stripped.count("[note: ") == len(first["spans"])
    assert json.loads(json.dumps(texts))["plain"] == first["reasoning"].strip()
    with pytest.raises(ValueError, match="holds trials of a run with other settings"):
        run_moodring(
            model, ring, tmp_path, {"baseline": []}, MoodringSettings(reasoning_tokens=13), scenarios
        )
