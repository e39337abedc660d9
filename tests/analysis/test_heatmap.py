"""The heatmap writer: a PNG of the right size, written atomically, and errors by message."""

import pytest
import torch

from moia import patching


def test_heatmap_writes_a_png(tmp_path) -> None:
    path = patching.heatmap(torch.randn(4, 6), tmp_path / "sub" / "h.png", labels=list("abcdef"), title="t")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    assert sorted(p.name for p in path.parent.iterdir()) == ["h.png"]  # no temporary file left


def test_heatmap_errors(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"got shape \(2, 3, 4\); select a head or a position"):
        patching.heatmap(torch.zeros(2, 3, 4), tmp_path / "h.png")
    with pytest.raises(ValueError, match=r"2 labels and 4 layers for a result of shape \(4, 3\)"):
        patching.heatmap(torch.zeros(4, 3), tmp_path / "h.png", labels=["a", "b"])
    assert not (tmp_path / "h.png").exists()
