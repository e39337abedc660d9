"""One error path for every subcommand: user errors are one line and exit 2; bugs keep a traceback."""

import pytest

from moia.cli import main


def test_programming_errors_keep_their_traceback(monkeypatch, tmp_path):
    def bug(*args, **kwargs):
        raise KeyError("a bug, not a user error")

    monkeypatch.setattr("moia.lm.loading.load_model", bug)
    with pytest.raises(KeyError, match="a bug"):
        main(["reproduce", "--out", str(tmp_path / "run"), "--arms", "baseline"])


def test_user_errors_are_one_line(capsys, tmp_path):
    assert main(["reproduce", "--out", str(tmp_path / "run"), "--strengths", "-1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("moia reproduce: error: strength -1.0 out of range") and err.count("\n") == 1


# Output paths are checked before any model loads: a loaded model here is a failure.
OUT_CASES = [
    ("reproduce", ["reproduce", "--arms", "baseline", "--out", "{file}"], "is a file, expected a folder"),
    ("reproduce-under-file", ["reproduce", "--out", "{file}/run"], "is a file, expected a folder"),
    ("directions", ["directions", "concepts", "--words", "Dust", "--layers", "3",
                    "--out", "{file}/cv.safetensors"],
     "is a file, expected a folder"),
    ("train-bias", ["train-bias", "--out", "{file}/b.safetensors"], "is a file, expected a folder"),
    ("train-bias-report", ["train-bias", "--out", "{dir}/b.safetensors", "--report", "{dir}"],
     "--report '{dir}' is a folder, expected a file name"),
    ("emotions", ["emotions", "vectors", "--out", "{file}/ev.safetensors"], "is a file, expected a folder"),
    ("moodring", ["moodring", "--prompt", "hi", "--out", "{file}"], "is a file, expected a folder"),
    ("patch", ["patch", "--clean", "a b", "--corrupted", "a c", "--answer", " b", "--wrong", " c",
               "--out", "{file}"], "is a file, expected a folder"),
]  # fmt: skip


@pytest.mark.parametrize("argv, message", [c[1:] for c in OUT_CASES], ids=[c[0] for c in OUT_CASES])
def test_output_paths_are_checked_before_the_model_loads(monkeypatch, capsys, tmp_path, argv, message):
    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before --out was checked")

    monkeypatch.setattr("moia.lm.loading.load_model", no_model)
    a_file = tmp_path / "report.json"
    a_file.write_text("{}")
    fill = {"file": str(a_file), "dir": str(tmp_path)}
    argv = [a.format(**fill) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message.format(**fill) in err, err


def test_a_full_disk_leaves_the_previous_report_intact(tmp_path):
    """A file-size limit (what a full disk does to a write: EFBIG/ENOSPC) while the report is
    rewritten: the previous report.json stays as it was, no temporary file is left behind."""
    import json
    import subprocess
    import sys

    good = {"metrics": [], "settings": {"note": "the previous, good report"}}
    (tmp_path / "report.json").write_text(json.dumps(good))
    script = """
import resource, signal, sys
from moia.experiment.report import write_report
from tests.experiment.test_report import rec
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
resource.setrlimit(resource.RLIMIT_FSIZE, (1500, 1500))
records = [rec(kind=k, claims=i % 2 == 0) for i in range(40) for k in ("concept", "control")]
for r, i in zip(records, range(len(records))):
    r["id"] = f"t{i}"
try:
    write_report(sys.argv[1], records, {"model": "tiny", "note": "x" * 4000})
except OSError as e:
    print("errno", e.errno)
    sys.exit(3)
sys.exit(0)
"""
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert json.loads((tmp_path / "report.json").read_text()) == good
    assert not list(tmp_path.glob(".*.tmp")), list(tmp_path.iterdir())


def test_a_full_disk_is_a_one_line_error(monkeypatch, capsys, tmp_path):
    import errno

    def full(*args, **kwargs):
        raise OSError(errno.EFBIG, "File too large")

    monkeypatch.setattr("moia.lm.loading.load_model", full)
    assert main(["reproduce", "--arms", "baseline", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "File too large" in err


@pytest.mark.parametrize(
    "content, message",
    [(b"garbage", "not a readable safetensors file"), (None, "expected a moia 'bias_checkpoint' file")],
    ids=["corrupt", "foreign"],
)
def test_train_bias_resume_refuses_a_bad_checkpoint_before_the_model_loads(
    monkeypatch, capsys, tmp_path, content, message
):
    import torch
    from safetensors.torch import save_file

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the checkpoint was checked")

    monkeypatch.setattr("moia.lm.loading.load_model", no_model)
    ckpt = tmp_path / "b.ckpt.safetensors"
    if content is None:  # a valid safetensors file that is not a moia checkpoint
        save_file({"x": torch.zeros(2)}, str(ckpt), metadata={"moia_kind": "concept_vectors"})
    else:
        ckpt.write_bytes(content)
    assert main(["train-bias", "--out", str(tmp_path / "b.safetensors"), "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
