"""``moia emotions`` and ``moia reproduce --stimuli emotions``: wiring and user errors (before any
model is loaded)."""

import pytest

from moia.cli import main


def test_emotions_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["emotions", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert all(cmd in out for cmd in ("vectors", "validate", "scan", "natural"))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["reproduce", "--stimuli", "emotions", "--layers", "0.5"],
            "--layers does not apply to --stimuli emotions",
        ),
        (
            ["reproduce", "--stimuli", "emotions", "--concepts", "ennui"],
            r"unknown emotion(s) ['ennui'] in --concepts",
        ),
        (
            [
                "emotions",
                "vectors",
                "--out",
                "x.safetensors",
                "--story-samples",
                "2",
                "--story-temperature",
                "0",
            ],
            "samples > 1 needs temperature > 0",
        ),
        (
            ["emotions", "scan", "--json", "x.json", "--story-max-new-tokens", "0"],
            "max_new_tokens must be >= 1, got 0",
        ),
    ],
)
def test_user_errors_end_in_one_line(argv, message, capsys, monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr("moia.cli.emotions.load_model_from_args", no_model)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"moia {argv[0]}: error: ") and message in err
