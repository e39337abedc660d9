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
