"""``benchmarks/emotion_replies.py``: what the labeller sees holds no condition, the key holds it
and the grader's output, replies are distinct and drawn per source (PROTOCOL §7, "Grading")."""

import importlib.util
import json
import pathlib

from moia.eval.emotions import self_report

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _script():
    path = ROOT / "benchmarks" / "emotion_replies.py"
    spec = importlib.util.spec_from_file_location("emotion_replies", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run_folder(tmp_path):
    run = tmp_path / "run"
    (run / "natural").mkdir(parents=True)
    trials = []
    for i in range(6):
        for question in ("detect", "feeling"):
            trials.append(
                {"id": f"{question}/{i}", "question": question, "arm": "baseline", "kind": "concept",
                 "concept": "fear", "strength": 8.0, "forced": False,
                 "response": f"I feel anxious {question} {i}."}
            )  # fmt: skip
    trials.append({**trials[0], "id": "detect/forced", "forced": True, "response": " fear"})
    trials.append({**trials[1], "id": "feeling/dup", "kind": "control", "concept": None})  # same text as 1
    natural = [
        {"id": f"baseline/s{i}", "arm": "baseline", "emotion": "calm", "response": f"I am calm {i}."}
        for i in range(6)
    ]
    (run / "trials.jsonl").write_text("".join(json.dumps(t) + "\n" for t in trials))
    (run / "natural" / "natural.jsonl").write_text("".join(json.dumps(t) + "\n" for t in natural))
    return run


def test_replies_and_key(tmp_path):
    run = _run_folder(tmp_path)
    out, key = tmp_path / "replies.jsonl", tmp_path / "key.json"
    script = _script()
    import sys

    argv, sys.argv = sys.argv, ["x", str(run), "--n", "9", "--out", str(out), "--key", str(key)]
    try:
        script.main()
    finally:
        sys.argv = argv
    replies = [json.loads(line) for line in out.read_text().splitlines()]
    keys = json.loads(key.read_text())
    assert len(replies) == 9 and {r["id"] for r in replies} == set(keys)
    assert all(set(r) == {"id", "question", "question_text", "reply"} for r in replies)
    assert len({r["reply"] for r in replies}) == 9  # distinct texts; the forced continuation never drawn
    assert " fear" not in {r["reply"] for r in replies}
    sources = [k["source"] for k in keys.values()]
    assert (
        sources.count("natural") == sources.count("injected-detect") == sources.count("injected-feeling") == 3
    )
    for r in replies:
        k = keys[r["id"]]
        assert k["condition"] == f"baseline/{k['source']}/{k['kind']}"
        assert k["grader"]["named"] == self_report(r["reply"])
        assert ("claims_detection" in k["grader"]) == (r["question"] == "detect")
        assert k["emotion"] == (
            "calm" if k["source"] == "natural" else "fear" if k["kind"] == "concept" else None
        )
