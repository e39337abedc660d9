"""``moia patch`` on the default model: the IOI pair's heatmaps and JSON, and its user errors."""

import json

import pytest

from moia.cli import main

pytestmark = pytest.mark.slow


def test_patch_writes_heatmaps_and_json(tmp_path, capsys) -> None:
    out = tmp_path / "ioi"
    assert main(["patch", "--sites", "attn_head_out_all_pos", "--attribution", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "attribution_attn_head_out_all_pos.png",
        "patching.json",
        "patching_attn_head_out_all_pos.png",
    ]
    report = json.loads((out / "patching.json").read_text())
    assert len(report["tokens"]) == 14 and report["tokens"][-1] == " to"
    assert report["metric"]["clean"] > 0 > report["metric"]["corrupted"]  # " Mary" vs " John"
    site = report["sites"]["attn_head_out_all_pos"]
    assert len(site["grid"]) == 30 and len(site["grid"][0]) == 9
    assert -1 <= site["pearson_r"] <= 1
    assert "attribution r =" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--answer", " Marybeth"], "--answer ' Marybeth' is 2 tokens"),
        (["--corrupted", "When John and Mary went to the store, Mary gave drinks"], "unequal prompt lengths"),
    ],
)
def test_patch_user_errors(tmp_path, capsys, args, message) -> None:
    assert main(["patch", *args, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err  # after the model loader's progress output: one line, no traceback
    last = err.strip().splitlines()[-1]
    assert last.startswith("moia patch: error:") and message in last and "Traceback" not in err
