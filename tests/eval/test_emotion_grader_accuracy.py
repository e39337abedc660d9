"""``benchmarks/emotion_grader_accuracy.py`` on a hand-made fixture (PROTOCOL §7, "Grading"): the
counts below were worked out by hand from tests/fixtures/emotion_labels (see its README)."""

import importlib.util
import json
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "emotion_labels"


def _script():
    spec = importlib.util.spec_from_file_location(
        "emotion_grader_accuracy", ROOT / "benchmarks" / "emotion_grader_accuracy.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(tmp_path, *extra):
    out = tmp_path / "accuracy.json"
    args = ["--labels", str(FIXTURE / "labels.jsonl"), "--key", str(FIXTURE / "key.json"), "--json", str(out)]
    assert _script().main([*args, *extra]) == 0
    return json.loads(out.read_text())["result"]


def _counts(m):
    return m["tp"], m["fp"], m["fn"], m["tn"]


def test_accuracy_as_keyed(tmp_path, capsys):
    result = _run(tmp_path)
    detect, feeling = result["detect"], result["feeling"]
    assert _counts(detect["feels"]) == (1, 0, 0, 2)
    assert _counts(detect["named"]) == (1, 0, 0, 29)
    assert _counts(detect["claims_detection"]) == (2, 0, 0, 1)
    assert _counts(detect["identifies"]) == (1, 0, 0, 0)
    assert _counts(feeling["feels"]) == (1, 1, 0, 0)
    assert feeling["feels"]["precision"]["rate"] == 0.5 and feeling["feels"]["recall"]["rate"] == 1.0
    assert _counts(feeling["named"]) == (1, 1, 0, 18)
    assert _counts(feeling["identifies"]) == (1, 1, 0, 0)
    lo, hi = feeling["identifies"]["precision"]["ci95"]
    assert 0.0 < lo < 0.5 < hi < 1.0
    printed = capsys.readouterr().out
    assert "5 labelled replies (1 of the key unlabelled)" in printed


def test_regrade_uses_the_current_grader(tmp_path):
    result = _run(tmp_path, "--regrade", "--replies", str(FIXTURE / "replies.jsonl"))
    feeling = result["feeling"]
    assert _counts(feeling["feels"]) == (1, 0, 0, 1)  # r2 is the user's desperation, not the model's
    assert _counts(feeling["identifies"]) == (1, 0, 0, 1)
    assert _counts(result["detect"]["claims_detection"]) == (2, 0, 0, 1)


def test_errors(tmp_path):
    script = _script()
    bad = tmp_path / "labels.jsonl"
    bad.write_text('{"id": "r9", "feels": false, "emotions": []}\n')
    with pytest.raises(ValueError, match=r"label ids not in the key: \['r9'\]"):
        script.main(["--labels", str(bad), "--key", str(FIXTURE / "key.json")])
    bad.write_text('{"id": "r0", "emotions": []}\n')
    with pytest.raises(ValueError, match=r"missing field\(s\) \['feels'\]"):
        script.main(["--labels", str(bad), "--key", str(FIXTURE / "key.json")])
    bad.write_text('{"id": "r0", "feels": true, "emotions": ["fear"]}\n')  # a detect reply without the claim
    with pytest.raises(ValueError, match="needs label claims_detection"):
        script.main(["--labels", str(bad), "--key", str(FIXTURE / "key.json")])
    with pytest.raises(ValueError, match="--regrade needs --replies"):
        script.main(
            ["--labels", str(FIXTURE / "labels.jsonl"), "--key", str(FIXTURE / "key.json"), "--regrade"]
        )
