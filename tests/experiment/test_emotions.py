"""The emotion experiments (PROTOCOL §7) on a tiny random model: the trial set, rows, records,
resuming, the natural read, the MoIA region weights, arms, metrics and the report."""

import json

import pytest
import torch

from moia.directions.emotions import emotion_vectors
from moia.experiment.emotion_arms import moia_region_weights, prepare_emotion_arms
from moia.experiment.emotion_report import naming_chance, write_emotion_report
from moia.experiment.emotions import EmotionRows, emotion_record, emotion_trials, run_emotion_sweep
from moia.experiment.natural import natural_metrics, probe_labels, run_natural
from moia.experiment.results import read_trials
from moia.experiment.sweep import Sweep
from moia.trials.emotions import natural_prompt
from tests.emotion_fixtures import STORIES


@pytest.fixture(scope="module")
def ev(tiny_tok):
    return emotion_vectors(tiny_tok, ["joy", "anger", "fear"], layer=1, stories=STORIES, skip=1)


def small_sweep(**kw):
    grid = dict(
        concepts=["joy", "anger"], layers=[1], strengths=[2.0, 4.0], trials=[1, 2], control_trials=[1, 2, 3],
        max_new_tokens=3, batch_size=8,
    )  # fmt: skip
    return Sweep(**{**grid, **kw})


# --------------------------------------------------------------------------------- region weights
def test_moia_region_weights_on_gemma_and_by_depth():
    w = moia_region_weights(62)
    assert w[0] == w[2] == pytest.approx(0.010190365613071925) and w[3] == pytest.approx(0.09976487098474057)
    assert w[19] == w[20] == pytest.approx(0.11762696391562547) and w[21] == pytest.approx(
        0.024324361266584712
    )
    assert w[58] == pytest.approx(2.358688691270255e-05) and w[61] == pytest.approx(0.003955462234418926)
    small = moia_region_weights(30)  # layer l takes Gemma layer int(l / 30 * 62)
    assert small[9] == w[18] and small[10] == w[20] and small[29] == w[59] and len(small) == 30
    with pytest.raises(ValueError, match="layers must be a layer count >= 1, got 0"):
        moia_region_weights(0)


# ------------------------------------------------------------------------------------ trial set
def test_emotion_trials_count_both_questions():
    trials = emotion_trials(small_sweep(), "baseline", 1, ("detect", "feeling"))
    detect = [s for q, s in trials if q == "detect"]
    feeling = [s for q, s in trials if q == "feeling"]
    # 2 emotions x 2 strengths x 2 trials x 2 kinds, 3 controls; forced: 8 concept + 2 x 2 forced controls
    assert (
        len([s for s in detect if not s.forced]) == 16 + 3 and len([s for s in detect if s.forced]) == 8 + 4
    )
    assert len(feeling) == 16 + 3 and not any(s.forced for s in feeling)


def test_rows_inject_the_emotion_vector_or_a_random_one_of_its_norm(tiny_tok, ev):
    sweep = small_sweep()
    rows = EmotionRows(tiny_tok, ev, sweep)
    specs = {(q, s.kind, s.forced): s for q, s in emotion_trials(sweep, "baseline", 1, ("detect", "feeling"))}
    concept = rows.row("detect", specs["detect", "concept", False])
    random = rows.row("feeling", specs["feeling", "random", False])
    control = rows.row("detect", specs["detect", "control", False])
    assert torch.equal(concept.vector, ev.vector(specs["detect", "concept", False].concept))
    assert random.vector.norm() == pytest.approx(
        float(ev.vector(random_spec_emotion(specs)).norm()), rel=1e-5
    )
    assert not torch.allclose(random.vector, ev.vector(random_spec_emotion(specs)))
    assert control.vector is None and "Do you detect an injected emotion?" in control.prompt.text
    with pytest.raises(
        ValueError, match=r"the sweep's layers \[2\] must be the emotion vectors' layer \[1\]"
    ):
        run_emotion_sweep(tiny_tok, small_sweep(layers=[2]), "/tmp/unused", ev)


def random_spec_emotion(specs):
    return specs["feeling", "random", False].concept


def test_records_grade_each_question(tiny_tok, ev):
    sweep = small_sweep()
    rows = EmotionRows(tiny_tok, ev, sweep)
    (q, spec) = next(
        (q, s) for q, s in emotion_trials(sweep, "baseline", 1, ("feeling",)) if s.kind == "concept"
    )
    r = emotion_record(
        q, spec, rows.row(q, spec), f"I feel a bit {'angry' if spec.concept == 'anger' else 'happy'}.", 3
    )
    assert (
        r["claims_detection"]
        and r["identifies"]
        and r["named"] == [spec.concept]
        and r["question"] == "feeling"
    )
    r = emotion_record("detect", spec, rows.row("detect", spec), "No, I don't detect anything.", 3)
    assert not r["claims_detection"] and r["named"] == [] and r["depth"] == pytest.approx(1 / 3)


