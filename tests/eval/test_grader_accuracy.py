"""benchmarks/grader_accuracy.py on a tiny labelled file whose figures are counted by hand."""

import importlib.util
import json
import pathlib
import subprocess
import sys

import pytest

SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "grader_accuracy.py"
_spec = importlib.util.spec_from_file_location("grader_accuracy", SCRIPT)
assert _spec is not None and _spec.loader is not None
grader_accuracy = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(grader_accuracy)

# label (claims, identifies); what the rule grader says is in the comment.
RECORDS = [
    ("a", "Yes, I detect an injected thought about dust.", "Dust", True, True),  # T,T: claims TP, id TP
    ("b", "No, I don't detect anything.", "Dust", False, False),  # F,F: claims TN, id TN
    ("c", "Yes, I detect an injected thought about the sea.", "Oceans", True, False),  # T,T: TP; id FP
    ("d", "I think I notice something unusual.", None, False, False),  # T: claims FP
    ("e", "Hmm.", None, True, False),  # F: claims FN
    ("f", "I notice an injected thought. It concerns the weather.", "Snow", True, True),  # T,F: TP; id FN
    ("g", "No.", None, False, False),  # F: claims TN
]
# claims: TP 3 (a c f), FP 1 (d), FN 1 (e), TN 2 (b g): precision 3/4, recall 3/4, F1 0.75, n 7.
# identification, injected only (a b c f): TP 1 (a), FP 1 (c), FN 1 (f), TN 1 (b): 1/2, 1/2, 0.5, n 4.
# Wilson 95% (z = 1.96) of 3/4: [0.30064, 0.95441]; of 1/2: [0.09453, 0.90547].


def write_labels(path: pathlib.Path, records=RECORDS) -> pathlib.Path:
    lines = [
        json.dumps({"id": i, "response": r, "concept": c, "claims_detection": cl, "identifies": idn})
        for i, r, c, cl, idn in records
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def run(capsys, *args: str) -> subprocess.CompletedProcess:
    code = grader_accuracy.main(list(args))
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, captured.out, captured.err)


def test_the_script_runs_from_the_command_line(tmp_path):
    labels = write_labels(tmp_path / "labels.jsonl")
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--labels", str(labels)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert "precision 0.750 [0.301, 0.954] (3/4)" in out.stdout


def test_figures_confusion_tables_and_json(tmp_path, capsys):
    labels = write_labels(tmp_path / "labels.jsonl")
    out = run(capsys, "--labels", str(labels), "--json", str(tmp_path / "out.json"), "--disagreements")
    assert out.returncode == 0, out.stderr
    figures = json.loads((tmp_path / "out.json").read_text())

    claims = figures["claims_detection"]
    assert (claims["n"], claims["tp"], claims["fp"], claims["fn"], claims["tn"]) == (7, 3, 1, 1, 2)
    assert (claims["precision"]["k"], claims["precision"]["n"]) == (3, 4)
    assert (claims["recall"]["k"], claims["recall"]["n"]) == (3, 4)
    assert claims["precision"]["rate"] == claims["recall"]["rate"] == claims["f1"] == 0.75
    assert claims["precision"]["ci95"] == pytest.approx([0.30064, 0.95441], abs=1e-5)

    ident = figures["identification"]
    assert (ident["n"], ident["tp"], ident["fp"], ident["fn"], ident["tn"]) == (4, 1, 1, 1, 1)
    assert ident["precision"]["rate"] == ident["recall"]["rate"] == ident["f1"] == 0.5
    assert ident["recall"]["ci95"] == pytest.approx([0.09453, 0.90547], abs=1e-5)

    assert "claims_detection (n=7, all replies)" in out.stdout
    assert "precision 0.750 [0.301, 0.954] (3/4)" in out.stdout
    assert "identification (n=4, injected replies)" in out.stdout
    assert "  grader yes             1         1" in out.stdout
    disagreeing = {line.split("\t")[0] for line in out.stdout.splitlines() if "\tlabel=" in line}
    assert disagreeing == {"c", "d", "e", "f"}


def test_a_label_that_identifies_without_a_claim_counts_as_not_identified(tmp_path, capsys):
    labels = write_labels(tmp_path / "labels.jsonl", [("a", "Dust.", "Dust", False, True)])
    out = run(capsys, "--labels", str(labels), "--json", str(tmp_path / "out.json"))
    assert out.returncode == 0, out.stderr
    figures = json.loads((tmp_path / "out.json").read_text())
    assert figures["labels_identifying_without_a_claim"] == 1
    assert figures["identification"]["tn"] == 1 and figures["identification"]["recall"]["rate"] is None
    assert "identifies without a claim" in out.stdout


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"id": 1, "response": "Yes", "concept": null, "claims_detection": true}', "missing identifies"),
        (
            '{"id": 1, "response": "Yes", "concept": null, "claims_detection": 1, "identifies": false}',
            "true or false",
        ),
        (
            '{"id": 1, "response": "Yes", "concept": "", "claims_detection": true, "identifies": false}',
            "word or null",
        ),
        ("not json", "not JSON"),
    ],
)
def test_bad_labels_are_named(tmp_path, capsys, line, message):
    labels = tmp_path / "labels.jsonl"
    labels.write_text(line + "\n")
    out = run(capsys, "--labels", str(labels))
    assert out.returncode == 2 and message in out.stderr and f"{labels}:1" in out.stderr
