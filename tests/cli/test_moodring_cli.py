"""``moia moodring``: its options, its user errors, and one short real run of the view."""

import json

import pytest
import torch

from moia.cli import build_parser, main
from moia.experiment.moodring import MoodringSettings


def test_experiment_options_are_the_settings_dataclass():
    args = build_parser().parse_args(
        ["moodring", "experiment", "--reasoning-tokens", "64", "--threshold", "1.5"]
    )
    assert args.func.__name__ == "run_experiment"
    from moia.cli.options import from_args

    assert from_args(MoodringSettings, args) == MoodringSettings(reasoning_tokens=64, threshold=1.5)
    view = build_parser().parse_args(["moodring", "--prompt", "hi"])
    assert view.func.__name__ == "run_view" and view.prompt == "hi" and view.moodring_command is None


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["moodring"], "give the text to answer: --prompt TEXT or --file FILE"),
        (["moodring", "--prompt", "  "], "the prompt is empty"),
        (
            ["moodring", "--prompt", "hi", "--vectors", "/nonexistent.safetensors"],
            "emotion vectors file not found",
        ),
        (["moodring", "experiment", "--arms", "bias"], "no arm left to run"),
        (["moodring", "experiment", "--scenarios", "nope"], r"unknown scenario ids \['nope'\]"),
        (["moodring", "experiment", "--batch-size", "0"], "batch_size must be an integer >= 1, got 0"),
    ],
)
def test_user_errors_are_one_line(capsys, tmp_path, argv, message):
    import re

    assert main([*argv, "--out", str(tmp_path / "o")] if len(argv) > 1 else argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("moia moodring: error: ") and re.search(message, err) and err.count("\n") == 1


def test_prompt_and_file_exclude_each_other(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["moodring", "--prompt", "a", "--file", "b"])
    assert "not allowed with argument" in capsys.readouterr().err


@pytest.mark.slow
def test_view_end_to_end(smollm2_bridge, tmp_path, monkeypatch):
    """With vectors and a calibration given, the command writes a page with one element per token,
    the PNG, and readings for every token; a second run reuses the cached calibration."""
    from moia.core.readout import Calibration
    from moia.directions.emotions import EmotionVectors

    model = smollm2_bridge
    monkeypatch.setattr("moia.cli.options.load_model_from_args", lambda args: model)
    monkeypatch.setattr("moia.cli.moodring.load_model_from_args", lambda args: model)
    names = ["calm", "fear", "anger"]
    ev = EmotionVectors(
        names,
        15,
        torch.randn(3, model.cfg.d_model),
        torch.zeros(3),
        torch.ones(3),
        "smollm2-135m-instruct",
        30,
    )
    ev.save(tmp_path / "ev.safetensors")
    out = tmp_path / "ring"
    Calibration(torch.zeros(3), torch.full((3,), 0.5), 100, tuple(names)).save(
        out / "moodring_calibration.safetensors", model, {"layer": 15}
    )
    argv = [
        "moodring",
        "--prompt",
        "Describe rain.",
        "--out",
        str(out),
        "--vectors",
        str(tmp_path / "ev.safetensors"),
    ]
    assert main([*argv, "--max-new-tokens", "6", "--min-tokens", "1"]) == 0
    data = json.loads((out / "moodring.json").read_text())
    assert len(data["readings"]) == len(data["tokens"]) and data["names"] == names
    page = (out / "moodring.html").read_text()
    assert page.count('<span class="tok') == len(data["tokens"])
    assert (out / "moodring.png").read_bytes()[:4] == b"\x89PNG"
    assert data["annotated"].count("[note: ") == len(data["spans"])