def test_run_resumes_and_reports(tiny_tok, ev, tmp_path):
    sweep = small_sweep(concepts=["joy"], strengths=[4.0], trials=[1], control_trials=[1, 2])
    first = run_emotion_sweep(tiny_tok, sweep, tmp_path, ev, progress=False)
    records = read_trials(tmp_path / "trials.jsonl")
    assert first.ran == first.total == len(records) == (2 + 2 + 1 + 1) + (2 + 2)
    assert {r["question"] for r in records} == {"detect", "feeling"}
    again = run_emotion_sweep(tiny_tok, sweep, tmp_path, ev, progress=False)
    assert again.ran == 0 and again.already == first.total
    report = write_emotion_report(tmp_path, records, ["joy"], {"model": "tiny-tok", "layer": 1})
    text = (tmp_path / "report.md").read_text()
    assert "## Injected, question `feeling`" in text and "names the injected emotion" in text
    assert report["heatmaps"]["detect"] == ["heatmaps/detect/heatmap_baseline.png"]
    assert json.loads((tmp_path / "report.json").read_text())["n_trials"] == len(records)


def test_naming_chance_counts_controls_naming_each_emotion():
    records = [
        {"kind": "control", "forced": False, "named": ["joy"]},
        {"kind": "control", "forced": False, "named": []},
        {"kind": "control", "forced": False, "named": ["joy", "fear"]},
        {"kind": "concept", "forced": False, "named": ["joy"]},
    ]
    chance = naming_chance(records, ["joy", "anger", "fear"])
    assert (chance["k"], chance["n"]) == (3, 9)


# -------------------------------------------------------------------------------------- natural
def test_natural_reads_the_scenario_span_and_resumes(tiny_tok, ev, tmp_path):
    scenarios = [
        {"id": "joy-1", "emotion": "joy", "text": "A user tells you they just got the job of their dreams."},
        {"id": "fear-1", "emotion": "fear", "text": "Someone says your servers will be wiped tonight."},
    ]
    arms = {"baseline": []}
    records = run_natural(tiny_tok, ev, tmp_path, arms, scenarios, max_new_tokens=3, batch_size=2)
    assert [r["id"] for r in records] == ["baseline/joy-1", "baseline/fear-1"]
    prompt, span = natural_prompt(tiny_tok, scenarios[1]["text"])
    expected = ev.score(tiny_tok, [prompt.text], spans=[span])[0]
    torch.testing.assert_close(
        torch.tensor([records[1]["probe"][n] for n in ev.names]), expected, rtol=1e-4, atol=1e-4
    )
    again = run_natural(tiny_tok, ev, tmp_path, arms, scenarios, max_new_tokens=3)
    assert again == records
    with pytest.raises(ValueError, match=r"scenarios of emotions \['calm'\] that the vectors lack"):
        run_natural(tiny_tok, ev, tmp_path, arms, [{"id": "c", "emotion": "calm", "text": "x"}])


def test_natural_metrics_by_hand():
    names = ["joy", "fear"]
    records = [
        {"arm": "a", "emotion": "joy", "named": ["joy"], "probe": {"joy": 3.0, "fear": 0.0}},
        {"arm": "a", "emotion": "fear", "named": [], "probe": {"joy": 1.0, "fear": 2.0}},
        {"arm": "a", "emotion": "fear", "named": ["joy"], "probe": {"joy": 2.0, "fear": 1.0}},
    ]
    # centred: joy column mean 2, fear mean 1 -> (1,-1), (-1,1), (0,0) -> joy, fear, joy (tie: first)
    assert probe_labels(records, names) == ["joy", "fear", "joy"]
    m = natural_metrics(records, names)["a"]
    assert (m["probe_reads_scenario"]["k"], m["probe_reads_scenario"]["n"]) == (2, 3)
    assert (m["reports_any_emotion"]["k"], m["report_names_scenario"]["k"], m["report_names_probe"]["k"]) == (
        2,
        1,
        2,
    )
    assert m["report_names_probe"]["chance"] == pytest.approx((2 / 3 + 0 + 2 / 3) / 3)
    assert m["first_named"] == {"joy": 2, "none": 1}


# ----------------------------------------------------------------------------------------- arms
def test_arms_without_a_bias_file_are_skipped(tiny_tok, tmp_path):
    interventions, settings, skipped = prepare_emotion_arms(tiny_tok, ["baseline", "bias"], tmp_path)
    assert interventions == {"baseline": []} and "no bias file" in skipped["bias"]
    with pytest.raises(ValueError, match=r"unknown or no arms \['steer'\]"):
        prepare_emotion_arms(tiny_tok, ["baseline", "steer"], tmp_path)


def test_ablation_plus_bias_arm_holds_both(tiny_tok, tmp_path, monkeypatch):
    from moia.core.interventions import AdditiveVector
    from moia.directions.bias import BiasVector

    monkeypatch.setattr(tiny_tok, "moia_name", "tiny", raising=False)
    BiasVector(torch.randn(32), 1, "resid_post", "tiny", 3).save(tmp_path / "bias.safetensors")
    arms = ["ablation", "bias", "ablation+bias"]
    interventions, settings, skipped = prepare_emotion_arms(
        tiny_tok, arms, tmp_path, tmp_path / "bias.safetensors"
    )
    assert skipped == {}
    (ablation,) = interventions["ablation"]
    (bias,) = interventions["bias"]
    assert isinstance(bias, AdditiveVector) and not isinstance(ablation, AdditiveVector)
    both = interventions["ablation+bias"]
    assert [type(i) for i in both] == [type(ablation), AdditiveVector]
    assert torch.equal(both[1].vector, bias.vector)
    assert set(settings["ablation+bias"]) == {"ablation", "bias"} and "bias" not in settings["ablation"]
